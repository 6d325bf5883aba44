"""2SSP: FFN neurons by the L2 norm of their activation on the *dense* model (no update), then whole
attention layers greedily by calibration loss, with Putri's attention/FFN budget split."""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..budget import split_budget
from ..context import PruneContext
from ..scores import ChannelStats
from ..stages import attention_stage, ffn_pass, keep_top, masked_groups, remove_head_groups
from ..stream import capture_inputs


def prune_ffns(ctx: PruneContext, keep: list[int]) -> list[dict]:
    """Every FFN to ``keep[l]`` neurons by activation norm; each layer is scored on dense activations (the
    dense FFN's output feeds the next block). Norms are reused from ``dense_cache`` when measured before."""
    model, runner = ctx.model, ctx.runner
    widths = model.config.intermediate_size_per_layer
    cached = (ctx.dense_cache or {}).get("ffn_l2")
    if cached is not None:
        log = []
        for l, norms in enumerate(cached):
            if norms is not None and keep[l] < widths[l]:
                keep_top(model, l, norms, keep[l])
            log.append({"layer": l, "width": widths[l], "kept": min(keep[l], widths[l])})
        return log
    norms: list[torch.Tensor | None] = [None] * len(widths)

    def visit(l: int, h: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
        layer = model.model.layers[l]
        width = widths[l]
        entry = {"layer": l, "width": width, "kept": min(keep[l], width)}
        if layer.mlp is None:
            return entry, None
        stats = ChannelStats(width)
        with capture_inputs(layer.mlp.down_proj, stats.add_batch):
            out = runner.ffn(layer, h)
        norms[l] = stats.l2_norm
        if keep[l] < width:
            keep_top(model, l, norms[l], keep[l])
        return entry, out

    log, from_start = ffn_pass(ctx, visit, "2SSP: FFN neurons")
    if ctx.dense_cache is not None and from_start:
        ctx.dense_cache["ffn_l2"] = norms
    return log


def prune(ctx: PruneContext) -> dict:
    budget = split_budget(ctx.model, ctx.settings.sparsity, ctx.settings.alpha, ctx.settings.align)
    ffn_log = prune_ffns(ctx, budget.ffn_keep)
    masks, rounds = attention_stage(ctx, budget.n_attn, 1, unit="layer")
    attn_log = remove_head_groups(ctx, masked_groups(ctx.model, masks), refit=False)
    return {"budget": asdict(budget), "ffn": ffn_log, "attention_rounds": rounds, "attention": attn_log}
