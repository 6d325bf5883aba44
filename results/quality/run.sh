#!/usr/bin/env bash
# #19 ablation on SmolLM2-135M at block sparsity 0.5: the paper preset, each closed-form change, the putri-dense-fit
# preset (on the paper's calibration and on raw text), block reconstruction, then recovery by distillation; every
# model scored on the WHOLE WikiText-2 raw test (589 × 512 windows) and the whole local TinyStories validation file
# (validation-head.txt, 378 × 512 windows), PyTorch fp32. Each step is skipped when its output exists.
# Usage: bash results/quality/run.sh WORK_DIR [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=$1; T=${2:-2}
P=.venv/bin/putri-export
RAW=wikitext2:valid-raw,tinystories:train-2mib,c4
export PUTRI_EXPORT_DATA=${PUTRI_EXPORT_DATA:-$(cd .. && pwd)/shared/data}
mkdir -p "$W"
timed() {  # NAME COMMAND...: run once, wall time and peak RSS in NAME.log
  local name=$1; shift
  [ -d "$W/$name" ] || /usr/bin/time -v "$@" > "$W/$name.log" 2>&1
}
prune() {  # NAME FLAGS...
  local name=$1; shift
  timed "$name" $P prune smollm2-135m --sparsity 0.5 --threads $T "$@" --out "$W/$name"
}
reconstruct() {  # NAME FROM CALIB [MORE FLAGS...]
  local name=$1 from=$2 calib=$3; shift 3
  timed "$name" .venv/bin/python tools/reconstruct.py "$W/$from" smollm2-135m "$W/$name" --epochs 2 --lr 1e-3 \
    --batch 8 --calib "$calib" --threads $T "$@"  # --batch 8: the step size before stop 35 (later rows pass 2)
}
prune putri --method putri
prune obs-rounds --method putri --obs-rounds 16
prune dense-target --method putri --fit-target dense
prune dense-target-refit --method putri --fit-target dense --final-refit
prune dense-fit --method putri-dense-fit
prune raw-dense-fit --method putri-dense-fit --calib $RAW
reconstruct dense-fit-rec2 dense-fit wikitext2:valid,tinystories:train
reconstruct raw-dense-fit-rec2 raw-dense-fit $RAW
# Recovery: the rest of a 30-minute training budget after the 5.6-minute reconstruction (schedule sized to end in it).
timed dense-fit-rec2-recover $P recover "$W/dense-fit-rec2" --teacher smollm2-135m --out "$W/dense-fit-rec2-recover" \
  --max-minutes 24 --tokens 225280 --lr 3e-4 --threads $T
# The same budget with bf16 autocast (1.8x the steps per minute on this Zen 4 CPU); the schedule follows the time.
timed dense-fit-rec2-recover-bf16 $P recover "$W/dense-fit-rec2" --teacher smollm2-135m \
  --out "$W/dense-fit-rec2-recover-bf16" --max-minutes 23.5 --lr 3e-4 --autocast bf16 --threads $T
# The search at prune's default calibration, seeded from the paper preset's greedy head allocation, trading
# attention against FFN (search defaults).
timed search-greedy-trade $P search smollm2-135m --sparsity 0.5 --start "$W/putri" --threads $T \
  --out "$W/search-greedy-trade"
# Block reconstruction of the paper preset and of the searched model, then the same bf16 recovery on the searched one
# (the route measured best: search + reconstruction + recovery).
reconstruct putri-rec2 putri wikitext2:valid,tinystories:train
reconstruct search-rec2 search-greedy-trade wikitext2:valid,tinystories:train
timed search-rec2-recover-bf16 $P recover "$W/search-rec2" --teacher smollm2-135m --out "$W/search-rec2-recover-bf16" \
  --max-minutes 23.5 --lr 3e-4 --autocast bf16 --threads $T
# The same recovery on a text mix without C4: half TinyStories (1/3 above), half WikiText-2 validation raw.
timed search-rec2-recover-bf16-ts $P recover "$W/search-rec2" --teacher smollm2-135m \
  --out "$W/search-rec2-recover-bf16-ts" --data tinystories:train-2mib,wikitext2:valid-raw --max-minutes 23.5 \
  --lr 3e-4 --autocast bf16 --threads $T
