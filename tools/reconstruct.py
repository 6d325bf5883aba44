"""Block reconstruction (``prune --reconstruct-epochs``) applied to an already pruned checkpoint: the same function,
run after the fact, so that an ablation need not prune again (a Putri prune of SmolLM2-135M takes 17-30 min here).
Identical to pruning with the flag when --calib/--calib-samples here are the prune's calibration, or its
--reconstruct-calib/--reconstruct-samples.

    python tools/reconstruct.py PRUNED_DIR DENSE_MODEL OUT_DIR [--epochs 2] [--lr 1e-3] [--batch 2] [--calib DATA]
        [--calib-samples 64] [--calib-len 512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from putri_export.data import DEFAULT_CALIBRATION, load_calibration
from putri_export.errors import PutriError
from putri_export.model import load_model, save_checkpoint
from putri_export.model.assets import resolve_model
from putri_export.prune import PruneSettings
from putri_export.prune.settings import ReconstructionSettings
from putri_export.prune.stages import mean_block_errors, reconstruct_model

DEFAULTS = PruneSettings()  # prune's forward batch and reconstruction defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pruned")
    p.add_argument("dense")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=DEFAULTS.reconstruct_lr)
    p.add_argument("--calib", default=DEFAULT_CALIBRATION)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=DEFAULTS.reconstruct_batch,
                   help="windows per Adam step (prune --reconstruct-batch)")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    settings = ReconstructionSettings(reconstruct_epochs=args.epochs, reconstruct_lr=args.lr,
                                      reconstruct_batch=args.batch)
    try:
        settings.check_reconstruction()
    except PutriError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(Path(args.pruned))
    dense, _ = load_model(resolve_model(args.dense).path)
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    start = time.perf_counter()
    with torch.no_grad():
        log = reconstruct_model(model, dense, calib.ids, DEFAULTS.batch_size, settings)
    seconds = time.perf_counter() - start
    out = save_checkpoint(model, tokenizer, Path(args.out), source_dir=Path(args.pruned))
    report = {"pruned": args.pruned, "dense": args.dense, "epochs": args.epochs, "lr": args.lr,
              "batch": args.batch,
              "calibration": calib.provenance(), "seconds": seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "blocks": log}
    (Path(out) / "reconstruction_report.json").write_text(json.dumps(report, indent=2) + "\n")
    error = mean_block_errors(log)
    print(f"{out}: {args.epochs} epochs in {seconds:.0f} s; relative block error "
          f"{error['before']:.4f} -> {error['after']:.4f} (mean over blocks)")


if __name__ == "__main__":
    main()
