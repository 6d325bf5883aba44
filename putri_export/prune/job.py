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

from ..compute import peak_device_memory_mb, reset_peak_device_memory, synchronize
from ..data import Calibration
from ..errors import PutriError
from ..model import PutriForCausalLM, Widths, achieved, param_counts
from ..model.blocks import BlockStore
from ..resume import ResumeStore, fingerprint, model_fingerprint
from .context import PruneContext
from .methods import METHODS
from .settings import PUTRI_METHODS, PruneSettings
from .stream import BlockRunner, require_whole_model


def prune_model(model: PutriForCausalLM, calib: Calibration, settings: PruneSettings,
                state_dir: Path | None = None, resume: bool = False, progress: bool = True,
                dense_cache: dict | None = None, blocks: BlockStore | None = None,
                reconstruct_calib: Calibration | None = None) -> dict:
    """Prune ``model`` in place and return the report.

    ``blocks``: the block store of a streamed model (``model.blocks.open_model``); its blocks are read, pruned and
    written back one at a time (Putri with local attention scoring), and the result is saved with
    ``save_streamed_checkpoint``. None: the model is held whole on its device.

    ``state_dir``: where progress is kept (resumable with ``resume=True``; removed when the job finishes).
    ``reconstruct_calib``: the text block reconstruction trains on (``settings.reconstruct_calib`` and
    ``reconstruct_samples`` loaded by ``settings.load_reconstruction_text``); None: ``calib``.
    ``dense_cache``: a dict the caller passes again when pruning *the same dense model with the same
    calibration* at other settings; statistics that depend only on the dense model (2SSP activation
    norms, ShortGPT block influence, FLAP fluctuations) are measured once and reused.
    """
    settings.check()
    start = time.perf_counter()
    device = model.model.embed_tokens.weight.device
    dense = param_counts(model)
    scoring = settings.scoring(device.type, dense.blocks, streamed=blocks is not None)
    if blocks is not None and (settings.method not in PUTRI_METHODS or scoring != "local"):
        raise PutriError(f"a streamed model is pruned one block at a time, which --method putri with --attn-scoring "
                         f"local does; {settings.method} with {scoring} scoring revisits blocks: use --streaming off "
                         "(the whole model in memory)")
    if settings.preset("fit_target") == "dense":
        require_whole_model(blocks, "--fit-target dense (putri-dense-fit's default)", "--method putri")
    if settings.reconstruct_epochs:
        require_whole_model(blocks, "--reconstruct-epochs", "no reconstruction")
    if blocks is not None and blocks.work is None:
        raise PutriError("a streamed model needs a work folder for its pruned blocks")
    weights = model_fingerprint(model) if blocks is None else blocks.fingerprint()
    settings.require_loaded_text(reconstruct_calib)
    recon = reconstruct_calib.provenance() if reconstruct_calib is not None else None
    key = fingerprint(asdict(settings), calib.provenance(), recon, weights, model.model.embed_tokens.weight.dtype)
    store = ResumeStore(state_dir, key, resume, what="pruning run")
    resumed = store.resumed
    if blocks is not None and not resumed:
        blocks.reset()
    model.eval()
    reset_peak_device_memory(device)
    ctx = PruneContext(model, calib, settings, BlockRunner(model, settings.batch_size, blocks), store, progress,
                       dense_cache, scoring, reconstruct_calib)
    with torch.no_grad():
        details = METHODS[settings.method](ctx)
    synchronize(device)
    store.clear()
    return {
        "method": settings.method,
        "settings": asdict(settings),
        "sparsity_target": settings.sparsity,
        **achieved(model, dense.blocks, dense.total),
        "widths": Widths.from_config(model.config).to_json(),
        "calibration": calib.provenance(),
        **({"reconstruction_calibration": recon} if recon is not None else {}),
        "resumed": resumed,
        "prune_seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "dtype": str(model.model.embed_tokens.weight.dtype).removeprefix("torch."),
        "streamed": blocks is not None,
        "peak_device_memory_mb": peak_device_memory_mb(device),
        "details": details,
    }
