"""The ``putri-export bench`` sweep in the style of llama-bench: prefill and decode at context depths.

Every (model, backend, depth) configuration runs in a fresh child process (``bench/worker.py``) so its peak
RSS and load time are its own, and a runtime crash there is an error here. Inside: load, one warm-up, then
``repeats`` times: reset the cache, fill ``depth`` context tokens (untimed), prefill ``prompt_tokens`` (time to
first token = that prefill plus picking the first token), decode ``gen_tokens`` greedily one at a time. Token
ids are a fixed pseudo-random sequence: speed does not depend on the text, and no data set is needed on a
device. The first model is the reference (the dense parent); every other model is compared with it per depth:
measured decode speed-up beside the bytes-ratio limit, bytes(reference weights) / bytes(model weights), the
ideal speed-up of memory-bound CPU decoding, and the depth-aware limit, which adds the KV cache each decoded token
reads (bytes per token × the mean cache length while decoding). Each model's decode speed at a depth is also given
as a fraction of its depth-0 speed. Outputs: JSON, CSV, Markdown, PNG.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_atomic
from ..errors import PutriError
from .facts import BACKENDS, KV_DTYPE_BYTES, kv_bytes_per_token, model_facts
from .worker import BenchConfig  # the worker module is import-light on purpose


def measure(cfg: BenchConfig, timeout: float | None = None) -> dict:
    """Run one configuration in a fresh child process and return its JSON result.

    The worker imports no torch/transformers for llama.cpp and ONNX Runtime, so its peak RSS is the runtime's
    own; a crash of the runtime there is a clear error here.
    """
    from ..runtime.process import RuntimeCrashed, child_environment, crash_message

    env = dict(child_environment(), OMP_NUM_THREADS=str(cfg.threads))
    proc = subprocess.run([sys.executable, "-m", "putri_export.bench.worker", json.dumps(asdict(cfg))],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode < 0:
        raise RuntimeCrashed(crash_message(cfg.backend, cfg.model, f"benchmarking (depth {cfg.depth})",
                                       proc.returncode, proc.stderr))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PutriError(f"benchmark of {cfg.model} ({cfg.backend}, depth {cfg.depth}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_arguments(models: list[str], backend: str, depths: list[int], prompt_tokens: int, gen_tokens: int,
                    repeats: int, threads: int) -> list[dict]:
    if backend not in BACKENDS:
        raise PutriError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not models:
        raise PutriError("give at least one model")
    if prompt_tokens < 1 or gen_tokens < 0 or repeats < 1 or threads < 1:
        raise PutriError("prompt-tokens, repeats and threads must be >= 1 and gen-tokens >= 0")
    if any(d < 0 for d in depths):
        raise PutriError(f"depths must be >= 0, got {depths}")
    facts = []
    for m in models:
        f = model_facts(m, backend)
        need = max(depths) + prompt_tokens + gen_tokens
        if f["context"] and need > f["context"]:
            raise PutriError(f"depth {max(depths)} + {prompt_tokens} prompt + {gen_tokens} generated tokens = {need} "
                             f"exceeds the context of {m} ({f['context']} tokens); lower --depths or --max-depth")
        facts.append(f)
    return facts


def run_sweep(models: list[str], backend: str, threads: int, prompt_tokens: int, gen_tokens: int,
              depths: list[int], repeats: int, out: Path, device_label: str | None = None,
              progress: bool = True, command: str | None = None) -> dict:
    """Measure every (model, depth); results are written after each one, so Ctrl-C keeps what finished."""
    facts = check_arguments(models, backend, depths, prompt_tokens, gen_tokens, repeats, threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"backend": backend, "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
              "depths": depths, "repeats": repeats, "device_label": device_label or platform.node(),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "models": [], "results": []}
    for m, f in zip(models, facts):
        kv_tok = kv_bytes_per_token(f["kv_heads"], f["head_dim"], KV_DTYPE_BYTES[backend])
        report["models"].append({"model": str(m), **f, "kv_bytes_per_token": kv_tok,
                                 "kv_dtype_bytes": KV_DTYPE_BYTES[backend]})
    configs = [(i, d) for i in range(len(models)) for d in depths]
    bar = tqdm(configs, desc=f"bench {backend}", unit="config", disable=not progress)
    try:
        for i, depth in bar:
            bar.set_postfix(model=Path(models[i]).name, depth=depth)
            cfg = BenchConfig(backend, str(models[i]), threads, prompt_tokens, gen_tokens, depth, repeats)
            result = measure(cfg)
            info = report["models"][i]
            if result["kv_runtime_bytes"] is not None:
                result["kv_runtime_bytes_per_token"] = result["kv_runtime_bytes"] / result["kv_runtime_tokens"]
                result["kv_formula_matches_runtime"] = abs(
                    result["kv_runtime_bytes_per_token"] - info["kv_bytes_per_token"]) < 1e-6
            report["results"].append({"model": str(models[i]), "depth": depth, **result})
            write_outputs(report, out)
    except KeyboardInterrupt:
        report["interrupted"] = True
        write_outputs(report, out)
        raise
    return report


def _compare(report: dict) -> list[dict]:
    """Each model vs the first, per depth: measured decode/prefill speed-up and the bytes-ratio limit."""
    rows = []
    if len(report["models"]) < 2:
        return rows
    ref = report["models"][0]
    by = {(r["model"], r["depth"]): r for r in report["results"]}
    for m in report["models"][1:]:
        for d in report["depths"]:
            a, b = by.get((ref["model"], d)), by.get((m["model"], d))
            if not a or not b:
                continue
            limit = ref["weight_bytes"] / m["weight_bytes"]
            cached = mean_cache_length(report, d)
            depth_limit = ((ref["weight_bytes"] + ref["kv_bytes_per_token"] * cached)
                           / (m["weight_bytes"] + m["kv_bytes_per_token"] * cached))
            speedup = b["decode_tps"]["median"] / a["decode_tps"]["median"] if a["decode_tps"]["median"] else None
            rows.append({"model": m["model"], "reference": ref["model"], "depth": d,
                         "decode_speedup": speedup,
                         "prefill_speedup": b["prefill_tps"]["median"] / a["prefill_tps"]["median"],
                         "bytes_ratio_limit": limit,
                         "speedup_over_limit": speedup / limit if speedup else None,
                         "depth_bytes_limit": depth_limit,
                         "speedup_over_depth_limit": speedup / depth_limit if speedup else None,
                         "rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"]})
    return rows


def mean_cache_length(report: dict, depth: int) -> float:
    """Cached positions each decoded token attends to, on average: the depth, the prompt, half the decoded."""
    return depth + report["prompt_tokens"] + report["gen_tokens"] / 2


def depth_retention(report: dict, result: dict) -> float | None:
    """Decode speed at ``result``'s depth ÷ the same model's at depth 0 (None without a depth-0 run)."""
    base = next((r for r in report["results"] if r["model"] == result["model"] and r["depth"] == 0), None)
    if base is None or not base["decode_tps"]["median"]:
        return None
    return result["decode_tps"]["median"] / base["decode_tps"]["median"]


def write_outputs(report: dict, out: Path) -> None:
    report["comparison"] = _compare(report)
    write_atomic(out / "bench.json", json.dumps(report, indent=2) + "\n")
    fields = ["device", "backend", "model", "depth", "threads", "prompt_tokens", "gen_tokens", "repeats",
              "ttft_s_median", "prefill_tps_median", "prefill_tps_sd", "decode_tps_median", "decode_tps_sd",
              "peak_rss_mb", "load_s", "file_bytes", "kv_bytes_per_token", "kv_runtime_bytes_per_token"]
    models = {m["model"]: m for m in report["models"]}
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in report["results"]:
            m = models[r["model"]]
            w.writerow([report["device_label"], report["backend"], r["model"], r["depth"], report["threads"],
                        report["prompt_tokens"], report["gen_tokens"], report["repeats"],
                        f"{r['ttft_s']['median']:.4f}", f"{r['prefill_tps']['median']:.2f}",
                        f"{r['prefill_tps']['sd']:.2f}", f"{r['decode_tps']['median']:.2f}",
                        f"{r['decode_tps']['sd']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['load_s']:.3f}",
                        m["file_bytes"], m["kv_bytes_per_token"], r.get("kv_runtime_bytes_per_token", "")])
    (out / "bench.md").write_text(markdown(report))
    plot(report, out)


def markdown(report: dict) -> str:
    lines = [f"# Benchmark: {report['backend']} on {report['device_label']}", "",
             f"{report['machine']['platform']}, {report['machine']['cpus']} CPUs; {report['threads']} threads; "
             f"prompt {report['prompt_tokens']} tokens, {report['gen_tokens']} generated, {report['repeats']} "
             f"repeats after 1 warm-up, each configuration in a fresh process. Medians ± sd.", "",
             *([f"Command: `{report['command']}`", ""] if report.get("command") else []),
             "| model | file MB | KV B/token | depth | TTFT s | prefill tok/s | decode tok/s | decode ÷ depth 0 | "
             "peak RSS MB | load s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    models = {m["model"]: m for m in report["models"]}
    for r in report["results"]:
        m = models[r["model"]]
        retained = depth_retention(report, r)
        lines.append(f"| {Path(r['model']).name} | {m['file_bytes'] / 1e6:.1f} | {m['kv_bytes_per_token']:,} | "
                     f"{r['depth']} | {r['ttft_s']['median']:.4f} | {r['prefill_tps']['median']:.1f} ± "
                     f"{r['prefill_tps']['sd']:.1f} | {r['decode_tps']['median']:.1f} ± {r['decode_tps']['sd']:.1f} | "
                     f"{'' if retained is None else f'{retained:.2f}'} | {r['peak_rss_mb']:.0f} | {r['load_s']:.2f} |")
    if report["comparison"]:
        lines += ["", "Versus the first model (same run):", "",
                  "| model | depth | decode speed-up | bytes-ratio limit | speed-up / limit | depth-aware limit "
                  "(weights + KV) | speed-up / depth-aware limit | prefill speed-up | RSS ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in report["comparison"]:
            lines.append(f"| {Path(c['model']).name} | {c['depth']} | {c['decode_speedup']:.2f}× | "
                         f"{c['bytes_ratio_limit']:.2f}× | {c['speedup_over_limit']:.2f} | "
                         f"{c['depth_bytes_limit']:.2f}× | {c['speedup_over_depth_limit']:.2f} | "
                         f"{c['prefill_speedup']:.2f}× | {c['rss_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m in report["models"]:
        rows = sorted((r for r in report["results"] if r["model"] == m["model"]), key=lambda r: r["depth"])
        if not rows:
            continue
        depths = [r["depth"] for r in rows]
        name = Path(m["model"]).name
        axes[0].errorbar(depths, [r["decode_tps"]["median"] for r in rows],
                         yerr=[r["decode_tps"]["sd"] for r in rows], marker="o", label=f"{name} decode")
        axes[0].plot(depths, [r["prefill_tps"]["median"] for r in rows], ls="--", marker="x", label=f"{name} prefill")
        axes[1].plot(depths, [r["peak_rss_mb"] for r in rows], marker="o", label=name)
    axes[0].set(xlabel="context depth (tokens)", ylabel="tokens/s", title="speed vs depth", yscale="log")
    axes[1].set(xlabel="context depth (tokens)", ylabel="peak RSS (MB)", title="memory vs depth")
    comp = report["comparison"]
    if comp:
        for name in dict.fromkeys(c["model"] for c in comp):
            rows = [c for c in comp if c["model"] == name]
            axes[2].plot([c["depth"] for c in rows], [c["decode_speedup"] for c in rows], marker="o",
                         label=f"{Path(name).name} measured")
            axes[2].plot([c["depth"] for c in rows], [c["bytes_ratio_limit"] for c in rows], ls="--",
                         label=f"{Path(name).name} bytes-ratio limit")
            axes[2].plot([c["depth"] for c in rows], [c["depth_bytes_limit"] for c in rows], ls=":",
                         label=f"{Path(name).name} depth-aware limit")
    axes[2].set(xlabel="context depth (tokens)", ylabel="decode speed-up vs first model", title="speed-up vs limit")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{report['backend']}, {report['threads']} threads, {report['device_label']}")
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)


def merge(reports: list[Path], out: Path) -> Path:
    """Concatenate bench.json files (e.g. brought back from devices) into one Markdown report."""
    parts = ["# Merged benchmark report", ""]
    for path in reports:
        report = json.loads(Path(path).read_text())
        parts.append(markdown(report).replace("# Benchmark:", "## Benchmark:"))
    out = Path(out)
    out.write_text("\n".join(parts))
    return out