# Two thirds TinyStories (SPEC*N shares: 517 + 259 windows), one third WikiText-2 validation raw.
timed search-rec2-recover-bf16-ts2 $P recover "$W/search-rec2" --teacher smollm2-135m \
  --out "$W/search-rec2-recover-bf16-ts2" --data 'tinystories:train-2mib*2,wikitext2:valid-raw' --max-minutes 23.5 \
  --lr 3e-4 --autocast bf16 --threads $T
# The same recovery with another data order and held-out set (seed 1; seed 0 is the default).
timed search-rec2-recover-bf16-ts2-seed1 $P recover "$W/search-rec2" --teacher smollm2-135m \
  --out "$W/search-rec2-recover-bf16-ts2-seed1" --data 'tinystories:train-2mib*2,wikitext2:valid-raw' \
  --max-minutes 23.5 --lr 3e-4 --autocast bf16 --threads $T --seed 1
# Reconstruction of the searched model on its own text: 256 windows of raw WikiText-2 validation + TinyStories 2 MiB
# (128 each) instead of the 64 pruning windows (= search --reconstruct-epochs 2 --reconstruct-calib ...
# --reconstruct-samples 256, the same function; tools/reconstruct.py spares the search). 128 windows: a screen only.
reconstruct search-rec2-raw256 search-greedy-trade wikitext2:valid-raw,tinystories:train-2mib --calib-samples 256
# The same Adam steps per block on a quarter of the windows: 64 windows, 8 epochs (reconstruct's --epochs 2 overridden).
reconstruct search-rec8-raw64 search-greedy-trade wikitext2:valid-raw,tinystories:train-2mib --epochs 8
# Stop 34. The searched widths of search-greedy-trade (results/search/smollm2-0.50-greedy-trade/widths.json) re-pruned
# at prune's default calibration (`search --widths`: 2.5 min instead of the 64-min search; the search had kept its
# supernet assembly, KL 0.657, over this re-pruning, KL 0.678), then 4 epochs of reconstruction on 64 raw windows at
# lr 1e-3 (64-window screen only) and 3e-3, then bf16 recovery for the rest of 30 minutes.
timed search-widths $P search smollm2-135m --sparsity 0.5 --widths results/search/smollm2-0.50-greedy-trade/widths.json \
  --threads $T --out "$W/search-widths"
reconstruct search-widths-rec4-raw64 search-widths wikitext2:valid-raw,tinystories:train-2mib --epochs 4
reconstruct search-widths-rec4-raw64-lr3e-3 search-widths wikitext2:valid-raw,tinystories:train-2mib --epochs 4 --lr 3e-3
# Screens of the two learning rates on the first 64 windows of each test set (screens/; the cosine-decay screen there
# was measured with code that was not kept).
for m in search-widths-rec4-raw64 search-widths-rec4-raw64-lr3e-3; do
  for d in wikitext2 tinystories; do
    [ -f "$W/w64-$m-$d.json" ] || $P eval "$W/$m" --data $d --seq-len 512 --max-windows 64 --threads $T \
      --json "$W/w64-$m-$d.json" > /dev/null 2>&1
  done
done
timed search-widths-rec4-raw64-lr3e-3-recover $P recover "$W/search-widths-rec4-raw64-lr3e-3" --teacher smollm2-135m \
  --out "$W/search-widths-rec4-raw64-lr3e-3-recover" --data 'tinystories:train-2mib*2,wikitext2:valid-raw' \
  --max-minutes 20 --lr 3e-4 --autocast bf16 --threads $T
timed search-widths-rec4-raw64-lr3e-3-recover-seed1 $P recover "$W/search-widths-rec4-raw64-lr3e-3" \
  --teacher smollm2-135m --out "$W/search-widths-rec4-raw64-lr3e-3-recover-seed1" \
  --data 'tinystories:train-2mib*2,wikitext2:valid-raw' --max-minutes 20 --lr 3e-4 --autocast bf16 --threads $T --seed 1
