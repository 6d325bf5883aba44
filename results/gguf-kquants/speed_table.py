"""One table from results/gguf-kquants/speed-*/bench.json: per GGUF type and depth, dense vs Putri 0.5 in llama.cpp."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
print("| type | depth | dense MB | pruned MB | dense decode tok/s | pruned decode tok/s | decode speed-up | "
      "bytes-ratio limit | depth-aware limit | speed-up / depth-aware limit | prefill speed-up |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for path in sorted(root.glob("speed-*/bench.json"), key=lambda p: p.stat().st_mtime):
    report = json.loads(path.read_text())
    dense, pruned = report["models"]
    by = {(r["model"], r["depth"]): r for r in report["results"]}
    for c in report["comparison"]:
        d = c["depth"]
        print(f"| {path.parent.name.removeprefix('speed-')} | {d} | {dense['file_bytes'] / 2**20:.1f} | "
              f"{pruned['file_bytes'] / 2**20:.1f} | {by[(dense['model'], d)]['decode_tps']['median']:.1f} | "
              f"{by[(pruned['model'], d)]['decode_tps']['median']:.1f} | {c['decode_speedup']:.2f}× | "
              f"{c['bytes_ratio_limit']:.2f}× | {c['depth_bytes_limit']:.2f}× | {c['speedup_over_depth_limit']:.2f} | "
              f"{c['prefill_speedup']:.2f}× |")
