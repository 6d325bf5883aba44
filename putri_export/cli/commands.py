"""What each subcommand does (the parser in ``parser.py`` points here)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import PutriError
from ..options import given_options


def cmd_info(args: argparse.Namespace) -> None:
    from ..eval.artifact import artifact_runtime, artifact_widths
    from ..model import load_model, param_counts

    if artifact_runtime(args.model) is not None:
        _print_artifact_widths(args.model, artifact_widths(args.model), args.json)
        return
    model, _ = load_model(args.model)
    counts = param_counts(model)
    if args.json:
        print(json.dumps({
            "model": str(args.model),
            "layers": [vars(layer) | {"block_params": layer.block_params} for layer in counts.layers],
            "blocks": counts.blocks, "embeddings": counts.embeddings, "final_norm": counts.final_norm,
            "total": counts.total, "head_dim": model.config.head_dim, "hidden_size": model.config.hidden_size,
        }, indent=2))
        return
    c = model.config
    print(f"{args.model}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, head_dim {c.head_dim}, "
          f"vocab {c.vocab_size}, tied embeddings {c.tie_word_embeddings}")
    print(f"{'layer':>5} {'heads':>5} {'kv':>3} {'ffn':>6} {'attn params':>12} {'ffn params':>12} {'block params':>13}")
    for layer in counts.layers:
        print(f"{layer.layer:>5} {layer.heads:>5} {layer.kv_heads:>3} {layer.ffn:>6} {layer.attn_params:>12,} "
              f"{layer.ffn_params:>12,} {layer.block_params:>13,}")
    print(f"blocks {counts.blocks:,} | embeddings {counts.embeddings:,} | final norm {counts.final_norm:,} | "
          f"total {counts.total:,}")


def _print_artifact_widths(path: str, widths: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"model": str(path), **widths}, indent=2))
        return
    what = f"GGUF, llama.cpp arch {widths['arch']}" if widths["format"] == "gguf" else \
        f"ONNX ({widths['model_type']}, {widths['quantization']})"
    print(f"{path}: {what}, {len(widths['heads'])} layers (widths as written, placeholders included)")
    print(f"{'layer':>5} {'heads':>5} {'kv':>3} {'ffn':>6}")
    for layer, (h, k, f) in enumerate(zip(widths["heads"], widths["kv_heads"], widths["ffn"])):
        print(f"{layer:>5} {h:>5} {k:>3} {f:>6}")


def cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from ..compute import ComputeSettings
    from ..data import load_corpus, tokenize_corpus
    from ..eval import artifact_runtime, evaluate_artifact
    from ..eval.perplexity import model_perplexity
    from ..model.blocks import open_model

    if args.threads:
        torch.set_num_threads(args.threads)
    how: dict = {}
    if artifact_runtime(args.model) is not None:  # a GGUF or ONNX export: its own runtime, its own tokenizer
        corpus = load_corpus(args.data)
        result = evaluate_artifact(Path(args.model), corpus, args.seq_len, args.max_windows, args.threads)
    else:
        model, tokenizer, _, blocks = open_model(args.model, ComputeSettings(**given_options(args, ComputeSettings)))
        corpus = load_corpus(args.data)
        ids = tokenize_corpus(tokenizer, corpus)
        result = model_perplexity(model, ids, args.seq_len, args.max_windows, args.batch_size, corpus,
                                  blocks=blocks)
        weight = model.model.embed_tokens.weight
        how = {"device": str(weight.device), "dtype": str(weight.dtype).removeprefix("torch."),
               "streamed": blocks is not None}
    record = {"model": str(args.model), **result.to_dict(), **how}
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.json == "-":
        print(json.dumps(record, indent=2))
    else:
        print(f"{args.model} on {corpus.name} ({corpus.source}): perplexity {result.perplexity:.4f} "
              f"| {result.windows} windows × {result.seq_len} tokens, {result.predicted_tokens} predicted tokens "
              f"(corpus {result.corpus_tokens} tokens)")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise PutriError(f"{path} exists; pass --overwrite to replace it")


def _print_report(report, json_path: str | None) -> None:
    print(report.summary())
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _export_calibration(args: argparse.Namespace) -> tuple[str, int, int] | None:
    """The calibration text (spec, windows, tokens per window) the export's quantizer learns from: llama.cpp's
    importance matrix (``--imatrix-data``, K-/i-quants only) or GPTQ for ONNX int4 (``--gptq-data``, defaulting to
    the pruner's calibration set); None when the export needs none."""
    from ..data import DEFAULT_CALIBRATION
    from ..export.formats import LLAMA_CPP_TYPES

    if args.format == "gguf":
        if args.imatrix_data is not None and args.variant not in LLAMA_CPP_TYPES:
            raise PutriError(f"--imatrix-data weighs llama.cpp's quantizer: give --type one of "
                             f"{', '.join(LLAMA_CPP_TYPES)} (got {args.variant})")
        return None if args.imatrix_data is None else (args.imatrix_data, args.imatrix_samples, args.imatrix_len)
    gptq = args.variant == "int4" and args.int4_method.startswith("gptq")
    if args.gptq_data is not None and not gptq:
        raise PutriError(f"--gptq-data is GPTQ's calibration text: give --quantize int4 with --int4-method gptq or "
                         f"gptq-sym (got --quantize {args.variant}, --int4-method {args.int4_method})")
    return (args.gptq_data or DEFAULT_CALIBRATION, args.gptq_samples, args.gptq_len) if gptq else None


def cmd_export(args: argparse.Namespace) -> int:
    """Write to a staging name beside --out, verify it in its runtime, and only then rename it to --out."""
    from ..compute import ComputeSettings
    from ..export import ParityCheck, export_verified
    from ..export.formats import LLAMA_CPP_TYPES
    from ..model.assets import resolve_model
    from ..model.blocks import open_model

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    resolved = resolve_model(args.model)
    if resolved.gguf_file is not None:
        raise PutriError("give an HF model folder (or smollm2-135m) to export, not a .gguf file")
    calibration_spec = _export_calibration(args)
    model, tokenizer, _, blocks = open_model(resolved.path, ComputeSettings(device="cpu",
                                                                            streaming=args.streaming or "auto"))
    calibration = None
    if calibration_spec is not None:
        from ..data import load_calibration

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        calibration = load_calibration(tokenizer, *calibration_spec).ids
    check = ParityCheck(data=args.check_data, seq_len=args.seq_len, max_windows=args.check_windows)
    result = export_verified(model, tokenizer, resolved.path, out, args.format, args.variant,
                             verify=not args.no_verify, check=check, threads=args.threads, blocks=blocks,
                             calibration=calibration, onnx_attention=getattr(args, "attention", "gqa"),
                             int4_method=getattr(args, "int4_method", None))
    for note in result.notes:
        print(f"note: {note}")
    if result.parity is not None:
        _print_report(result.parity, args.json)
    if not result.written:
        hint = ""
        if args.format == "gguf" and args.variant in LLAMA_CPP_TYPES and calibration is None:
            hint = ("; llama.cpp's quantizer weighed by an importance matrix often closes the gap: add --imatrix-data "
                    "(SmolLM2-135M Q5_K_M: +11.0% perplexity without, +0.9% with)")
        print(f"putri-export: error: {out} not written: parity check failed{hint}", file=sys.stderr)
        return 1
    print(f"{out}: ready ({result.bytes:,} bytes)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..export import ParityCheck, verify_artifact

    check = ParityCheck(data=args.check_data, seq_len=args.seq_len, max_windows=args.check_windows)
    report = verify_artifact(Path(args.artifact), args.against, check, args.threads,
                             streaming=args.streaming or "auto")
    _print_report(report, args.json)
    return 0 if report.passed else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from ..runtime.llamacpp import check_gguf_file
    from ..runtime.process import child_environment

    check_gguf_file(Path(args.gguf))
    # llama-cpp-python's server, started through runtime.llamacpp.serve so that it loads the model with the
    # CPU-safe setting; the process is handed over (signals go straight to the server), without torch.
    cmd = [sys.executable, "-m", "putri_export.runtime.llamacpp", "--model", str(args.gguf), "--host", args.host,
           "--port", str(args.port), "--n_ctx", str(args.n_ctx)]
    if args.threads:
        cmd += ["--n_threads", str(args.threads)]
    print(f"serving {args.gguf} at http://{args.host}:{args.port}/v1 (OpenAI-compatible; Ctrl-C stops)",
          file=sys.stderr)
    os.execve(sys.executable, cmd, child_environment())
    return 0


def default_state_dir(out: Path, kind: str = "resume") -> Path:
    """Where an interrupted prune (or search) keeps its progress (outside --out, so --out is never partial)."""
    import hashlib

    from ..model.assets import cache_dir

    return cache_dir() / kind / hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


def _interrupted(out: Path, kept: Path, what: str) -> int:
    print(f"putri-export: interrupted; nothing written to {out}. {what} kept in {kept}: rerun the same command with "
          "--resume to continue", file=sys.stderr)
    return 130


def _reconstruction_calibration(tokenizer, settings, args: argparse.Namespace):
    """The text block reconstruction trains on, loaded, where prune/search name one; None: the calibration."""
    return settings.load_reconstruction_text(tokenizer, args.calib, args.calib_samples, args.calib_len)


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from ..compute import ComputeSettings
    from ..data import load_calibration, parse_weighted_specs
    from ..model.blocks import open_model, save_model
    from ..prune import PruneSettings, prune_model

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if args.sparsity is None:
        raise PutriError("give --sparsity S: the fraction of block parameters to remove, in [0, 1)")
    settings = PruneSettings(**given_options(args, PruneSettings))
    settings.check()
    parse_weighted_specs(args.calib)  # a malformed share is refused before the model is read
    compute = ComputeSettings(**given_options(args, ComputeSettings))
    if args.threads:
        torch.set_num_threads(args.threads)
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(out)
    model, tokenizer, source, blocks = open_model(args.model, compute, work=state_dir.with_name(state_dir.name +
                                                                                                ".blocks"))
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    reconstruct_calib = _reconstruction_calibration(tokenizer, settings, args)
    try:
        report = prune_model(model, calib, settings, state_dir=state_dir, resume=args.resume, blocks=blocks,
                             reconstruct_calib=reconstruct_calib)
    except KeyboardInterrupt:
        return _interrupted(out, state_dir, "Progress is")
    report["source_model"] = str(args.model)
    report["threads"] = torch.get_num_threads()
    extra = {"pruning_report.json": json.dumps(report, indent=2) + "\n"}
    save_model(model, tokenizer, source, blocks, out, overwrite=args.overwrite, extra_files=extra)
    print(f"{out}: {settings.method} at sparsity {settings.sparsity}: blocks {report['params_blocks']:,} / "
          f"{report['dense_params_blocks']:,} (achieved {report['sparsity_blocks']:.4f}), total "
          f"{report['params_total']:,} ({report['sparsity_total']:.4f}); {report['prune_seconds']:.1f} s, "
          f"peak RSS {report['peak_rss_mb']:.0f} MB ({report['device']}, {report['dtype']}"
          f"{', streamed' if report['streamed'] else ''})")
    return 0


def recorded_dense_model(pruned: Path) -> str | None:
    """The dense model a checkpoint was pruned from, as its pruning (or search) report records it."""
    from ..model.checkpoint import PRUNING_REPORTS

    for name in PRUNING_REPORTS:
        report = Path(pruned) / name
        if report.is_file():
            return json.loads(report.read_text()).get("source_model")
    return None


def cmd_recover(args: argparse.Namespace) -> int:
    import torch

    from ..compute import ComputeSettings
    from ..model.assets import resolve_model
    from ..recover import RecoverSettings, recover_checkpoint

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    pruned = resolve_model(args.model)
    if pruned.gguf_file is not None or not (pruned.path / "config.json").is_file():
        raise PutriError(f"recover trains an HF checkpoint folder (what prune writes); {args.model} is not one")
    teacher = args.teacher or recorded_dense_model(pruned.path)
    if teacher is None:
        raise PutriError(f"give --teacher (the dense model): {args.model} records no source model")
    settings = RecoverSettings(**given_options(args, RecoverSettings))
    settings.check()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ComputeSettings(**given_options(args, ComputeSettings)).torch_device()
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(out, "recover")
    try:
        report = recover_checkpoint(pruned.path, teacher, out, settings, device, state_dir=state_dir,
                                    resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        return _interrupted(out, state_dir, "The teacher cache and the last saved training step are")
    before, after = report["held_out_kl_before"], report["held_out_kl_after"]
    kl = f"; held-out KL to the teacher {before:.4f} -> {after:.4f}" if after is not None else ""
    print(f"{out}: {report['steps']} steps, {report['tokens']:,} tokens in {report['seconds']:.0f} s "
          f"(stopped by {report['stopped_by']}){kl}; peak RSS {report['peak_rss_mb']:.0f} MB")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import torch

    from ..compute import ComputeSettings
    from ..data import load_calibration, parse_weighted_specs
    from ..model.blocks import open_model, save_model
    from ..search import SearchSettings, search_and_prune

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if args.widths is None and args.sparsity is None:
        raise PutriError("give --sparsity (to search a distribution) or --widths FILE (to prune to a given one)")
    given = given_options(args, SearchSettings)
    settings = SearchSettings(**{"sparsity": 0.0, **given})
    settings.check(args.calib_samples)
    parse_weighted_specs(args.calib)
    if args.widths is not None and not Path(args.widths).is_file():
        raise PutriError(f"widths file not found: {args.widths}")
    torch.manual_seed(settings.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir) if args.work_dir else default_state_dir(out, "search")
    compute = ComputeSettings(**given_options(args, ComputeSettings))
    # The pruned blocks of a streamed model live beside the search's state: the state is removed when the
    # search ends, the blocks only once the checkpoint is written.
    model, tokenizer, source, blocks = open_model(args.model, compute, work=work_dir.with_name(work_dir.name +
                                                                                              ".blocks"))
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    reconstruct_calib = _reconstruction_calibration(tokenizer, settings, args)
    try:
        report, plots = search_and_prune(model, calib, settings, work_dir, resume=args.resume,
                                         widths_file=Path(args.widths) if args.widths else None, blocks=blocks,
                                         reconstruct_calib=reconstruct_calib)
    except KeyboardInterrupt:
        return _interrupted(out, work_dir, "Finished iterations are")
    report["source_model"] = str(args.model)
    report["threads"] = torch.get_num_threads()
    widths = json.dumps({"widths": report["widths"]}, indent=2) + "\n"
    extra = {"search_report.json": json.dumps(report, indent=2) + "\n", "widths.json": widths, **plots}
    save_model(model, tokenizer, source, blocks, out, overwrite=args.overwrite, extra_files=extra)
    print(f"{out}: {report['method']}: blocks {report['params_blocks']:,} / {report['dense_params_blocks']:,} "
          f"(achieved {report['sparsity_blocks']:.4f}), total {report['params_total']:,}; "
          f"{report['seconds']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MB")
    if "final_kl" in report:
        it = report["iterations"]
        kl = report["final_kl"]
        print(f"KL to dense on {kl['tokens']} calibration tokens: start {it[0]['start_fitness']:.4f} -> searched "
              f"{kl['kl']:.4f} ({kl['chosen']}; re-pruned at the widths {kl['repruned_at_widths']:.4f})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..run import Recipe, run_pipeline, staging_folder

    flags = given_options(args, Recipe)
    if args.model:
        flags["model"] = args.model
    if args.recipe:
        recipe = Recipe.from_file(Path(args.recipe), flags)
    else:
        if "model" not in flags or "sparsity" not in flags:
            raise PutriError("give MODEL and --sparsity, or --recipe FILE")
        recipe = Recipe(**flags)
    out = Path(args.out)
    try:
        run_pipeline(recipe, out, overwrite=args.overwrite, resume=args.resume)
    except KeyboardInterrupt:
        return _interrupted(out, staging_folder(out), "Finished steps are")
    print((out / "report.md").read_text())
    return 0


def _depths(args: argparse.Namespace) -> list[int]:
    try:
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        raise PutriError(f"--depths takes comma-separated integers, got {args.depths!r}") from None
    if args.max_depth is not None:
        depths, d = [0], 512
        while d <= args.max_depth:
            depths.append(d)
            d *= 2
    return depths


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_sweep

    out = Path(args.out)
    try:
        report = run_sweep(args.models, args.backend, args.threads, args.prompt_tokens, args.gen_tokens,
                           _depths(args), args.repeats, out, device_label=args.device_label,
                           command="putri-export " + " ".join(sys.argv[1:]))
    except KeyboardInterrupt:
        print(f"putri-export: interrupted; finished measurements are in {out}", file=sys.stderr)
        return 130
    print((out / "bench.md").read_text())
    print(f"{out}: bench.json, bench.csv, bench.md, bench.png ({len(report['results'])} configurations)")
    return 0


def cmd_bench_merge(args: argparse.Namespace) -> int:
    from ..bench import merge

    for path in args.reports:
        if not Path(path).is_file():
            raise PutriError(f"no such report: {path}")
    print(merge([Path(p) for p in args.reports], Path(args.out)))
    return 0


