"""Putri: sequential OBS FFN pruning with a least-squares update, then greedy KV-head-group removal by
calibration loss, then (default) a least-squares refit of the kept o_proj columns.

Budget split from 2SSP (``prune.budget``). Stage 1, block by block on the hidden states of the *already
pruned* earlier blocks: a hook on ``down_proj`` accumulates ``H = Σ zᵀz``; neurons are scored by OBS saliency
weighted by output energy and the kept ``down_proj`` columns are re-solved (``prune.obs``). Stage 2: greedy
rounds over KV-head groups (``prune.stages``).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from ...model import keep_ffn_neurons
from ..budget import split_budget
from ..context import PruneContext
from ..obs import LinearPruner
from ..stages import attention_stage, ffn_pass, masked_groups, remove_head_groups
from ..stream import capture_inputs


def prune_ffns(ctx: PruneContext, keep: list[int]) -> list[dict]:
    """Stage 1: every FFN to ``keep[l]`` neurons, each fitted on the pruned prefix's outputs."""
    model, runner, s = ctx.model, ctx.runner, ctx.settings

    def visit(l: int, h: torch.Tensor) -> tuple[dict, None]:
        layer = model.model.layers[l]
        width = model.config.intermediate_size_per_layer[l]
        entry = {"layer": l, "width": width, "kept": min(keep[l], width)}
        if layer.mlp is None or keep[l] >= width:
            return entry, None
        if keep[l] == 0:
            keep_ffn_neurons(model, l, [])
            return entry, None
        pruner = LinearPruner(layer.mlp.down_proj.weight)
        with capture_inputs(layer.mlp.down_proj, pruner.add_batch):
            runner.ffn(layer, h)
        kept, columns, info = pruner.prune(keep[l], s.damping, s.update, s.update_damping)
        pruner.free()
        entry.update(info)
        keep_ffn_neurons(model, l, kept.tolist())
        layer.mlp.down_proj.weight.data.copy_(columns)
        return entry, None  # the pruned FFN's output feeds the next block

    return ffn_pass(ctx, visit, "stage 1: FFN neurons")[0]


def prune(ctx: PruneContext) -> dict:
    budget = split_budget(ctx.model, ctx.settings.sparsity, ctx.settings.alpha)
    ffn_log = prune_ffns(ctx, budget.ffn_keep)
    masks, rounds = attention_stage(ctx, budget.n_attn, budget.groups_per_layer, unit="group")
    attn_log = remove_head_groups(ctx, masked_groups(ctx.model, masks), refit=ctx.settings.o_refit)
    return {"budget": asdict(budget), "ffn": ffn_log, "attention_rounds": rounds, "attention": attn_log}
