"""The whole search job: search (or read) a per-layer distribution, then prune the model to it."""

from __future__ import annotations

import copy
import resource
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..atomic import save_tensors_atomic
from ..data import Calibration
from ..errors import PutriError
from ..model import PutriForCausalLM, Widths, achieved, param_counts
from ..model.blocks import BlockStore
from ..prune.stages import reconstruct_model
from ..prune.stream import BlockRunner, require_whole_model
from .evolve import SearchResult, search
from .plots import plot_fitness, plot_widths
from .settings import SearchSettings
from .space import SubLayer, sublayers
from .supernet import prune_to_widths


def _assemble(result: SearchResult, subs: list[SubLayer], runner: BlockRunner, folder: Path) -> Path | None:
    """Write the searched configuration's sub-layer weights, taken from the supernet's variants, to ``folder``
    (one safetensors file per block; None if the budget repair moved a width off the supernet's levels, or the
    supernet is gone). On disk, not in memory: a streamed model never holds more than a block."""
    searched = tuple(result.report["iterations"][-1]["best"])
    if result.bank is None or not result.bank.dir.is_dir() or result.config != searched:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for l in range(len(subs) // 2):
            state = {}
            with runner.opened(l):  # variants are rebuilt from the dense block
                for kind, name in (("attn", "self_attn"), ("ffn", "mlp")):
                    module = result.bank.module(kind, l, result.config[2 * l + (kind == "ffn")])
                    if module is not None:
                        state |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
            save_tensors_atomic(folder / f"block{l:05d}.safetensors", state)
    except FileNotFoundError:  # a resumed run whose last supernet was cleaned away: re-pruning only
        return None
    return folder


def _load_assembled(runner: BlockRunner, folder: Path) -> None:
    """Replace every re-pruned block's sub-layers by the assembled ones (same widths)."""
    for l in range(len(runner.layers)):
        state = load_file(str(folder / f"block{l:05d}.safetensors"))
        with runner.opened(l) as layer:
            for name in ("self_attn", "mlp"):
                part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                if part:
                    getattr(layer, name).load_state_dict(part)


def search_and_prune(model: PutriForCausalLM, calib: Calibration, settings: SearchSettings, work_dir: Path,
                     resume: bool = False, widths_file: Path | None = None, progress: bool = True,
                     blocks: BlockStore | None = None,
                     reconstruct_calib: Calibration | None = None) -> tuple[dict, dict[str, bytes]]:
    """Prune ``model`` in place to searched (or given) per-layer widths; return the report and its plots.

    ``reconstruct_calib``: the text block reconstruction trains on (as :func:`~..prune.prune_model`'s); None: ``calib``.

    ``blocks``: a streamed model's block store (its pruned blocks end in the store's work folder, for
    ``save_streamed_checkpoint``); None: the model is held whole on its device."""
    if blocks is not None and blocks.work is None:
        raise PutriError("a streamed model needs a work folder for its pruned blocks")
    if settings.reconstruct_epochs:
        require_whole_model(blocks, "--reconstruct-epochs", "no reconstruction")
    settings.require_loaded_text(reconstruct_calib)
    # block reconstruction fits the pruned blocks to the dense ones: a frozen copy, taken before any change
    dense_copy = copy.deepcopy(model) if settings.reconstruct_epochs else None
    start = time.perf_counter()
    dense = param_counts(model)
    subs = sublayers(model)
    dense_widths = Widths.from_config(model.config)
    report: dict = {"calibration": calib.provenance()}
    plots: dict[str, bytes] = {}
    if widths_file is not None:
        target = Widths.read(widths_file, dense_widths)
        report["distribution"] = {"source": str(widths_file)}
        result = None
    else:
        result = search(model, calib, settings, work_dir, resume, progress, blocks)
        target = result.widths
        report.update(result.report)
        report["uniform_widths"] = result.uniform_widths.to_json()
        source = result.report["start"]["source"]
        origin = {"uniform": "uniform (Putri split)", "greedy": "greedy (Putri preset)"}.get(source,
                                                                                           Path(source).name)
        plots["search_widths.png"] = plot_widths(dense_widths, result.start_widths, result.widths,
                                                 (f"start: {origin}", "searched"))
        plots["search_fitness.png"] = plot_fitness(result.report["iterations"])
    # The searched configuration exists twice: assembled from supernet variants (fitted on expected
    # inputs) and re-pruned at its widths on the real pruned prefix. Keep whichever is closer to dense.
    reader = BlockRunner(model, settings.batch_size, blocks, save_blocks=False)
    with torch.no_grad():
        assembled = _assemble(result, subs, reader, work_dir / "assembled") if result is not None else None
        log = prune_to_widths(model, calib.ids, target, settings.damping, settings.batch_size, progress, blocks)
    if result is not None:
        last = max(settings.stage_samples)
        kl_repruned = result.fitness.model_kl(model, last)
        kl_assembled = result.report["iterations"][-1]["best_fitness"] if assembled is not None else None
        use_assembled = kl_assembled is not None and kl_assembled < kl_repruned
        if use_assembled:
            with torch.no_grad():
                _load_assembled(BlockRunner(model, settings.batch_size, blocks), assembled)
        report["final_kl"] = {"assembled_from_supernet": kl_assembled, "repruned_at_widths": kl_repruned,
                              "chosen": "assembled" if use_assembled else "repruned",
                              "kl": result.fitness.model_kl(model, last), "tokens": last * calib.ids.shape[1]}
    if dense_copy is not None:
        text = reconstruct_calib or calib
        if reconstruct_calib is not None:
            report["reconstruction_calibration"] = reconstruct_calib.provenance()
        with torch.no_grad():
            report["reconstruction"] = reconstruct_model(model, dense_copy, text.ids, settings.batch_size, settings,
                                                         progress)
        del dense_copy
        if result is not None:
            report["final_kl"]["after_reconstruction"] = result.fitness.model_kl(model, last)
    if result is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    report.update({
        "method": "putri+search" if widths_file is None else "putri (given widths)",
        "sparsity_target": settings.sparsity if widths_file is None else None,
        **achieved(model, dense.blocks, dense.total),
        "widths": Widths.from_config(model.config).to_json(),
        "prune_log": log,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    return report, plots
