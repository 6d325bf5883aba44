#!/usr/bin/env bash
# Decode / prefill speed of each GGUF type, Putri 0.5 vs the dense file of the same type, in llama.cpp (depth 0 and
# 2048, 128-token prompt, 32 decoded, 3 repeats after a warm-up, fresh process per configuration). Every K-/i-quant
# is written with an importance matrix from wikitext2:valid,tinystories:train (32 × 512); --no-verify: quality is
# run.sh's job. Usage: bash results/gguf-kquants/speed.sh PRUNED_DIR WORK_DIR [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
PRUNED=$1; WORK=$2; T=${3:-2}
P=.venv/bin/putri-export
mkdir -p "$WORK"
for type in f16 q8_0 q6_k q5_k_m q4_k_m iq4_xs; do
  for model in dense pruned; do
    src=smollm2-135m; [ $model = pruned ] && src=$PRUNED
    flags=(); [[ $type == q*_k* || $type == iq* ]] && flags=(--imatrix-data wikitext2:valid,tinystories:train)
    [ -f "$WORK/$model-$type.gguf" ] || $P export gguf $src --out "$WORK/$model-$type.gguf" --type $type \
      "${flags[@]}" --no-verify --threads $T > /dev/null
  done
  [ "${EXPORT_ONLY:-0}" = 1 ] && continue
  $P bench "$WORK/dense-$type.gguf" "$WORK/pruned-$type.gguf" --backend llama.cpp --threads $T --prompt-tokens 128 \
    --gen-tokens 32 --depths 0,2048 --repeats 3 --out results/gguf-kquants/speed-$type
done
[ "${EXPORT_ONLY:-0}" = 1 ] || .venv/bin/python results/gguf-kquants/speed_table.py results/gguf-kquants > results/gguf-kquants/speed.md
