"""What every pruning method is given: the context it prunes in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Calibration
from ..model import PutriForCausalLM
from ..resume import ResumeStore
from .settings import PruneSettings
from .stream import BlockRunner


@dataclass
class PruneContext:
    """A pruning run in progress: the model (modified in place), its calibration, the settings, the block
    runner, the resume store, and ``dense_cache`` (statistics of the dense model a caller reuses across
    sparsities: 2SSP activation norms, ShortGPT block influence, FLAP fluctuations)."""

    model: PutriForCausalLM
    calib: Calibration
    settings: PruneSettings
    runner: BlockRunner
    store: ResumeStore
    progress: bool = True
    dense_cache: dict | None = None
    attn_scoring: str = "loss"  # the scoring settings.attn_scoring resolved to on this run (Putri)
    reconstruct_calib: Calibration | None = None  # block reconstruction's own text; None: ``calib``

    def attention_slice(self) -> torch.Tensor:
        """The calibration slice that scores attention removals: ``attn_samples`` windows spread over the set,
        their first ``attn_len`` tokens."""
        rows = sorted(self.calib.spread(self.settings.attn_samples))  # in corpus order, as the paper preset had them
        return self.calib.ids[rows, : self.settings.preset("attn_len")]
