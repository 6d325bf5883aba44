"""Quality table of the pruning methods: perplexity vs block sparsity, dense included.

    python tools/prune_quality.py                       # the full table on SmolLM2-135M
    python tools/prune_quality.py --refit-study 0.5     # Putri with vs without o_proj refit (held-out text)
    python tools/prune_quality.py --table-only          # the table again from the cells present

Methods are the pruning methods plus `run-default`: what `putri-export run` prunes with by default (the paper's
Putri, FFN widths aligned as run aligns them, then block reconstruction), so the table shows the default route
beside the paper preset (`putri`, prune's default) and the baselines.

Each (method, sparsity) cell is pruned from the dense model with the same calibration, evaluated on
WikiText-2 raw test and TinyStories validation, and saved under OUT/cells/ as soon as it is done,
so an interrupted run continues where it stopped. Then OUT/table.md, table.csv and
ppl_vs_sparsity.png are written from all cells present.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from putri_export.data import DEFAULT_CALIBRATION, load_calibration, load_corpus, tokenize_corpus
from putri_export.eval import perplexity, torch_logits_fn
from putri_export.model import load_model, param_counts
from putri_export.prune import METHOD_NAMES as METHODS
from putri_export.prune import PruneContext, PruneSettings, prune_model
from putri_export.prune.budget import split_budget
from putri_export.prune.methods.putri import prune_ffns
from putri_export.prune.stages import attention_stage, masked_groups, mean_block_errors, remove_head_groups
from putri_export.prune.stream import BlockRunner
from putri_export.resume import ResumeStore
from putri_export.run import Recipe

EVAL = {"wikitext2": "wikitext2:test", "tinystories": "tinystories:validation"}
RUN_DEFAULT = "run-default"
CELL_METHODS = [*METHODS, RUN_DEFAULT]


def _settings(args, method: str, sparsity: float) -> PruneSettings:
    common = {"sparsity": sparsity, "o_refit": not args.no_o_refit, "attn_samples": args.attn_samples,
              "attn_len": args.attn_len}
    if method == RUN_DEFAULT:
        # Taken from run's own recipe so the cell follows run's defaults if they change.
        recipe = Recipe(model=args.model, sparsity=sparsity, calib=args.calib)
        reconstruction = recipe.run_reconstruction(streamed=False)
        return PruneSettings(method=recipe.method, align=recipe.align, **asdict(reconstruction), **common)
    return PruneSettings(method=method, **common)


def _cell_settings(s: PruneSettings) -> dict:
    """What a cell records of its settings; a run-default cell made with others is redone (run's defaults
    change)."""
    record = {"method": s.method, "align": s.align, "reconstruct_epochs": s.reconstruct_epochs}
    if s.reconstruct_epochs:
        record |= asdict(s.reconstruction())  # all of block reconstruction's settings, its text included
    return record


def _describe_run_default(args) -> str:
    s = _settings(args, RUN_DEFAULT, 0.5)
    text = (f"{s.reconstruct_samples or args.calib_samples} windows of {s.reconstruct_calib or args.calib}"
            if s.names_reconstruction_text() else "the calibration windows")
    return (f"{s.method} with FFN widths aligned to multiples of {s.align}, then {s.reconstruct_epochs} epochs of "
            f"block reconstruction on {text} at lr {s.reconstruct_lr:g}, {s.reconstruct_batch} windows per step (its "
            "time is in the pruning time)")


def _evaluate(model, eval_ids: dict, args) -> dict:
    out = {}
    for name, ids in eval_ids.items():
        r = perplexity(torch_logits_fn(model), ids, args.seq_len, args.eval_windows, batch_size=4)
        out[name] = r.perplexity
    return out


def run_cells(args, eval_ids: dict, cells: Path) -> None:
    todo = [("dense", 0.0)] + [(m, s) for s in args.sparsities for m in args.methods]
    dense_cache: dict = {}  # dense-model statistics shared by the cells (same model, same calibration)
    for method, sparsity in todo:
        path = cells / f"{method}-{sparsity:.2f}.json"
        if path.exists():
            kept = json.loads(path.read_text()).get("settings")
            if method != RUN_DEFAULT or kept == _cell_settings(_settings(args, method, sparsity)):
                continue
            print(f"== {path.name} was made with other settings ({kept}): redone", flush=True)
        print(f"== {method} at {sparsity}", flush=True)
        model, tokenizer = load_model(args.model)
        dense = param_counts(model)
        record = {"method": method, "sparsity_target": sparsity}
        if method != "dense":
            calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
            settings = _settings(args, method, sparsity)
            report = prune_model(model, calib, settings,
                                 state_dir=args.out / "state" / path.stem, resume=True, dense_cache=dense_cache,
                                 reconstruct_calib=settings.load_reconstruction_text(
                                     tokenizer, args.calib, args.calib_samples, args.calib_len))
            record.update({k: report[k] for k in ("sparsity_blocks", "sparsity_total", "params_blocks",
                                                  "params_total", "prune_seconds", "widths")})
            record["settings"] = _cell_settings(settings)
            if report["details"].get("reconstruction"):
                record["reconstruction_block_error"] = mean_block_errors(report["details"]["reconstruction"])
        else:
            record.update({"sparsity_blocks": 0.0, "sparsity_total": 0.0, "params_blocks": dense.blocks,
                           "params_total": dense.total, "prune_seconds": 0.0})
        start = time.perf_counter()
        record["perplexity"] = _evaluate(model, eval_ids, args)
        record["eval_seconds"] = time.perf_counter() - start
        print(f"   {record['perplexity']}", flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)
        del model
        gc.collect()


def write_table(args, cells: Path, command: str) -> None:
    records = [json.loads(p.read_text()) for p in sorted(cells.glob("*.json"))]
    dense = next((r for r in records if r["method"] == "dense"), None)
    pruned = [r for r in records if r["method"] != "dense"]
    sparsities = sorted({r["sparsity_target"] for r in pruned})
    methods = [m for m in CELL_METHODS if any(r["method"] == m for r in pruned)]
    by = {(r["method"], r["sparsity_target"]): r for r in pruned}
    # run-default cells made under earlier defaults (kept until a rerun redoes them) are marked, not mixed in silently
    stale = {(m, s): r["settings"] for (m, s), r in by.items()
             if m == RUN_DEFAULT and r.get("settings") != _cell_settings(_settings(args, RUN_DEFAULT, s))}

    with open(args.out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "sparsity_target", "sparsity_blocks", "sparsity_total", "params_blocks", "params_total",
                    "ppl_wikitext2", "ppl_tinystories", "prune_seconds"])
        for r in ([dense] if dense else []) + pruned:
            w.writerow([r["method"], r["sparsity_target"], f"{r['sparsity_blocks']:.4f}", f"{r['sparsity_total']:.4f}",
                        r["params_blocks"], r["params_total"], f"{r['perplexity']['wikitext2']:.3f}",
                        f"{r['perplexity']['tinystories']:.3f}", f"{r['prune_seconds']:.1f}"])

    lines = [f"# Pruning quality: {args.model}", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
             f"Calibration: `{args.calib}`, {args.calib_samples} x {args.calib_len} tokens (first windows of each "
             f"corpus, split evenly); attention scored on {args.attn_samples} x {args.attn_len} tokens; "
             f"Putri o_proj refit {'off' if args.no_o_refit else 'on'}. "
             f"`{RUN_DEFAULT}` = what `putri-export run` prunes with by default: {_describe_run_default(args)}. "
             f"Evaluation: WikiText-2 raw test and TinyStories validation, the first {args.eval_windows} "
             f"non-overlapping {args.seq_len}-token windows each. Sparsity = fraction of block parameters "
             "removed (target; achieved in the CSV).", ""]
    for corpus in EVAL:
        lines += [f"## Perplexity, {corpus}" + (f" (dense {dense['perplexity'][corpus]:.2f})" if dense else ""), "",
                  "| method | " + " | ".join(f"{s:.1f}" for s in sparsities) + " |",
                  "|---|" + "---:|" * len(sparsities)]
        for m in methods:
            row = []
            for s in sparsities:
                r = by.get((m, s))
                if r is None:
                    row.append("—")
                    continue
                best = min(by[(x, s)]["perplexity"][corpus] for x in methods if (x, s) in by)
                v = r["perplexity"][corpus]
                row.append((f"**{v:.2f}**" if v == best else f"{v:.2f}") + ("†" if (m, s) in stale else ""))
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    if stale:
        made = sorted({json.dumps(v, sort_keys=True) for v in stale.values()})
        lines += [f"† made with run's earlier default ({'; '.join(made)}), not yet redone: rerun the command.", ""]
    lines += ["## Achieved block sparsity and pruning time", "",
              "| method | " + " | ".join(f"{s:.1f}" for s in sparsities) + " |",
              "|---|" + "---:|" * len(sparsities)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            f"{by[(m, s)]['sparsity_blocks']:.3f} ({by[(m, s)]['prune_seconds']:.0f} s)" if (m, s) in by else "—"
            for s in sparsities) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, corpus in zip(axes, EVAL):
        for m in methods:
            xs = [s for s in sparsities if (m, s) in by]
            ax.plot(xs, [by[(m, s)]["perplexity"][corpus] for s in xs], marker="o", label=m)
        if dense:
            ax.axhline(dense["perplexity"][corpus], color="gray", ls="--", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("block sparsity")
        ax.set_ylabel("perplexity (log)")
        ax.set_title(f"{args.model}: {corpus}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "ppl_vs_sparsity.png", dpi=120)


def refit_study(args, sparsity: float) -> None:
    """Putri with and without the o_proj refit, from the same stage-1/stage-2 choices, on held-out text:
    the tails of the calibration corpora (never used to calibrate, never the test splits)."""
    model, tokenizer = load_model(args.model)
    calib = load_calibration(tokenizer, args.calib, args.calib_samples, args.calib_len)
    settings = _settings(args, "putri", sparsity)
    held_out = {}
    for source in calib.sources:
        ids = tokenize_corpus(tokenizer, load_corpus(source.corpus))
        tail = ids[source.samples * args.calib_len:][-args.eval_windows * args.seq_len:]
        held_out[source.corpus + " (tail)"] = tail
    budget = split_budget(model, sparsity)
    ctx = PruneContext(model, calib, settings, BlockRunner(model, settings.batch_size), ResumeStore(None, ""))
    with torch.no_grad():
        prune_ffns(ctx, budget.ffn_keep)
        masks, _ = attention_stage(ctx, budget.n_attn, budget.groups_per_layer, "group")
        removed = masked_groups(model, masks)
        results = {}
        for refit in (False, True):
            candidate = copy.deepcopy(model)
            candidate_ctx = PruneContext(candidate, calib, settings, BlockRunner(candidate, settings.batch_size),
                                         ResumeStore(None, ""))
            remove_head_groups(candidate_ctx, removed, refit)
            results["refit" if refit else "no refit"] = {
                name: perplexity(torch_logits_fn(candidate), ids, args.seq_len, args.eval_windows, 4).perplexity
                for name, ids in held_out.items()}
            del candidate
    record = {"sparsity": sparsity, "held_out_windows": args.eval_windows, "results": results}
    (args.out / f"refit_study_{sparsity:.2f}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", nargs="+", default=CELL_METHODS, choices=CELL_METHODS)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.3, 0.7, 0.8, 0.4, 0.6, 0.2, 0.1])
    p.add_argument("--calib", default=DEFAULT_CALIBRATION)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--attn-samples", type=int, default=2)
    p.add_argument("--attn-len", type=int, default=256)
    p.add_argument("--no-o-refit", action="store_true")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("results/pruning"))
    p.add_argument("--refit-study", type=float, metavar="SPARSITY")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from the cells present, prune nothing "
                   "(give the flags the cells were made with: the table's text describes them)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.refit_study is not None:
        refit_study(args, args.refit_study)
        return
    cells = args.out / "cells"
    cells.mkdir(exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in ["tools/prune_quality.py", *sys.argv[1:]]
                                   if a != "--table-only")
    if args.table_only:
        write_table(args, cells, command)
        return
    _, tokenizer = load_model(args.model)
    eval_ids = {name: tokenize_corpus(tokenizer, load_corpus(spec)) for name, spec in EVAL.items()}
    try:
        run_cells(args, eval_ids, cells)
    finally:
        write_table(args, cells, command)


if __name__ == "__main__":
    main()
