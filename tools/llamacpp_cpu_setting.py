"""llama.cpp's extra CPU buffer types on vs off, same run: the cost of the AMX-safe setting (issue: AMX crash).

    .venv/bin/python tools/llamacpp_cpu_setting.py DENSE.gguf PRUNED.gguf ... --threads 2 --rounds 5 \\
        --out results/llamacpp-cpu

Each (file, setting) is one fresh benchmark process (``putri-export bench``'s worker: 1 warm-up, ``--repeats``
timed prefill + decode runs, depth 0); settings alternate inside every round so both see the same machine
state, and the table gives the median over rounds of each process's median. ``off`` is what putri-export
loads with where ggml offers its AMX buffer type (``use_extra_bufts = false``); ``on`` is llama.cpp's default,
which is also what a wheel built without AMX gives on any CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from putri_export.bench import BenchConfig, measure
from putri_export.runtime.llamacpp import EXTRA_BUFTS_ENV, cpu_extra_buffer_types, cpu_has_amx


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


REPACK_PROBE = """
import sys
from putri_export.runtime.llamacpp import open_llama
open_llama(sys.argv[1], n_ctx=64, verbose=True).close()
"""


def repacked_tensors(path: str) -> int:
    """How many weight tensors llama.cpp re-lays into its CPU_REPACK buffer (from its own load log)."""
    env = dict(os.environ, **{EXTRA_BUFTS_ENV: "on"})
    proc = subprocess.run([sys.executable, "-c", REPACK_PROBE, path], capture_output=True, text=True, env=env)
    return sum("repack: repack tensor" in line for line in proc.stderr.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="GGUF files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--out", default="results/llamacpp-cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import llama_cpp

    machine = {"cpu": cpu_model(), "amx": cpu_has_amx(), "extra_buffer_types": cpu_extra_buffer_types(),
               "cpus": os.cpu_count(), "platform": platform.platform(), "llama_cpp_python": llama_cpp.__version__,
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()}
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for f in args.files:
            for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
                os.environ[EXTRA_BUFTS_ENV] = setting
                cfg = BenchConfig("llama.cpp", f, args.threads, args.prompt_tokens, args.gen_tokens, 0, args.repeats)
                result = measure(cfg)
                runs.setdefault((f, setting), []).append(result)
                print(f"round {r + 1}/{args.rounds} {Path(f).name} {setting}: prefill "
                      f"{result['prefill_tps']['median']:.1f} decode {result['decode_tps']['median']:.1f} tok/s",
                      flush=True)
    rows = []
    for f in args.files:
        row = {"file": Path(f).name, "bytes": Path(f).stat().st_size, "repacked_tensors": repacked_tensors(f)}
        for setting in ("on", "off"):
            for metric in ("prefill_tps", "decode_tps"):
                values = [x[metric]["median"] for x in runs[(f, setting)]]
                row[f"{metric}_{setting}"] = statistics.median(values)
                row[f"{metric}_{setting}_all"] = values
        rows.append(row)
    command = "tools/llamacpp_cpu_setting.py " + " ".join(
        [*[Path(f).name for f in args.files], f"--threads {args.threads} --rounds {args.rounds} --repeats "
         f"{args.repeats} --prompt-tokens {args.prompt_tokens} --gen-tokens {args.gen_tokens}"])
    record = {"command": command, "machine": machine, "threads": args.threads, "rounds": args.rounds,
              "repeats": args.repeats, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    (out / "extra_bufts.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# llama.cpp extra CPU buffer types: on (llama.cpp's default) vs off (putri-export where AMX is offered)", "",
        f"`{command}`", "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, AMX: {'yes' if machine['amx'] else 'no'}; ggml's CPU "
        f"extra buffer types here: {machine['extra_buffer_types']}; llama-cpp-python {machine['llama_cpp_python']}; "
        f"commit {machine['commit']}; {args.threads} threads; {record['date']}.", "",
        f"Median over {args.rounds} rounds (settings alternating) of each fresh process's median of {args.repeats} "
        f"runs after 1 warm-up; prompt {args.prompt_tokens} tokens, {args.gen_tokens} decoded, depth 0.", "",
        "| file | MB | tensors repacked (on) | prefill tok/s on | prefill tok/s off | off/on | decode tok/s on | "
        "decode tok/s off | off/on |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['file']} | {row['bytes'] / 1e6:.1f} | {row['repacked_tensors']} | "
                     f"{row['prefill_tps_on']:.1f} | "
                     f"{row['prefill_tps_off']:.1f} | {row['prefill_tps_off'] / row['prefill_tps_on']:.3f} | "
                     f"{row['decode_tps_on']:.1f} | {row['decode_tps_off']:.1f} | "
                     f"{row['decode_tps_off'] / row['decode_tps_on']:.3f} |")
    (out / "extra_bufts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
