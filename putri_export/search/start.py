"""Where a search starts (``--start``): the uniform split, Putri's greedy allocation, or given widths."""

from __future__ import annotations

import copy
from pathlib import Path

from ..data import Calibration
from ..errors import PutriError
from ..model import PutriForCausalLM, Widths
from ..model.blocks import BlockStore
from ..model.checkpoint import PRUNING_REPORTS
from ..prune.stream import require_whole_model
from ..resume import ResumeStore, fingerprint, model_fingerprint
from .settings import START_NAMES, SearchSettings


def resolve_start(settings: SearchSettings, blocks: BlockStore | None) -> str:
    """``auto`` as what it means for this model: greedy when held in memory, uniform when streamed (the greedy
    pass prunes a copy of the whole model)."""
    if settings.start == "auto":
        return "uniform" if blocks is not None else "greedy"
    if settings.start == "greedy":
        require_whole_model(blocks, "--start greedy", "--start uniform, or prune first (`putri-export prune`) and "
                            "pass its folder to --start")
    return settings.start


def widths_from(start: str, dense: Widths) -> Widths:
    """The widths ``--start PATH`` names: a pruned checkpoint's folder (its widths.json, pruning_report.json or
    search_report.json) or one of those files."""
    path = Path(start)
    if path.is_dir():
        files = [path / n for n in ("widths.json", *PRUNING_REPORTS) if (path / n).is_file()]
        if not files:
            raise PutriError(f"--start {start}: the folder has no widths.json, pruning_report.json or "
                             f"search_report.json (accepted: {', '.join(START_NAMES)}, a pruned checkpoint folder or "
                             "one of those files)")
        path = files[0]
    return Widths.read(path, dense)


def greedy_widths(model: PutriForCausalLM, calib: Calibration, settings: SearchSettings, folder: Path,
                  resume: bool = False, progress: bool = True) -> Widths:
    """The widths the paper preset (``prune --method putri``) chooses at this sparsity, alignment and calibration:
    its greedy head allocation, found by pruning a copy of the model (``model`` is not modified). Kept in
    ``folder``: an interrupted prune resumes there, a finished one is not run again."""
    from ..prune import PruneSettings, prune_model

    prune_settings = PruneSettings(method="putri", sparsity=settings.sparsity, damping=settings.damping,
                                   batch_size=settings.batch_size, align=settings.align)
    key = fingerprint(prune_settings.__dict__, calib.provenance(), model_fingerprint(model))
    store = ResumeStore(folder, key, resume, what="greedy start")
    found = store.get("widths")
    if found is None:
        store.save()  # the key on disk first, so that a resumed run keeps the interrupted prune's state below
        copied = copy.deepcopy(model)
        found = prune_model(copied, calib, prune_settings, state_dir=Path(folder) / "prune", resume=resume,
                            progress=progress)["widths"]
        del copied
        store.save(widths=found)
    return Widths.from_config(model.config).with_kv_and_ffn([w["kv_heads"] for w in found],
                                                            [w["ffn"] for w in found])
