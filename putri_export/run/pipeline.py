"""``putri-export run``: model → pruned checkpoint → GGUF/ONNX artifacts → verified → evaluated →
benchmarked → ``report.md``.

Each step writes into a staging folder beside ``--out`` and records its result in the folder's resume store
(``run_state.json``); ``--resume`` skips the steps already finished with the same recipe, and the folder is
renamed to ``--out`` only when every step is done (an interrupted run never leaves a partial ``--out``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..errors import PutriError
from ..resume import ResumeStore, fingerprint
from .recipe import Recipe

RUNTIME = {"gguf": "llama.cpp", "onnx": "onnxruntime", "torch": "torch"}  # the runtime of each format


# ---------------------------------------------------------------------------------------------


def staging_folder(out: Path) -> Path:
    """Where a run works until every step is done (kept for --resume when it stops early)."""
    return out.with_name(f".{out.name}.running")


def _step(store: ResumeStore, name: str, make: Callable[..., dict], *args) -> dict:
    """The recorded result of step ``name``, or ``make(*args)``'s, recorded. A failing step says where the
    finished ones are kept."""
    done = store.get(name)
    if done is not None:
        return done
    try:
        result = make(*args)
    except PutriError as e:
        raise type(e)(f"step {name} failed: {e} (finished steps are kept in {store.folder}: rerun the same "
                      "command with --resume to continue)") from None
    store.save(**{name: result})
    return result


def _say(text: str) -> None:
    print(f"[run] {text}", file=sys.stderr, flush=True)


def run_pipeline(recipe: Recipe, out: Path, overwrite: bool = False, resume: bool = False) -> dict:
    import torch

    from ..atomic import commit
    from ..model.assets import resolve_model
    from .report import write_report

    recipe.check()
    out = Path(out)
    if out.exists() and not overwrite:
        raise PutriError(f"{out} exists; pass --overwrite to replace it")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    resolved = resolve_model(recipe.model)
    if resolved.gguf_file is not None:
        raise PutriError("run needs an HF model folder (or smollm2-135m), not a .gguf file")
    dense_dir = resolved.path
    staging = staging_folder(out)
    store = ResumeStore(staging, fingerprint(asdict(recipe)), resume, what="run", state_file="run_state.json")
    start = time.perf_counter()

    # model/ is always what the artifacts are made from: with --recover the recovered model (the pruned one beside it)
    pruned_dir = staging / "model"
    prune_info = _step(store, "prune", _prune, recipe, dense_dir, staging / "model-pruned" if recipe.recover
                       else pruned_dir)
    if recipe.recover:
        prune_info["recovery"] = _step(store, "recover", _recover, recipe, dense_dir, staging / "model-pruned",
                                       pruned_dir)
    artifacts = []
    for fmt in recipe.formats:
        for variant in recipe.variants(fmt):
            for which, src in (("dense", dense_dir), ("pruned", pruned_dir)):
                name = f"{which}-{variant}.gguf" if fmt == "gguf" else f"{which}-onnx-{variant}"
                info = _step(store, f"export:{name}", _export, fmt, variant, src, staging / "artifacts" / name, recipe)
                artifacts.append({"format": fmt, "variant": variant, "which": which,
                                  "path": f"artifacts/{name}", **info})
    quality = _step(store, "quality", _quality, recipe, dense_dir, pruned_dir, staging, artifacts)
    bench = {}
    if recipe.bench:
        for fmt in ["torch", *recipe.formats]:
            for variant in recipe.variants(fmt):
                if fmt == "torch":
                    pair = [dense_dir, pruned_dir]
                else:
                    pair = [staging / a["path"] for w in ("dense", "pruned") for a in artifacts
                            if a["format"] == fmt and a["variant"] == variant and a["which"] == w]
                bench[f"{fmt}-{variant}"] = _step(store, f"bench:{fmt}-{variant}", _bench, recipe, fmt, pair,
                                                  staging / "bench" / f"{fmt}-{variant}")
    report = {"recipe": asdict(recipe), "dense_model": str(dense_dir), "prune": prune_info, "artifacts": artifacts,
              "quality": quality, "bench": bench, "seconds": time.perf_counter() - start}
    write_report(report, staging)
    store.forget()
    commit(staging, out)
    _say(f"done: {out}/report.md")
    return report


# ---------------------------------------------------------------------------------------------
# The steps


def _prune(recipe: Recipe, dense_dir: Path, out: Path) -> dict:
    import torch

    from ..compute import ComputeSettings
    from ..data import load_calibration
    from ..model import Widths
    from ..model.blocks import open_model, save_model

    _say(f"pruning {recipe.model} to block sparsity {recipe.sparsity}" + (" with search" if recipe.search else ""))
    # Pruning and the search stream when the model is large.
    compute = ComputeSettings(device=recipe.device, dtype=recipe.dtype, streaming="auto")
    model, tokenizer, _, blocks = open_model(dense_dir, compute, work=out.parent / "prune-blocks")
    dense_widths = Widths.from_config(model.config)
    calib = load_calibration(tokenizer, recipe.calib, recipe.calib_samples, recipe.calib_len)
    run_reconstruction = recipe.run_reconstruction(streamed=blocks is not None)
    reconstruct_calib = run_reconstruction.load_reconstruction_text(tokenizer, recipe.calib, recipe.calib_samples,
                                                                    recipe.calib_len)
    reconstruction = asdict(run_reconstruction)  # handed to prune's or search's settings as they are
    if out.exists():
        shutil.rmtree(out)
    if recipe.search:
        from ..search import SearchSettings, search_and_prune

        settings = SearchSettings(**{"sparsity": recipe.sparsity, "align": recipe.align, **reconstruction,
                                     **recipe.search_options})
        report, plots = search_and_prune(model, calib, settings, out.parent / "search-work", resume=True,
                                         blocks=blocks, reconstruct_calib=reconstruct_calib)
        files = {"search_report.json": json.dumps(report, indent=2) + "\n", **plots}
    else:
        from ..prune import PruneSettings, prune_model

        settings = PruneSettings(method=recipe.method, sparsity=recipe.sparsity, align=recipe.align, **reconstruction)
        report = prune_model(model, calib, settings, state_dir=out.parent / "prune-state", resume=True, blocks=blocks,
                             reconstruct_calib=reconstruct_calib)
        files = {"pruning_report.json": json.dumps(report, indent=2) + "\n"}
    report["threads"] = torch.get_num_threads()
    save_model(model, tokenizer, dense_dir, blocks, out, extra_files=files)
    keys = ("method", "params_blocks", "params_total", "dense_params_blocks", "dense_params_total",
            "sparsity_blocks", "sparsity_total", "widths", "peak_rss_mb", "threads")
    return {k: report.get(k) for k in keys} | {"seconds": report.get("prune_seconds", report.get("seconds")),
                                               "dense_widths": dense_widths.to_json(),
                                               "reconstruct_epochs": run_reconstruction.reconstruct_epochs,
                                               "reconstruct_calib": run_reconstruction.reconstruct_calib}


def _recover(recipe: Recipe, dense_dir: Path, pruned_dir: Path, out: Path) -> dict:
    from ..compute import resolve_device
    from ..recover import recover_checkpoint

    settings = recipe.recover_settings()
    _say(f"recovering the pruned model by distillation from {recipe.model} (at most {settings.max_minutes:g} min, "
         f"{settings.tokens:,} tokens)")
    if out.exists():
        shutil.rmtree(out)
    report = recover_checkpoint(pruned_dir, dense_dir, out, settings, resolve_device(recipe.device),
                                state_dir=out.parent / "recover-state", resume=True)
    keys = ("steps", "tokens", "stopped_by", "seconds", "held_out_kl_before", "held_out_kl_after", "peak_rss_mb")
    return {k: report[k] for k in keys} | {"data": settings.data, "lr": settings.lr}


def _export(fmt: str, variant: str, src: Path, out: Path, recipe: Recipe) -> dict:
    """Write an artifact under a staging name, verify it in its runtime, then rename it."""
    from ..export import ParityCheck, export_verified
    from ..export.formats import LLAMA_CPP_TYPES
    from ..model import load_model

    _say(f"exporting {out.name}")
    model, tokenizer = load_model(src)
    check = ParityCheck(seq_len=recipe.seq_len, max_windows=recipe.verify_windows)
    calibration = None
    # llama.cpp's K-/i-quants (importance matrix) and ONNX int4 (GPTQ) learn their rounding from the calibration set
    if (fmt == "gguf" and variant in LLAMA_CPP_TYPES) or (fmt == "onnx" and variant == "int4"):
        from ..data import load_calibration

        calibration = load_calibration(tokenizer, recipe.calib, recipe.calib_samples, recipe.calib_len).ids
    result = export_verified(model, tokenizer, src, out, fmt, variant, check=check, threads=recipe.threads,
                             progress=False, calibration=calibration, onnx_attention=recipe.onnx_attention)
    _say(result.parity.summary())
    if not result.written:
        raise PutriError(f"{out.name} failed its parity check: {'; '.join(result.parity.failures)}")
    return {"bytes": result.bytes, "export_seconds": result.export_seconds, "parity": result.parity.to_dict(),
            "notes": result.notes, "tensor_types": result.tensor_types}


def artifact_label(fmt: str, variant: str) -> str:
    return f"GGUF {variant}" if fmt == "gguf" else f"ONNX {variant if variant != 'none' else 'fp32'}"


def _quality(recipe: Recipe, dense_dir: Path, pruned_dir: Path, staging: Path, artifacts: list[dict]) -> list[dict]:
    """Perplexity of every model and artifact on every evaluation corpus (same windows, same tokens); each
    artifact in its own runtime, in a child process."""
    import torch

    from ..data import load_corpus, tokenize_corpus
    from ..eval import logits_nll_fn, nll_perplexity, runtime_nll_fn, torch_logits_fn
    from ..model import load_model, load_tokenizer
    from ..runtime.process import RuntimeProcess

    scored = [("torch fp32", "dense", "torch", dense_dir), ("torch fp32", "pruned", "torch", pruned_dir)]
    scored += [(artifact_label(a["format"], a["variant"]), a["which"], a["format"], staging / a["path"])
               for a in artifacts]
    tokenizer = load_tokenizer(dense_dir)
    corpora = {name: load_corpus(name) for name in recipe.eval_data}
    ids = {name: tokenize_corpus(tokenizer, c) for name, c in corpora.items()}
    rows = []
    for label, which, fmt, path in scored:
        _say(f"perplexity: {label} {which}")
        if fmt == "torch":
            fn, close = logits_nll_fn(torch_logits_fn(load_model(path)[0])), (lambda: None)
        else:
            runtime = RuntimeProcess(RUNTIME[fmt], path, n_ctx=recipe.seq_len, n_threads=recipe.threads)
            fn, close = runtime_nll_fn(runtime), runtime.close  # scored in the runtime's process
        try:
            row = {"artifact": label, "which": which}
            with torch.no_grad():
                for name in recipe.eval_data:
                    result = nll_perplexity(fn, ids[name], recipe.seq_len, recipe.eval_windows,
                                            corpus=corpora[name], progress=False)
                    row[name] = result.perplexity
                    row["windows"] = result.windows
        finally:
            close()
        rows.append(row)
    return rows


def _bench(recipe: Recipe, fmt: str, pair: list[Path], out: Path) -> dict:
    from ..bench import run_sweep

    _say(f"benchmarking {fmt}: {', '.join(p.name for p in pair)}")
    if out.exists():
        shutil.rmtree(out)
    threads = recipe.threads or os.cpu_count() or 1
    report = run_sweep([str(p) for p in pair], RUNTIME[fmt], threads, recipe.prompt_tokens, recipe.gen_tokens,
                       list(recipe.bench_depths), recipe.bench_repeats, out, progress=False)
    return {"comparison": report["comparison"], "models": report["models"],
            "results": [{k: r[k] for k in ("model", "depth", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_mb",
                                             "load_s")} for r in report["results"]]}
