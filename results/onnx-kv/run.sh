#!/usr/bin/env bash
# ONNX decode with the KV cache written in place (GroupQueryAttention) vs concatenated (standard ops), and llama.cpp,
# SmolLM2-135M dense vs Putri 0.5, depths 0/512/2048/8032 (8032 + 128 prompt + 32 decoded = 8,192 positions, the
# model's whole context). Usage: results/onnx-kv/run.sh PRUNED_HF_FOLDER WORK_DIR [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
PRUNED=$1; WORK=$2; THREADS=${3:-2}
PX=.venv/bin/putri-export
mkdir -p "$WORK"
for name in dense pruned; do
  src=smollm2-135m; [ $name = pruned ] && src=$PRUNED
  for attention in gqa standard; do
    [ -d "$WORK/$name-onnx-$attention" ] || $PX export onnx $src --out "$WORK/$name-onnx-$attention" --attention $attention --threads "$THREADS"
  done
  [ -d "$WORK/$name-onnx-int8" ] || $PX export onnx $src --out "$WORK/$name-onnx-int8" --quantize int8 --threads "$THREADS"
  [ -f "$WORK/$name-q8_0.gguf" ] || $PX export gguf $src --out "$WORK/$name-q8_0.gguf" --type q8_0 --threads "$THREADS"
done
OUT=results/onnx-kv
COMMON=(--threads "$THREADS" --prompt-tokens 128 --gen-tokens 32 --depths 0,512,2048,8032 --repeats 3)
for v in onnx-standard onnx-gqa onnx-int8; do
  $PX bench "$WORK/dense-$v" "$WORK/pruned-$v" --backend onnxruntime "${COMMON[@]}" --out "$OUT/ort-${v#onnx-}"
done
$PX bench "$WORK/dense-q8_0.gguf" "$WORK/pruned-q8_0.gguf" --backend llama.cpp "${COMMON[@]}" --out "$OUT/llamacpp-q8_0"
$PX bench-merge "$OUT"/*/bench.json --out "$OUT/README.md"
