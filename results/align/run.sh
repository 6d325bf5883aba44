#!/usr/bin/env bash
# --align N on SmolLM2-135M Putri 0.5: kept FFN widths in multiples of N. Prune, then size / speed / perplexity of
# the GGUF q8_0 file against the unaligned prune (ALIGN1_DIR). Perplexity in PyTorch on 16 × 512 windows of WikiText-2
# test and TinyStories validation; llama.cpp decode/prefill at depth 0 (128-token prompt, 32 decoded, 3 repeats).
# Usage: bash results/align/run.sh ALIGN1_DIR WORK_DIR [N] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ALIGN1=$1; WORK=$2; N=${3:-32}; T=${4:-2}
P=.venv/bin/putri-export
mkdir -p "$WORK"
[ -d "$WORK/align$N" ] || $P prune smollm2-135m --sparsity 0.5 --align $N --out "$WORK/align$N" --threads $T --resume
for m in align1 align$N; do
  src=$WORK/$m; [ $m = align1 ] && src=$ALIGN1
  [ -f "$WORK/$m-q8_0.gguf" ] || $P export gguf "$src" --out "$WORK/$m-q8_0.gguf" --type q8_0 --threads $T \
    --json "$WORK/$m-q8_0.verify.json" > /dev/null
  for d in wikitext2 tinystories; do
    [ -f "$WORK/$m-$d.json" ] || $P eval "$src" --data $d --seq-len 512 --max-windows 16 --threads $T \
      --json "$WORK/$m-$d.json" > /dev/null 2>&1
  done
done
[ "${SKIP_BENCH:-0}" = 1 ] || $P bench "$WORK/align1-q8_0.gguf" "$WORK/align$N-q8_0.gguf" --backend llama.cpp \
  --threads $T --prompt-tokens 128 --gen-tokens 32 --depths 0 --repeats 5 --out results/align/bench-align$N-q8_0
