#!/usr/bin/env bash
# SmolLM2-135M pruned at 0.5 (and 0.3) by Putri: fp32 in memory (the paper's loss-scored attention: today's default
# on a small CPU model), fp32 and bf16 streamed with local attention scoring; every model on the full WikiText-2 raw
# test and the whole TinyStories validation head (512-token windows). Wall time and peak RSS from /usr/bin/time -v.
# Usage: bash results/streaming/smollm2.sh OUT_DIR   (2 threads; run alone on the machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/smollm2-streaming}
mkdir -p "$OUT"
P=.venv/bin/putri-export
run() {  # name, prune flags...
  local name=$1; shift
  if [ ! -f "$OUT/$name/pruning_report.json" ]; then
    /usr/bin/time -v $P prune smollm2-135m "$@" --out "$OUT/$name" --overwrite --threads 2 \
      > "$OUT/$name.prune.log" 2>&1
  fi
  for data in wikitext2 tinystories; do
    [ -f "$OUT/$name.$data.json" ] || $P eval "$OUT/$name" --data $data --seq-len 512 --threads 2 \
      --json "$OUT/$name.$data.json" > /dev/null 2>&1
  done
  grep -E "Elapsed|Maximum resident" "$OUT/$name.prune.log" | sed "s/^/$name: /"
}
run fp32-loss-0.5   --sparsity 0.5 --streaming off --attn-scoring loss
run fp32-local-0.5  --sparsity 0.5 --streaming off --attn-scoring local
run bf16-local-0.5  --sparsity 0.5 --streaming on --dtype bfloat16
run fp32-stream-0.5 --sparsity 0.5 --streaming on
run fp32-loss-0.3   --sparsity 0.3 --streaming off --attn-scoring loss
run fp32-local-0.3  --sparsity 0.3 --streaming off --attn-scoring local
for data in wikitext2 tinystories; do
  [ -f "$OUT/dense.$data.json" ] || $P eval smollm2-135m --data $data --seq-len 512 --threads 2 \
    --json "$OUT/dense.$data.json" > /dev/null 2>&1
done
