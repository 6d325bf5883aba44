"""GGUF on SmolLM2-135M: export time, llama.cpp vs PyTorch perplexity, llama.cpp prefill/decode speed.

    .venv/bin/python tools/gguf_smollm2.py --threads 2 --out results/gguf

Models: the dense SmolLM2-135M (Q4_1 GGUF from PyPI, dequantized) and, until Putri lands, a
*random-width* copy at ~50% block sparsity (half the FFN neurons, KV groups 2/1 alternating): its
perplexity means nothing, it only shows that a pruned structure exports, verifies and runs faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from putri_export.data import load_corpus, tokenize_corpus
from putri_export.export import ParityCheck, verify_artifact
from putri_export.export.gguf import write_gguf
from putri_export.model import load_model, param_counts, save_checkpoint, slice_randomly
from putri_export.model.assets import ensure_builtin_model


def llama_speed(path: Path, tokens: list[int], prefill: int, decode: int, threads: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) with llama.cpp's default F16 KV cache."""
    from putri_export.runtime.llamacpp import open_llama

    llm = open_llama(path, n_ctx=prefill + decode + 8, n_batch=prefill, n_threads=threads,
                     n_threads_batch=threads, logits_all=False, verbose=False)
    llm.eval(tokens[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens[:prefill])
    t1 = time.perf_counter()
    for tok in tokens[prefill : prefill + decode]:  # teacher-forced: same work as sampling one token
        llm.eval([tok])
    t2 = time.perf_counter()
    llm.close()
    return prefill / (t1 - t0), decode / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--out", default="results/gguf")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/putri-export/work/gguf_smollm2"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    dense_dir = ensure_builtin_model("smollm2-135m")
    model, tok = load_model(dense_dir)
    n_layers = model.config.num_hidden_layers
    pruned_dir = work / "random-width-0.5"
    if not pruned_dir.exists():
        slice_randomly(model, [2 if i % 2 == 0 else 1 for i in range(n_layers)], [768] * n_layers, seed=0)
        save_checkpoint(model, tok, pruned_dir, source_dir=dense_dir)
    models = {"dense": dense_dir, "random-width-0.5": pruned_dir}

    rows, export_times = [], []
    for label, folder in models.items():
        m, _ = load_model(folder)
        counts = param_counts(m)
        for type_name in ("f16", "q8_0"):
            path = work / f"{label}-{type_name}.gguf"
            times = []
            for _ in range(args.repeats if (label, type_name) == ("dense", "f16") else 1):
                path.unlink(missing_ok=True)
                t0 = time.perf_counter()
                with torch.no_grad():
                    write_gguf(m, folder, path, type_name, progress=False)
                times.append(time.perf_counter() - t0)
            if (label, type_name) == ("dense", "f16"):
                export_times = times
            report = verify_artifact(path, folder, ParityCheck(data="wikitext2", seq_len=512, max_windows=args.windows),
                                     threads=args.threads, progress=False)
            print(report.summary(), flush=True)
            rows.append({"model": label, "type": type_name, "file_bytes": path.stat().st_size,
                         "block_params": counts.blocks, "total_params": counts.total,
                         "ppl_llama_cpp": report.ppl_runtime, "ppl_torch": report.ppl_torch,
                         "ppl_rel_diff": report.ppl_rel_diff, "max_abs_logit_diff": report.max_abs_logit_diff,
                         "greedy_agreement": report.greedy_agreement, "passed": report.passed,
                         "export_s": statistics.median(times), "path": str(path)})

    ids = tokenize_corpus(tok, load_corpus("wikitext2")).tolist()
    speeds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # interleaved so drifts of the shared machine hit both models alike
        for row in rows:
            speeds.setdefault((row["model"], row["type"]), []).append(
                llama_speed(Path(row["path"]), ids, args.prefill, args.decode, args.threads))
    for row in rows:
        s = speeds[(row["model"], row["type"])]
        row["prefill_tok_s"] = statistics.median(p for p, _ in s)
        row["decode_tok_s"] = statistics.median(d for _, d in s)

    meta = {"command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "threads": args.threads,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
            "data": f"WikiText-2 raw test, {args.windows} × 512-token windows", "repeats": args.repeats,
            "prefill_tokens": args.prefill, "decode_tokens": args.decode,
            "export_f16_dense_s": export_times, "export_f16_dense_median_s": statistics.median(export_times)}
    (out / "smollm2.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# GGUF on SmolLM2-135M\n", f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}, "
             f"{args.threads} threads. Perplexity: {meta['data']}. Speed: llama.cpp (llama-cpp-python), "
             f"prefill {args.prefill} tokens, decode {args.decode} tokens, median of {args.repeats} interleaved "
             "runs, F16 KV cache.\n",
             f"Export time F16 (dense): median {meta['export_f16_dense_median_s']:.2f} s of "
             f"{[round(t, 2) for t in export_times]}\n",
             "| model | type | file MB | block params | ppl llama.cpp | ppl torch | Δ | prefill tok/s | decode tok/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['type']} | {r['file_bytes'] / 1e6:.1f} | {r['block_params']:,} | "
                     f"{r['ppl_llama_cpp']:.3f} | {r['ppl_torch']:.3f} | {r['ppl_rel_diff']:+.2%} | "
                     f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |")
    for type_name in ("f16", "q8_0"):
        d = next(r for r in rows if r["model"] == "dense" and r["type"] == type_name)
        p = next(r for r in rows if r["model"] != "dense" and r["type"] == type_name)
        lines.append(f"\n{type_name}: decode speed-up pruned/dense {p['decode_tok_s'] / d['decode_tok_s']:.2f}× "
                     f"(file-bytes ratio {d['file_bytes'] / p['file_bytes']:.2f}×), prefill "
                     f"{p['prefill_tok_s'] / d['prefill_tok_s']:.2f}×")
    lines.append("\nrandom-width-0.5 is a random slice (no pruning criterion): its perplexity only checks "
                 "export parity, not quality.")
    (out / "smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
