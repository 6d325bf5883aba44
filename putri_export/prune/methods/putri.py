"""Putri: sequential OBS FFN pruning with a least-squares update, then greedy KV-head-group removal by
calibration loss, then (default) a least-squares refit of the kept o_proj columns.

Budget split from 2SSP (``prune.budget``). Stage 1, block by block on the hidden states of the *already
pruned* earlier blocks: a hook on ``down_proj`` accumulates ``H = Σ zᵀz``; neurons are scored by OBS saliency
weighted by output energy and the kept ``down_proj`` columns are re-solved (``prune.obs``). Stage 2: greedy
rounds over KV-head groups (``prune.stages``), or (``--attn-scoring local``) each layer's groups ranked by the
o_proj output error left after the least-squares refit, measured on the stage-1 stream and allocated globally by
that error relative to the stream's energy: one pass, whatever the depth.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

import torch

from ...model import keep_ffn_neurons, layer_group_channels
from ..budget import split_budget
from ..context import PruneContext
from ..obs import LinearPruner, allocate_removals, group_removal_curve
from ..stages import (
    attention_stage,
    ffn_pass,
    fit_inputs,
    masked_groups,
    reconstruct_blocks,
    refit_ffns,
    remove_head_groups,
)
from ..stream import DenseStream, capture_inputs


def prune_ffns(ctx: PruneContext, keep: list[int], score_attention: bool = False,
               dense: DenseStream | None = None) -> list[dict]:
    """Stage 1: every FFN to ``keep[l]`` neurons, each fitted on the pruned prefix's outputs (to the FFN's own
    output, or with ``dense`` to the dense model's block output minus the pruned post-attention stream). With
    ``score_attention``, each layer's KV-head groups are also scored locally on the same stream (the log entry's
    ``attention_local``: removal order and refit-error curve relative to the stream's energy)."""
    model, runner, s = ctx.model, ctx.runner, ctx.settings
    local: dict[int, dict] = {}

    def score(l: int, x: torch.Tensor) -> torch.Tensor | None:
        attn = model.model.layers[l].self_attn
        if attn is None:
            return None
        pruner = LinearPruner(attn.o_proj.weight)
        with capture_inputs(attn.o_proj, pruner.add_batch):
            h = runner.attention(model.model.layers[l], x)
        pruner.check()
        kv = model.config.num_key_value_heads_per_layer[l]
        order, errors = group_removal_curve(attn.o_proj.weight, pruner.hessian,
                                            [layer_group_channels(model, l, [g]) for g in range(kv)])
        energy = float(x.double().pow(2).sum())
        local[l] = {"order": order, "relative_error": [e / energy for e in errors]}
        return h

    def visit(l: int, h: torch.Tensor) -> tuple[dict, None]:
        y_dense = dense.step(l)[1] if dense is not None else None  # (the block is still dense here)
        layer = model.model.layers[l]
        width = model.config.intermediate_size_per_layer[l]
        entry = {"layer": l, "width": width, "kept": min(keep[l], width)}
        if l in local:
            entry["attention_local"] = local.pop(l)
        if layer.mlp is None or keep[l] >= width:
            return entry, None
        if keep[l] == 0:
            keep_ffn_neurons(model, l, [])
            return entry, None
        pruner = LinearPruner(layer.mlp.down_proj.weight)
        fit_inputs(pruner, layer.mlp.down_proj, lambda b: runner.ffn(layer, h[b]), h.shape[0], runner.batch_size,
                   None if y_dense is None else (lambda b: y_dense[b] - h[b]))
        kept, columns, info = pruner.prune(keep[l], s.damping, s.update, s.update_damping, s.preset("obs_rounds"))
        pruner.free()
        entry.update(info)
        keep_ffn_neurons(model, l, kept.tolist())
        layer.mlp.down_proj.weight.data.copy_(columns)
        return entry, None  # the pruned FFN's output feeds the next block

    return ffn_pass(ctx, visit, "stage 1: FFN neurons", attention=score if score_attention else None)[0]


def local_head_groups(ffn_log: list[dict], count: int) -> dict[int, list[int]]:
    """The ``count`` KV-head groups to remove, allocated over layers by their local error curves."""
    curves = {e["layer"]: e["attention_local"]["relative_error"] for e in ffn_log if "attention_local" in e}
    orders = {e["layer"]: e["attention_local"]["order"] for e in ffn_log if "attention_local" in e}
    taken = allocate_removals(curves, count)
    return {l: orders[l][:k] for l, k in taken.items() if k}


def prune(ctx: PruneContext) -> dict:
    s = ctx.settings
    budget = split_budget(ctx.model, s.sparsity, s.alpha, s.align)
    scoring = ctx.attn_scoring
    # dense-target fits read the dense blocks beside the pruned ones: a frozen copy, taken before any change
    dense = s.preset("fit_target") == "dense"
    dense_model = copy.deepcopy(ctx.model) if dense or s.reconstruct_epochs else None

    def dense_stream() -> DenseStream | None:
        return None if dense_model is None else DenseStream(dense_model, ctx.calib.ids, s.batch_size)

    ffn_log = prune_ffns(ctx, budget.ffn_keep, score_attention=scoring == "local",
                         dense=dense_stream() if dense else None)
    if scoring == "local":
        removed, rounds = local_head_groups(ffn_log, budget.head_groups), []
    else:
        masks, rounds = attention_stage(ctx, budget.n_attn, budget.groups_per_layer, unit="group")
        removed = masked_groups(ctx.model, masks)
    attn_log = remove_head_groups(ctx, removed, refit=s.o_refit, dense=dense_stream() if dense else None)
    pruned = any(e["kept"] < e["width"] for e in ffn_log) or any(removed.values())  # else a refit is a no-op
    refit_log = refit_ffns(ctx, dense_stream()) if s.preset("final_refit") and pruned else []
    reconstruction = []
    if s.reconstruct_epochs and pruned:
        ids = (ctx.reconstruct_calib or ctx.calib).ids
        reconstruction = reconstruct_blocks(ctx.runner, ids, DenseStream(dense_model, ids, s.batch_size), s,
                                            ctx.progress)
    return {"budget": asdict(budget), "attention_scoring": scoring, "ffn": ffn_log, "attention_rounds": rounds,
            "attention": attn_log, "final_refit": refit_log, "reconstruction": reconstruction,
            "preset": {k: s.preset(k) for k in ("obs_rounds", "fit_target", "final_refit", "attn_len")}}
