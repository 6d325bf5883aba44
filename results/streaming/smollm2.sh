#!/usr/bin/env bash
# SmolLM2-135M pruned by Putri at 0.5: fp32 in memory with the paper's loss-scored attention (the default on a CPU
# for this size), fp32 in memory with local scoring, bf16 streamed with local scoring — each evaluated on the whole
# WikiText-2 raw test and the whole TinyStories validation head (512-token windows); local scoring at 0.3 on the
# 16-window protocol of results/pruning and on the whole test sets; loss scoring at 0.3 likewise. Wall time and peak RSS of each prune from /usr/bin/time -v.
# Usage: bash results/streaming/smollm2.sh OUT_DIR   (2 threads; run alone on the machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/smollm2-streaming}
mkdir -p "$OUT"
P=.venv/bin/putri-export
prune() {  # name, prune flags...
  local name=$1; shift
  /usr/bin/time -v $P prune smollm2-135m "$@" --out "$OUT/$name" --overwrite --threads 2 > "$OUT/$name.prune.log" 2>&1
  grep -E "Elapsed|Maximum resident" "$OUT/$name.prune.log" | sed "s/^/$name: /"
}
evaluate() {  # name, [--max-windows N]
  local name=$1; shift
  for data in wikitext2 tinystories; do
    $P eval "$OUT/$name" --data $data --seq-len 512 --threads 2 "$@" --json "$OUT/$name.$data${1:+.w$2}.json" > /dev/null
  done
}
prune fp32-loss-0.5  --sparsity 0.5 --streaming off --attn-scoring loss;  evaluate fp32-loss-0.5
prune fp32-local-0.5 --sparsity 0.5 --streaming off --attn-scoring local; evaluate fp32-local-0.5
prune bf16-local-0.5 --sparsity 0.5 --streaming on --dtype bfloat16;      evaluate bf16-local-0.5
prune fp32-local-0.3 --sparsity 0.3 --streaming off --attn-scoring local; evaluate fp32-local-0.3 --max-windows 16
evaluate fp32-local-0.3
prune fp32-loss-0.3  --sparsity 0.3 --streaming off --attn-scoring loss;  evaluate fp32-loss-0.3; evaluate fp32-loss-0.3 --max-windows 16
evaluate fp32-loss-0.5 --max-windows 16  # against results/pruning/table.md's Putri 0.5 cell
