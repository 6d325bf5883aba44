"""The pruning job: check the settings, keep progress for ``--resume``, run the method, report.

Only one block's statistics and one N x T x d tensor of calibration hidden states are alive at a time; the
model is modified in place (no second copy).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..data import Calibration
from ..model import PutriForCausalLM, Widths, achieved, param_counts
from ..resume import ResumeStore, fingerprint, model_fingerprint
from .context import PruneContext
from .methods import METHODS
from .settings import PruneSettings
from .stream import BlockRunner


def prune_model(model: PutriForCausalLM, calib: Calibration, settings: PruneSettings,
                state_dir: Path | None = None, resume: bool = False, progress: bool = True,
                dense_cache: dict | None = None) -> dict:
    """Prune ``model`` in place and return the report.

    ``state_dir``: where progress is kept (resumable with ``resume=True``; removed when the job finishes).
    ``dense_cache``: a dict the caller passes again when pruning *the same dense model with the same
    calibration* at other settings; statistics that depend only on the dense model (2SSP activation
    norms, ShortGPT block influence, FLAP fluctuations) are measured once and reused.
    """
    settings.check()
    start = time.perf_counter()
    dense = param_counts(model)
    key = fingerprint(asdict(settings), calib.provenance(), model_fingerprint(model))
    store = ResumeStore(state_dir, key, resume, what="pruning run")
    resumed = store.resumed
    model.eval()
    ctx = PruneContext(model, calib, settings, BlockRunner(model, settings.batch_size), store, progress, dense_cache)
    with torch.no_grad():
        details = METHODS[settings.method](ctx)
    store.clear()
    return {
        "method": settings.method,
        "settings": asdict(settings),
        "sparsity_target": settings.sparsity,
        **achieved(model, dense.blocks, dense.total),
        "widths": Widths.from_config(model.config).to_json(),
        "calibration": calib.provenance(),
        "resumed": resumed,
        "prune_seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "details": details,
    }