# Stop 35: reconstruction's step size (windows per Adam step) and learning rate, 2 epochs on the paper preset's 64
# pruning windows, then on the re-pruned searched widths (64 raw windows); screened on the first 64 windows of each test
# set. putri-rec2-b2 (2 windows per step, lr 1e-3) is run's default reconstruction since stop 35.
PT=wikitext2:valid,tinystories:train
reconstruct putri-rec2-lr3e-3 putri $PT --lr 3e-3
reconstruct putri-rec2-b2 putri $PT --batch 2
reconstruct putri-rec2-b2-lr2e-3 putri $PT --batch 2 --lr 2e-3
reconstruct putri-rec2-b2-lr3e-3 putri $PT --batch 2 --lr 3e-3
reconstruct putri-rec2-b2-lr5e-3 putri $PT --batch 2 --lr 5e-3
reconstruct putri-rec2-b1 putri $PT --batch 1
reconstruct putri-rec2-b1-lr3e-3 putri $PT --batch 1 --lr 3e-3
reconstruct search-widths-rec2-raw64-b2 search-widths wikitext2:valid-raw,tinystories:train-2mib --batch 2
reconstruct search-widths-rec2-raw64-b2-lr2e-3 search-widths wikitext2:valid-raw,tinystories:train-2mib --batch 2 \
  --lr 2e-3
reconstruct search-widths-rec2-raw64-b2-lr3e-3 search-widths wikitext2:valid-raw,tinystories:train-2mib --batch 2 \
  --lr 3e-3
# Stop 36: the epochs and the text of run's default reconstruction (2 windows per step, lr 1e-3): 2 and 4 epochs on
# the raw text of the default calibration's corpora (64 windows, 32 + 32), 4 on the pruning windows. putri-rec4-b2-raw
# is run's default since stop 36.
RAW2=wikitext2:valid-raw,tinystories:train-2mib
reconstruct putri-rec2-b2-raw putri $RAW2 --batch 2
reconstruct putri-rec4-b2 putri $PT --batch 2 --epochs 4
reconstruct putri-rec4-b2-raw putri $RAW2 --batch 2 --epochs 4
# Stop 37: run's default route (putri-rec4-b2-raw, 9:26) + the stop-34 recovery for the rest of 30 minutes.
timed putri-rec4-b2-raw-recover $P recover "$W/putri-rec4-b2-raw" --teacher smollm2-135m \
  --out "$W/putri-rec4-b2-raw-recover" --data 'tinystories:train-2mib*2,wikitext2:valid-raw' \
  --max-minutes 20 --lr 3e-4 --autocast bf16 --threads $T
timed putri-rec4-b2-raw-recover-seed1 $P recover "$W/putri-rec4-b2-raw" --teacher smollm2-135m \
  --out "$W/putri-rec4-b2-raw-recover-seed1" --data 'tinystories:train-2mib*2,wikitext2:valid-raw' \
  --max-minutes 20 --lr 3e-4 --autocast bf16 --threads $T --seed 1
for m in putri-rec2 putri-rec2-lr3e-3 putri-rec2-b2 putri-rec2-b2-lr2e-3 putri-rec2-b2-lr3e-3 putri-rec2-b2-lr5e-3 \
    putri-rec2-b1 putri-rec2-b1-lr3e-3 search-widths-rec2-raw64-b2 search-widths-rec2-raw64-b2-lr2e-3 \
    search-widths-rec2-raw64-b2-lr3e-3 putri-rec2-b2-raw putri-rec4-b2 putri-rec4-b2-raw; do
  for d in wikitext2 tinystories; do
    [ -f "$W/w64-$m-$d.json" ] || $P eval "$W/$m" --data $d --seq-len 512 --max-windows 64 --threads $T \
      --json "$W/w64-$m-$d.json" > /dev/null 2>&1
  done
done
for m in smollm2-135m putri obs-rounds dense-target dense-target-refit dense-fit raw-dense-fit dense-fit-rec2 \
    raw-dense-fit-rec2 dense-fit-rec2-recover dense-fit-rec2-recover-bf16 search-greedy-trade putri-rec2 search-rec2 \
    search-rec2-recover-bf16 search-rec2-recover-bf16-ts search-rec2-recover-bf16-ts2 \
    search-rec2-recover-bf16-ts2-seed1 search-rec2-raw256 search-rec8-raw64 search-widths-rec4-raw64-lr3e-3 \
    search-widths-rec4-raw64-lr3e-3-recover search-widths-rec4-raw64-lr3e-3-recover-seed1 putri-rec2-b2 \
    putri-rec4-b2-raw putri-rec4-b2-raw-recover \
    putri-rec4-b2-raw-recover-seed1; do
  src=$W/$m; [ $m = smollm2-135m ] && src=$m
  for d in wikitext2 tinystories; do
    [ -f "$W/full-$m-$d.json" ] || $P eval "$src" --data $d --seq-len 512 --threads $T --json "$W/full-$m-$d.json" \
      > /dev/null 2>&1
  done
done
python results/quality/table.py "$W"
