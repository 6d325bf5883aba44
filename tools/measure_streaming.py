"""Measure streamed pruning and evaluation of a large-shape model: wall time and peak RSS of each command.

    python tools/measure_streaming.py --shape llama-3.2-1b --device cpu --work /tmp/stream --out results/streaming/cpu

Builds the random-weight model with tools/synthetic_model.py (bf16) unless it exists, then runs the CLI as separate
processes (peak RSS from the kernel's rusage of each child, like /usr/bin/time -v): prune at --sparsity, streamed,
with local attention scoring; eval of the dense and the pruned model; with --loss, also the in-memory prune with
loss-scored attention (the paper's mode, for a GPU). Writes measurements.json and measurements.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from llamacpp_cpu_setting import cpu_model  # tools/ is on the path of a script run from it

from putri_export.runtime.llamacpp import cpu_has_amx

REPO = Path(__file__).resolve().parents[1]


def run(name: str, args: list[str], log_dir: Path) -> dict:
    """One CLI command in a fresh process: wall seconds, peak RSS (MB), exit code."""
    cmd = [sys.executable, "-m", "putri_export.cli", *args]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", HF_HUB_OFFLINE="1")
    log = log_dir / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    tail = log.read_text().replace("\r", "\n").strip().splitlines()[-1:] if log.exists() else []
    record = {"step": name, "command": "putri-export " + " ".join(args), "exit": code, "wall_s": round(wall, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "last_line": tail[0] if tail else ""}
    print(json.dumps(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-3.2-1b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sparsity", default="0.5")
    p.add_argument("--calib-samples", default="8")
    p.add_argument("--calib-len", default="256")
    p.add_argument("--eval-windows", default="8")
    p.add_argument("--threads", default=None)
    p.add_argument("--loss", action="store_true", help="also prune in memory with loss-scored attention")
    p.add_argument("--work", required=True, help="where the model and the pruned checkpoints go")
    p.add_argument("--out", required=True, help="folder for measurements.json / .md")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    dense = work / args.shape
    if not (dense / "config.json").exists():
        subprocess.run([sys.executable, str(REPO / "tools" / "synthetic_model.py"), "--shape", args.shape, "--out",
                        str(dense)], check=True)
    threads = ["--threads", args.threads] if args.threads else []
    common = ["--device", args.device, "--dtype", args.dtype]
    calib = ["--calib-samples", args.calib_samples, "--calib-len", args.calib_len]
    ev = ["--data", "wikitext2", "--seq-len", "512", "--max-windows", args.eval_windows, *common, *threads]
    records = []
    pruned = work / f"{args.shape}-pruned-streamed"
    records.append(run("prune-streamed-local", ["prune", str(dense), "--sparsity", args.sparsity, *calib, *common,
                                                "--streaming", "on", "--attn-scoring", "local", "--out",
                                                str(pruned), "--overwrite", *threads], out))
    if args.loss:
        records.append(run("prune-in-memory-loss", ["prune", str(dense), "--sparsity", args.sparsity, *calib,
                                                    *common, "--streaming", "off", "--attn-scoring", "loss",
                                                    "--out", str(work / f"{args.shape}-pruned-loss"), "--overwrite",
                                                    *threads], out))
    records.append(run("eval-dense-streamed", ["eval", str(dense), *ev, "--streaming", "on"], out))
    records.append(run("eval-pruned-streamed", ["eval", str(pruned), *ev, "--streaming", "on"], out))
    for r in records:
        report = {"prune-streamed-local": pruned / "pruning_report.json",
                  "prune-in-memory-loss": work / f"{args.shape}-pruned-loss" / "pruning_report.json"}.get(r["step"])
        if report is not None and report.is_file():
            data = json.loads(report.read_text())
            r.update({k: data.get(k) for k in ("prune_seconds", "peak_device_memory_mb", "sparsity_blocks",
                                                "device", "dtype", "streamed")})
    size = sum(f.stat().st_size for f in dense.glob("*.safetensors"))
    machine = {"cpu": cpu_model(), "amx": cpu_has_amx(), "cores": os.cpu_count(), "python": platform.python_version(),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=REPO).stdout.strip() or "unknown"}
    try:
        import torch

        machine["torch"] = torch.__version__
        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    result = {"shape": args.shape, "checkpoint_bytes_bf16": size, "fp32_bytes": size * 2, "machine": machine,
              "settings": vars(args), "steps": records}
    (out / "measurements.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.shape} (random weights), {args.device}, {args.dtype}", "",
             f"Machine: {machine}", "", f"fp32 size {size * 2 / 2**20:.0f} MB (bf16 checkpoint {size / 2**20:.0f} MB); "
             f"0.5 x fp32 = {size / 2**20:.0f} MB (MB = MiB throughout, as ru_maxrss)", "",
             "| step | wall (s) | peak RSS (MB) | peak RSS / fp32 size | GPU peak (MB) | exit | command |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in records:
        gpu = r.get("peak_device_memory_mb")
        share = r["peak_rss_mb"] * 2**20 / (size * 2)
        lines.append(f"| {r['step']} | {r['wall_s']} | {r['peak_rss_mb']} | {share:.3f} "
                     f"| {'' if gpu is None else round(gpu)} | {r['exit']} | `{r['command']}` |")
    lines += ["", "Last line of each command:", ""] + [f"- {r['step']}: `{r['last_line']}`" for r in records]
    (out / "measurements.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["exit"] == 0 for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
