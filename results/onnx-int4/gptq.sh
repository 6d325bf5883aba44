#!/usr/bin/env bash
# ONNX int4 with GPTQ (the default since it was added) beside plain rounding and int8, SmolLM2-135M dense and Putri 0.5.
# Exports with the CLI (GPTQ from 32 × 512 calibration windows of wikitext2:valid,tinystories:train, verified in ONNX
# Runtime), then perplexity on 16 × 512 windows of WikiText-2 raw test and TinyStories validation, and decode/prefill
# at depth 0 (128-token prompt, 32 decoded, 3 repeats, fresh process each) for gptq, gptq-sym, rtn and int8.
# Usage: bash results/onnx-int4/gptq.sh PRUNED_HF_DIR RTN_WORK_DIR WORK_DIR [THREADS]
#   RTN_WORK_DIR: run.sh's WORK_DIR (its {dense,pruned}-int8 and -int4-rtn folders)
set -euo pipefail
cd "$(dirname "$0")/../.."
PRUNED=$1; RTN=$2; WORK=$3; T=${4:-2}
P=.venv/bin/putri-export
mkdir -p "$WORK"
for m in dense pruned; do
  src=smollm2-135m; [ $m = pruned ] && src=$PRUNED
  for meth in gptq gptq-sym; do
    [ -d "$WORK/$m-int4-$meth" ] || /usr/bin/time -v $P export onnx $src --quantize int4 --int4-method $meth \
      --threads $T --out "$WORK/$m-int4-$meth" > "$WORK/$m-int4-$meth.log" 2>&1
    for d in wikitext2 tinystories; do
      [ -f "$WORK/$m-int4-$meth-$d.json" ] || $P eval "$WORK/$m-int4-$meth" --data $d --seq-len 512 --max-windows 16 \
        --threads $T --json "$WORK/$m-int4-$meth-$d.json" > /dev/null 2>&1
    done
  done
done
for v in int4-gptq int4-gptq-sym; do
  $P bench "$WORK/dense-$v" "$WORK/pruned-$v" --backend onnxruntime --threads $T --prompt-tokens 128 \
    --gen-tokens 32 --depths 0 --repeats 3 --out results/onnx-int4/bench-$v
done
for v in int4-rtn int8; do  # re-measured in the same run, for the speed comparison
  $P bench "$RTN/dense-$v" "$RTN/pruned-$v" --backend onnxruntime --threads $T --prompt-tokens 128 \
    --gen-tokens 32 --depths 0 --repeats 3 --out results/onnx-int4/bench-$v
done
