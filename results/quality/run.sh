#!/usr/bin/env bash
# #19 ablation on SmolLM2-135M at block sparsity 0.5: the paper preset, each closed-form change, the putri-dense-fit
# preset, then block reconstruction; every model scored on the WHOLE WikiText-2 raw test (589 × 512 windows) and the
# whole local TinyStories validation file (validation-head.txt, 378 × 512 windows), PyTorch fp32.
# Usage: bash results/quality/run.sh WORK_DIR [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=$1; T=${2:-2}
P=.venv/bin/putri-export
export PUTRI_EXPORT_DATA=${PUTRI_EXPORT_DATA:-$(cd .. && pwd)/shared/data}
mkdir -p "$W"
prune() {  # NAME FLAGS...
  local name=$1; shift
  [ -d "$W/$name" ] || /usr/bin/time -v $P prune smollm2-135m --sparsity 0.5 --threads $T "$@" --out "$W/$name" \
    > "$W/$name.log" 2>&1
}
prune putri --method putri
prune obs-rounds --method putri --obs-rounds 16
prune dense-target --method putri --fit-target dense
prune dense-fit --method putri-dense-fit
for lr in 1e-4 1e-3; do
  [ -d "$W/dense-fit-rec4-$lr" ] || /usr/bin/time -v .venv/bin/python tools/reconstruct.py "$W/dense-fit" smollm2-135m \
    "$W/dense-fit-rec4-$lr" --epochs 4 --lr $lr --threads $T > "$W/dense-fit-rec4-$lr.log" 2>&1
done
for m in smollm2-135m putri obs-rounds dense-target dense-fit dense-fit-rec4-1e-4 dense-fit-rec4-1e-3; do
  src=$W/$m; [ $m = smollm2-135m ] && src=$m
  for d in wikitext2 tinystories; do
    [ -f "$W/ppl-$(basename $m)-$d.json" ] || $P eval "$src" --data $d --seq-len 512 --threads $T \
      --json "$W/ppl-$(basename $m)-$d.json" > /dev/null 2>&1
  done
done
