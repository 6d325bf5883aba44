#!/usr/bin/env bash
# SmolLM2-135M dense vs Putri 0.5: export every artifact, then benchmark each runtime (2 threads,
# depths 0/512/2048, fresh process per configuration) into results/bench/. Re-runnable: artifacts
# that exist are reused. Usage: tools/bench_smollm2.sh [WORK_DIR] (default /tmp/putri-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
WORK=${1:-/tmp/putri-bench}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}
DEPTHS=${DEPTHS:-0,512,2048}
mkdir -p "$WORK"
PRUNED=$WORK/putri05
[ -d "$PRUNED" ] || putri-export prune smollm2-135m --sparsity 0.5 --out "$PRUNED" --threads "$THREADS"
DENSE=$(python -c "from putri_export.model.assets import resolve_model; print(resolve_model('smollm2-135m').path)")
for name in dense putri05; do
  src=$DENSE; [ $name = putri05 ] && src=$PRUNED
  for t in q8_0 f16; do
    [ -f "$WORK/$name-$t.gguf" ] || putri-export export gguf "$src" --out "$WORK/$name-$t.gguf" --type "$t"
  done
  for q in none int8 int4; do
    [ -d "$WORK/$name-onnx-$q" ] || putri-export export onnx "$src" --out "$WORK/$name-onnx-$q" --quantize "$q"
  done
done
OUT=results/bench
COMMON=(--threads "$THREADS" --prompt-tokens 128 --gen-tokens 64 --depths "$DEPTHS" --repeats "$REPEATS")
for t in q8_0 f16; do
  putri-export bench "$WORK/dense-$t.gguf" "$WORK/putri05-$t.gguf" --backend llama.cpp "${COMMON[@]}" --out "$OUT/llamacpp-$t"
done
for q in none int8 int4; do
  putri-export bench "$WORK/dense-onnx-$q" "$WORK/putri05-onnx-$q" --backend onnxruntime "${COMMON[@]}" --out "$OUT/ort-$q"
done
putri-export bench "$DENSE" "$PRUNED" --backend torch "${COMMON[@]}" --out "$OUT/torch-fp32"
putri-export bench-merge "$OUT"/*/bench.json --out "$OUT/README.md"
