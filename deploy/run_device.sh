#!/usr/bin/env bash
# Run the putri-export benchmark on a device (Linux ARM board, laptop) and leave JSON to bring back.
#
#   deploy/run_device.sh LABEL DENSE PRUNED [extra putri-export bench arguments]
#
# DENSE/PRUNED: .gguf files (llama.cpp backend) or exported ONNX folders (onnxruntime backend); the
# backend is chosen from what you give. Installs a benchmark-only venv (no torch/transformers): the
# runtimes, numpy, gguf, matplotlib, and this repository without its heavy dependencies.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 LABEL DENSE PRUNED [bench args...]" >&2
  exit 2
fi
label=$1 dense=$2 pruned=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${PUTRI_BENCH_VENV:-$HOME/.putri-bench-venv}
if [ ! -x "$venv/bin/putri-export" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy tqdm gguf matplotlib onnx onnxruntime llama-cpp-python
  "$venv/bin/pip" install --quiet --no-deps -e "$repo"
fi
case "$dense" in
  *.gguf) backend=llama.cpp ;;
  *) backend=onnxruntime ;;
esac
threads=${THREADS:-$(nproc)}
out="$repo/results/devices/$label-$backend"
"$venv/bin/putri-export" bench "$dense" "$pruned" --backend "$backend" --threads "$threads" \
  --device-label "$label" --out "$out" "$@"
echo "bring back: $out/bench.json (then: putri-export bench-merge results/devices/*/bench.json --out results/devices/report.md)"
