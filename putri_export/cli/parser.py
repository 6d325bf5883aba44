"""The parser: one function per subcommand; settings flags come from the settings dataclasses."""

from __future__ import annotations

import argparse
import os

from ..compute import ComputeSettings
from ..options import add_options
from .commands import (
    cmd_bench,
    cmd_bench_merge,
    cmd_eval,
    cmd_export,
    cmd_info,
    cmd_prune,
    cmd_recover,
    cmd_run,
    cmd_search,
    cmd_serve,
    cmd_verify,
)

DESCRIPTION = ("Prune a Llama, Qwen2 or Qwen3 model into smaller per-layer-width HF, GGUF and ONNX artifacts, "
               "parity-proven.")
MODEL_HELP = "HF folder, .gguf file, or built-in name (smollm2-135m)"
DATA_HELP = ("file (.txt/.jsonl/.parquet), built-in name (wikitext2, wikitext2:valid, wikitext2:valid-raw, "
             "tinystories, tinystories:train, tinystories:train-2mib, c4) or hub dataset")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="per-layer heads / KV heads / FFN widths and parameter counts")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity on non-overlapping windows")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", default="wikitext2", help=DATA_HELP)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE ('-' for stdout)")
    add_options(p, ComputeSettings)
    p.set_defaults(func=cmd_eval)


def _add_pruning_io(p: argparse.ArgumentParser, resume_help: str) -> None:
    """What prune and search both take: the model, calibration (the same default: a search is compared with the
    prune it would replace), and where the checkpoint goes."""
    from ..data import DEFAULT_CALIBRATION

    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--calib", default=DEFAULT_CALIBRATION,
                   help="calibration data (comma-separated specs, split evenly; SPEC*N takes N shares); never "
                   "evaluate on it")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration windows N")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per calibration window T")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--threads", type=int, default=None)


def _add_prune(sub) -> None:
    from ..prune import PruneSettings

    p = sub.add_parser("prune", help="structured pruning to a smaller per-layer-width checkpoint")
    _add_pruning_io(p, resume_help="continue an interrupted run from its last finished block")
    add_options(p, PruneSettings)
    add_options(p, ComputeSettings)
    p.add_argument("--state-dir", help="where progress is kept for --resume (default: under the cache)")
    p.set_defaults(func=cmd_prune)


def _add_search(sub) -> None:
    from ..search import SearchSettings

    p = sub.add_parser("search", help="Týr-style search of per-layer widths, then Putri pruning to them")
    _add_pruning_io(p, resume_help="continue from the last finished iteration")
    add_options(p, SearchSettings)
    add_options(p, ComputeSettings)
    p.add_argument("--widths", help="prune to this per-layer distribution (JSON) instead of searching")
    p.add_argument("--work-dir", help="supernet variants and search state (default: under the cache)")
    p.set_defaults(func=cmd_search)


