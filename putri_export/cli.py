"""The ``putri-export`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import PutriError


def _cmd_info(args: argparse.Namespace) -> None:
    from .model import load_model, param_counts

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


def _cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from .data import load_corpus
    from .evaluate import perplexity, tokenize_corpus, torch_logits_fn
    from .model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    corpus = load_corpus(args.data)
    ids = tokenize_corpus(tokenizer, corpus)
    result = perplexity(torch_logits_fn(model), ids, args.seq_len, args.max_windows, args.batch_size, corpus)
    record = {"model": str(args.model), **result.to_dict()}
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


def _cmd_export(args: argparse.Namespace, fmt: str, variant: str) -> int:
    """Write to a staging name beside --out, verify it in its runtime, and only then rename it to --out."""
    from .assets import resolve_model
    from .export import export_verified
    from .model import load_model

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    resolved = resolve_model(args.model)
    if resolved.gguf_file is not None:
        raise PutriError("give an HF model folder (or smollm2-135m) to export, not a .gguf file")
    model, tokenizer = load_model(resolved.path)
    result = export_verified(model, tokenizer, resolved.path, out, fmt, variant, verify=not args.no_verify,
                             data=args.verify_data, seq_len=args.seq_len, max_windows=args.verify_windows,
                             threads=args.threads)
    for note in result.notes:
        print(f"note: {note}")
    if result.parity is not None:
        _print_report(result.parity, args.json)
    if not result.written:
        print(f"putri-export: error: {out} not written: parity check failed", file=sys.stderr)
        return 1
    print(f"{out}: ready ({result.bytes:,} bytes)")
    return 0


def _cmd_export_gguf(args: argparse.Namespace) -> int:
    return _cmd_export(args, "gguf", args.type)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    return _cmd_export(args, "onnx", args.quantize)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_artifact

    report = verify_artifact(Path(args.artifact), args.against, data=args.data, seq_len=args.seq_len,
                             max_windows=args.max_windows, threads=args.threads)
    _print_report(report, args.json)
    return 0 if report.passed else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from .runtime_llamacpp import check_gguf_file

    from .runtime_process import child_environment

    check_gguf_file(Path(args.gguf))
    # llama-cpp-python's server, started through runtime_llamacpp.serve so that it loads the model with the
    # CPU-safe setting; the process is handed over (signals go straight to the server), without torch.
    cmd = [sys.executable, "-m", "putri_export.runtime_llamacpp", "--model", str(args.gguf), "--host", args.host,
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

    from .assets import cache_dir

    return cache_dir() / kind / hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


def _cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from .assets import resolve_model
    from .calibration import load_calibration
    from .model import load_model, save_checkpoint
    from .prune import PruneSettings, prune_model

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    settings = PruneSettings(
        method=args.method, sparsity=args.sparsity, alpha=args.alpha, damping=args.damping,
        update=not args.no_update, update_damping=args.update_damping, o_refit=not args.no_o_refit,
        attn_samples=args.attn_samples, attn_len=args.attn_len, batch_size=args.batch_size)
    settings.check()
    if args.threads:
        torch.set_num_threads(args.threads)
    resolved = resolve_model(args.model)
    model, tokenizer = load_model(args.model)
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(out)
    try:
        report = prune_model(model, calib, settings, state_dir=state_dir, resume=args.resume)
    except KeyboardInterrupt:
        print(f"putri-export: interrupted; nothing written to {out}. Progress is kept in {state_dir}: "
              "rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    report["source_model"] = str(args.model)
    report["threads"] = torch.get_num_threads()
    save_checkpoint(model, tokenizer, out, source_dir=resolved.path, overwrite=args.overwrite,
                    extra_files={"pruning_report.json": json.dumps(report, indent=2) + "\n"})
    print(f"{out}: {args.method} at sparsity {args.sparsity}: blocks {report['params_blocks']:,} / "
          f"{report['dense_params_blocks']:,} (achieved {report['sparsity_blocks']:.4f}), total "
          f"{report['params_total']:,} ({report['sparsity_total']:.4f}); {report['prune_seconds']:.1f} s, "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise PutriError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from .assets import resolve_model
    from .calibration import load_calibration
    from .model import load_model, save_checkpoint
    from .search import SearchSettings, search_and_prune

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if args.widths is None and args.sparsity is None:
        raise PutriError("give --sparsity (to search a distribution) or --widths FILE (to prune to a given one)")
    settings = SearchSettings(
        sparsity=args.sparsity if args.sparsity is not None else 0.0, alpha=args.alpha, iterations=args.iterations,
        step=args.step, levels=args.levels, generations=args.generations, offspring=args.offspring,
        stage_samples=_int_list(args.stage_samples, "--stage-samples"),
        stage_keep=_int_list(args.stage_keep, "--stage-keep"), max_shifts=args.max_shifts, top_k=args.top_k,
        propagation=args.propagation, damping=args.damping, batch_size=args.batch_size, seed=args.seed)
    settings.check(args.calib_samples)
    if args.widths is not None and not Path(args.widths).is_file():
        raise PutriError(f"widths file not found: {args.widths}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    resolved = resolve_model(args.model)
    model, tokenizer = load_model(args.model)
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    work_dir = Path(args.work_dir) if args.work_dir else default_state_dir(out, "search")
    try:
        report, plots = search_and_prune(model, calib, settings, work_dir, resume=args.resume,
                                         widths_file=Path(args.widths) if args.widths else None)
    except KeyboardInterrupt:
        print(f"putri-export: interrupted; nothing written to {out}. Finished iterations are kept in {work_dir}: "
              "rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    report["source_model"] = str(args.model)
    report["threads"] = torch.get_num_threads()
    widths = json.dumps({"widths": report["widths"]}, indent=2) + "\n"
    save_checkpoint(model, tokenizer, out, source_dir=resolved.path, overwrite=args.overwrite,
                    extra_files={"search_report.json": json.dumps(report, indent=2) + "\n", "widths.json": widths,
                                 **plots})
    print(f"{out}: {report['method']}: blocks {report['params_blocks']:,} / {report['dense_params_blocks']:,} "
          f"(achieved {report['sparsity_blocks']:.4f}), total {report['params_total']:,}; "
          f"{report['seconds']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MB")
    if "final_kl" in report:
        it = report["iterations"]
        kl = report["final_kl"]
        print(f"KL to dense on {kl['tokens']} calibration tokens: uniform {it[0]['start_fitness']:.4f} -> searched "
              f"{kl['kl']:.4f} ({kl['chosen']}; re-pruned at the widths {kl['repruned_at_widths']:.4f})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Recipe, run_pipeline

    flags = {"model": args.model, "sparsity": args.sparsity, "search": args.search or None,
             "formats": args.formats.split(",") if args.formats else None,
             "gguf_types": args.gguf_types.split(",") if args.gguf_types else None,
             "onnx_quantize": args.onnx_quantize.split(",") if args.onnx_quantize else None,
             "calib": args.calib, "calib_samples": args.calib_samples, "calib_len": args.calib_len,
             "eval_windows": args.eval_windows, "bench": False if args.no_bench else None,
             "bench_depths": list(_int_list(args.bench_depths, "--bench-depths")) if args.bench_depths else None,
             "bench_repeats": args.bench_repeats, "threads": args.threads}
    flags = {k: v for k, v in flags.items() if v is not None}
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
        print(f"putri-export: interrupted; nothing written to {out}. Finished steps are kept beside it: rerun the "
              "same command with --resume to continue", file=sys.stderr)
        return 130
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_suite import run_sweep

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


def _cmd_bench_merge(args: argparse.Namespace) -> int:
    from .bench_suite import merge

    for path in args.reports:
        if not Path(path).is_file():
            raise PutriError(f"no such report: {path}")
    print(merge([Path(p) for p in args.reports], Path(args.out)))
    return 0


def _add_pruning_io_arguments(p: argparse.ArgumentParser, calib_samples: int, resume_help: str) -> None:
    """What prune and search both take: the model, calibration, and where the checkpoint goes."""
    p.add_argument("model", help="HF folder, .gguf file, or built-in name (smollm2-135m)")
    p.add_argument("--calib", default="wikitext2:valid,tinystories:train",
                   help="calibration data (comma-separated specs, split evenly); never evaluate on it")
    p.add_argument("--calib-samples", type=int, default=calib_samples, help="calibration windows N")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per calibration window T")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help=resume_help)


def _add_export_arguments(p: argparse.ArgumentParser, out_help: str, runtime: str) -> None:
    """What every exporter takes: source, output, and the verification that gates the rename."""
    p.add_argument("model", help="HF model folder (pruned or dense) or smollm2-135m")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-verify", action="store_true", help=f"skip the {runtime} parity check")
    p.add_argument("--verify-data", default="wikitext2")
    p.add_argument("--verify-windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="write the parity report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="putri-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="per-layer heads / KV heads / FFN widths and parameter counts")
    p.add_argument("model", help="HF folder, .gguf file, or built-in name (smollm2-135m)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("eval", help="perplexity on non-overlapping windows")
    p.add_argument("model", help="HF folder, .gguf file, or built-in name (smollm2-135m)")
    p.add_argument("--data", default="wikitext2", help="file (.txt/.jsonl/.parquet), built-in name "
                   "(wikitext2, wikitext2:valid, tinystories, tinystories:train) or hub dataset")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("prune", help="structured pruning to a smaller per-layer-width checkpoint")
    _add_pruning_io_arguments(p, calib_samples=64, resume_help="continue an interrupted run from its last finished block")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of block parameters to remove, [0, 1)")
    p.add_argument("--method", default="putri", choices=["putri", "2ssp", "shortgpt", "flap"])
    p.add_argument("--state-dir", help="where progress is kept for --resume (default: under the cache)")
    p.add_argument("--alpha", type=float, default=1.5, help="attention/FFN budget split (2SSP/Putri)")
    p.add_argument("--damping", type=float, default=1e-2, help="relative Hessian damping for OBS scores")
    p.add_argument("--update-damping", type=float, default=0.0, help="relative ridge in the least-squares updates")
    p.add_argument("--no-update", action="store_true", help="Putri without the down_proj least-squares update")
    p.add_argument("--no-o-refit", action="store_true",
                   help="skip Putri's least-squares refit of the kept o_proj columns (on by default)")
    p.add_argument("--attn-samples", type=int, default=2, help="calibration samples scoring attention removals")
    p.add_argument("--attn-len", type=int, default=256, help="their first tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("run", help="prune → export → verify → evaluate → benchmark, with report.md")
    p.add_argument("model", nargs="?", help="HF folder or built-in name (smollm2-135m)")
    p.add_argument("--sparsity", type=float, help="fraction of block parameters to remove, [0, 1)")
    p.add_argument("--recipe", help="JSON or YAML file of settings (flags given here win)")
    p.add_argument("--search", action="store_true", help="Týr-style search of per-layer widths before pruning")
    p.add_argument("--formats", help="comma-separated: gguf,onnx (default both)")
    p.add_argument("--gguf-types", help="comma-separated GGUF types (default q8_0)")
    p.add_argument("--onnx-quantize", help="comma-separated: none,int8,int4 (default none,int8)")
    p.add_argument("--calib", help="calibration data (default wikitext2:valid,tinystories:train)")
    p.add_argument("--calib-samples", type=int)
    p.add_argument("--calib-len", type=int)
    p.add_argument("--eval-windows", type=int, help="perplexity windows of 512 tokens per corpus (default 8)")
    p.add_argument("--bench-depths", help="context depths for the benchmark (default 0,512)")
    p.add_argument("--bench-repeats", type=int)
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True, help="output folder (report.md, model/, artifacts/, bench/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished step")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("search", help="Týr-style search of per-layer widths, then Putri pruning to them")
    _add_pruning_io_arguments(p, calib_samples=16, resume_help="continue from the last finished iteration")
    p.add_argument("--sparsity", type=float, help="fraction of block parameters to remove, [0, 1)")
    p.add_argument("--widths", help="prune to this per-layer distribution (JSON) instead of searching")
    p.add_argument("--work-dir", help="supernet variants and search state (default: under the cache)")
    p.add_argument("--iterations", type=int, default=3, help="coarse-to-fine iterations (step halves each)")
    p.add_argument("--step", type=float, default=0.125, help="first level spacing, fraction of a sub-layer")
    p.add_argument("--levels", type=int, default=9, help="levels per sub-layer")
    p.add_argument("--generations", type=int, default=20, help="generations per iteration")
    p.add_argument("--offspring", type=int, default=16, help="offspring per generation")
    p.add_argument("--stage-samples", default="1,4", help="calibration windows per selection stage")
    p.add_argument("--stage-keep", default="4,1", help="survivors per selection stage (ends with 1)")
    p.add_argument("--max-shifts", type=int, default=4, help="level shifts per mutation")
    p.add_argument("--top-k", type=int, default=256, help="dense next-token probabilities kept for the KL")
    p.add_argument("--propagation", default="expectation", choices=["expectation", "centre"],
                   help="what feeds the next block while building the supernet")
    p.add_argument("--alpha", type=float, default=1.5, help="attention/FFN budget split (kept by the search)")
    p.add_argument("--damping", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_search)

    export = sub.add_parser("export", help="write a deployable artifact").add_subparsers(dest="format", required=True)
    p = export.add_parser("gguf", help="GGUF (llama.cpp 'deci' architecture, per-layer widths)")
    _add_export_arguments(p, "output .gguf file", "llama.cpp")
    p.add_argument("--type", default="f16", choices=["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
    p.set_defaults(func=_cmd_export_gguf)

    p = export.add_parser("onnx", help="ONNX decoder with per-layer KV cache (ONNX Runtime)")
    _add_export_arguments(p, "output folder", "ONNX Runtime")
    p.add_argument("--quantize", default="none", choices=["none", "int8", "int4"])
    p.set_defaults(func=_cmd_export_onnx)

    p = sub.add_parser("verify", help="parity of an artifact with its PyTorch model (exit 1 outside tolerance)")
    p.add_argument("artifact", help=".gguf file or exported ONNX folder")
    p.add_argument("--against", required=True, help="the HF model folder it was exported from")
    p.add_argument("--data", default="wikitext2")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="llama-bench-style prefill/decode speed, TTFT, memory at context depths")
    p.add_argument("models", nargs="+", help="artifacts to compare, the reference (dense) first: .gguf files "
                   "(llama.cpp), ONNX folders (onnxruntime) or HF folders (torch)")
    p.add_argument("--backend", required=True, help="llama.cpp, onnxruntime or torch")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--depths", default="0,512,2048", help="comma-separated context depths")
    p.add_argument("--max-depth", type=int, help="sweep 0, 512, 1024, ... up to this depth instead of --depths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device-label", help="tag for results from another machine (default: host name)")
    p.add_argument("--out", required=True, help="output folder (bench.json/.csv/.md/.png)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("bench-merge", help="merge bench.json files (e.g. from devices) into one Markdown report")
    p.add_argument("reports", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_bench_merge)

    p = sub.add_parser("serve", help="llama-cpp-python's OpenAI-compatible server for a GGUF")
    p.add_argument("gguf")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_serve)
    return parser


def _quiet_libraries() -> None:
    """Our own progress bars and messages only; library chatter hides the one line that matters."""
    try:
        import datasets
        import transformers
    except ImportError:  # benchmark-only install on a device
        return

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        code = args.func(args)
    except PutriError as e:
        print(f"putri-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("putri-export: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, missing paths: the system's own words and the path
        if os.environ.get("PUTRI_EXPORT_DEBUG"):
            raise
        print(f"putri-export: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except Exception as e:  # an unexpected failure: one line, traceback on request
        if os.environ.get("PUTRI_EXPORT_DEBUG"):
            raise
        print(f"putri-export: internal error: {type(e).__name__}: {e} (set PUTRI_EXPORT_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
