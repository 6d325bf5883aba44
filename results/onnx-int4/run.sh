#!/usr/bin/env bash
# ONNX int4 vs int8, SmolLM2-135M dense and Putri 0.5: int4 symmetric round to nearest (the default) and HQQ
# (tools/onnx_int4.py, from the fp32 GroupQueryAttention export), perplexity in ONNX Runtime on 16 × 512 windows of WikiText-2 test and TinyStories
# validation, and decode/prefill speed at depth 0 (128-token prompt, 32 decoded, 3 repeats, fresh process each).
# Usage: bash results/onnx-int4/run.sh DENSE_FP32_ONNX PRUNED_FP32_ONNX WORK_DIR [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DENSE=$1; PRUNED=$2; WORK=$3; T=${4:-2}
P=.venv/bin/putri-export
mkdir -p "$WORK"
.venv/bin/python tools/onnx_int4.py "$DENSE" "$WORK/dense" int8 rtn hqq
.venv/bin/python tools/onnx_int4.py "$PRUNED" "$WORK/pruned" int8 rtn hqq
for v in int8 int4-rtn int4-hqq; do
  for m in dense pruned; do
    for d in wikitext2 tinystories; do
      [ -f "$WORK/$m-$v-$d.json" ] || $P eval "$WORK/$m-$v" --data $d --seq-len 512 --max-windows 16 --threads $T \
        --json "$WORK/$m-$v-$d.json" > /dev/null 2>&1
    done
  done
  $P bench "$WORK/dense-$v" "$WORK/pruned-$v" --backend onnxruntime --threads $T --prompt-tokens 128 \
    --gen-tokens 32 --depths 0 --repeats 3 --out results/onnx-int4/bench-$v
done