def _add_recover(sub) -> None:
    from ..recover import RecoverSettings

    p = sub.add_parser("recover", help="distil the dense model into a pruned checkpoint (same widths, every "
                       "exporter unchanged)")
    p.add_argument("model", help="pruned HF checkpoint folder")
    p.add_argument("--teacher", help="the dense model (default: the source model its pruning report records)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help="continue from the last saved step (teacher outputs kept)")
    p.add_argument("--state-dir", help="teacher cache and training state for --resume (default: under the cache)")
    p.add_argument("--threads", type=int, default=None)
    add_options(p, RecoverSettings)
    add_options(p, ComputeSettings, only=["device"])
    p.set_defaults(func=cmd_recover)


def _add_run(sub) -> None:
    from ..run import Recipe

    p = sub.add_parser("run", help="prune → export → verify → evaluate → benchmark, with report.md")
    p.add_argument("model", nargs="?", help="HF folder or built-in name (smollm2-135m)")
    p.add_argument("--recipe", help="JSON or YAML file of settings (flags given here win)")
    add_options(p, Recipe, skip=("model", "search_options", "recover_options"))
    p.add_argument("--out", required=True, help="output folder (report.md, model/, artifacts/, bench/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished step")
    p.set_defaults(func=cmd_run)


def _add_export(sub) -> None:
    from ..export import QUANTIZATIONS
    from ..export.formats import ALL_GGUF_TYPES, LLAMA_CPP_TYPES, ONNX_ATTENTIONS

    export = sub.add_parser("export", help="write a deployable artifact").add_subparsers(dest="format", required=True)
    for fmt, help_text, out_help, runtime, flag, choices, default in (
            ("gguf", "GGUF (llama.cpp deci / openelm, per-layer widths)", "output .gguf file", "llama.cpp",
             "--type", ALL_GGUF_TYPES, "f16"),
            ("onnx", "ONNX decoder with per-layer KV cache (ONNX Runtime)", "output folder", "ONNX Runtime",
             "--quantize", QUANTIZATIONS, "none")):
        p = export.add_parser(fmt, help=help_text)
        p.add_argument("model", help="HF model folder (pruned or dense) or smollm2-135m")
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument(flag, dest="variant", default=default, choices=choices)
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--no-verify", action="store_true", help=f"skip the {runtime} parity check")
        _add_parity_check(p, data_flag="--verify-data", windows_flag="--verify-windows")
        add_options(p, ComputeSettings, only=["streaming"])
        if fmt == "gguf":
            p.add_argument("--imatrix-data", metavar="DATA",
                           help=f"calibration text for llama.cpp's importance matrix ({', '.join(LLAMA_CPP_TYPES)} "
                                f"only; {DATA_HELP}); never the text you evaluate on")
            p.add_argument("--imatrix-samples", type=int, default=32, help="importance-matrix windows (default: 32)")
            p.add_argument("--imatrix-len", type=int, default=512, help="tokens per window (default: 512)")
        else:
            from ..data import DEFAULT_CALIBRATION
            from ..export.formats import DEFAULT_INT4_METHOD, INT4_METHODS

            p.add_argument("--int4-method", choices=INT4_METHODS, default=DEFAULT_INT4_METHOD,
                           help=f"how --quantize int4 rounds (default: {DEFAULT_INT4_METHOD}): "
                                + "; ".join(f"{k}: {v}" for k, v in INT4_METHODS.items()))
            p.add_argument("--gptq-data", metavar="DATA",
                           help=f"GPTQ's calibration text (int4 gptq methods; default: {DEFAULT_CALIBRATION}; "
                                f"{DATA_HELP}); never the text you evaluate on")
            p.add_argument("--gptq-samples", type=int, default=32, help="GPTQ calibration windows (default: 32)")
            p.add_argument("--gptq-len", type=int, default=512, help="tokens per window (default: 512)")
            p.add_argument("--attention", choices=ONNX_ATTENTIONS, default="gqa",
                           help="gqa (default): com.microsoft.GroupQueryAttention, the KV cache written in place "
                                "(ONNX Runtime, onnxruntime-genai); standard: portable ONNX ops, the cache "
                                "concatenated every step")
        p.set_defaults(func=cmd_export)


def _add_parity_check(p: argparse.ArgumentParser, data_flag: str, windows_flag: str) -> None:
    """The flags of a parity check (export verifies with them, verify checks with them)."""
    from ..export import ParityCheck

    default = ParityCheck()
    p.add_argument(data_flag, dest="check_data", default=default.data, help=f"text to compare on ({DATA_HELP})")
    p.add_argument("--seq-len", type=int, default=default.seq_len, help="tokens per perplexity window")
    p.add_argument(windows_flag, dest="check_windows", type=int, default=default.max_windows,
                   help="perplexity windows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE", help="write the parity report as JSON")


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="parity of an artifact with its PyTorch model (exit 1 outside tolerance)")
    p.add_argument("artifact", help=".gguf file or exported ONNX folder")
    p.add_argument("--against", required=True, help="the HF model folder it was exported from")
    _add_parity_check(p, data_flag="--data", windows_flag="--max-windows")
    add_options(p, ComputeSettings, only=["streaming"])
    p.set_defaults(func=cmd_verify)


def _add_bench(sub) -> None:
    from ..bench import BACKENDS

    p = sub.add_parser("bench", help="llama-bench-style prefill/decode speed, TTFT, memory at context depths")
    p.add_argument("models", nargs="+", help="artifacts to compare, the reference (dense) first: .gguf files "
                   "(llama.cpp), ONNX folders (onnxruntime) or HF folders (torch)")
    p.add_argument("--backend", required=True, help=", ".join(BACKENDS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--depths", default="0,512,2048", help="comma-separated context depths")
    p.add_argument("--max-depth", type=int, help="sweep 0, 512, 1024, ... up to this depth instead of --depths")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device-label", help="tag for results from another machine (default: host name)")
    p.add_argument("--out", required=True, help="output folder (bench.json/.csv/.md/.png)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-merge", help="merge bench.json files (e.g. from devices) into one Markdown report")
    p.add_argument("reports", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bench_merge)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="llama-cpp-python's OpenAI-compatible server for a GGUF")
    p.add_argument("gguf")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="putri-export", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_eval, _add_prune, _add_recover, _add_run, _add_search, _add_export, _add_verify,
                _add_bench, _add_serve):
        add(sub)
    return parser


