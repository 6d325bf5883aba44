"""Run a command and report the peak of the summed resident memory of it and all its descendants.

``/usr/bin/time -v`` reports the largest single process; a verification runs the artifact's runtime in a child
process (llama.cpp / ONNX Runtime) beside the PyTorch reference, and both are alive at once. This samples
``/proc/<pid>/status`` (VmRSS) of the whole process tree every ``--interval`` seconds.

Usage: python tools/tree_rss.py [--interval 0.2] [--json FILE] -- COMMAND ARGS...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> tuple[int, dict[int, int]]:
    seen, stack, each = set(), [root], {}
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        each[pid] = _rss_kb(pid)
        stack += _children(pid)
    return sum(each.values()), each


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--json", help="write {command, seconds, peak_tree_rss_mb, peak_single_rss_mb, exit} here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_tree = peak_single = 0
    while proc.poll() is None:
        total, each = tree_rss_kb(proc.pid)
        peak_tree, peak_single = max(peak_tree, total), max(peak_single, max(each.values(), default=0))
        time.sleep(args.interval)
    result = {"command": command, "seconds": round(time.perf_counter() - start, 1),
              "peak_tree_rss_mb": round(peak_tree / 1024), "peak_single_rss_mb": round(peak_single / 1024),
              "exit": proc.returncode}
    print(json.dumps(result), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
