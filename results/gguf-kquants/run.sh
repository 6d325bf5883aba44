#!/usr/bin/env bash
# GGUF K-quants / i-quants through llama.cpp's quantizer, with and without an importance matrix, for SmolLM2-135M
# dense and Putri 0.5: size, then perplexity in llama.cpp on 16 × 512-token windows of WikiText-2 test (the export's
# verification, against the PyTorch fp32 model on the same windows) and TinyStories validation (eval).
# Usage: bash results/gguf-kquants/run.sh PRUNED_DIR OUT_DIR [THREADS]
#   PRUNED_DIR: e.g. `putri-export prune smollm2-135m --sparsity 0.5 --out DIR` (the default Putri run)
set -euo pipefail
cd "$(dirname "$0")/../.."
PRUNED=$1; OUT=$2; T=${3:-2}
mkdir -p "$OUT"
P=.venv/bin/putri-export
for model in dense pruned; do
  src=smollm2-135m; [ $model = pruned ] && src=$PRUNED
  for type in f16 q4_k_m q5_k_m q6_k iq4_xs; do
    for im in none calib; do
      [ $type = f16 ] && [ $im = calib ] && continue
      name=$model-$type-$im
      flags=(); [ $im = calib ] && flags=(--imatrix-data wikitext2:valid,tinystories:train)
      $P export gguf $src --out "$OUT/$name.gguf" --type $type "${flags[@]}" --verify-data wikitext2 \
        --verify-windows 16 --threads $T --overwrite --json "$OUT/$name.verify.json" > "$OUT/$name.log" 2>&1 || true
      [ -f "$OUT/$name.gguf" ] && $P eval "$OUT/$name.gguf" --data tinystories --seq-len 512 --max-windows 16 \
        --threads $T --json "$OUT/$name.tinystories.json" > /dev/null 2>&1
      echo "$name $(stat -c %s "$OUT/$name.gguf" 2>/dev/null)"
    done
  done
done
