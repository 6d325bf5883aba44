"""ShortGPT: remove whole blocks with the lowest block influence, 1 − cos(input, output), measured on the
dense model; the removed count is the one closest to the target."""

from __future__ import annotations

import torch

from ...errors import PutriError
from ...model import keep_ffn_neurons, keep_kv_groups, param_counts
from ..context import PruneContext
from ..scores import BlockInfluence, Unit, global_selection
from ..stream import sequential


def block_influence(ctx: PruneContext) -> list[float]:
    cached = (ctx.dense_cache or {}).get("block_influence")
    if cached is not None:
        return cached
    influence: list[float] = []

    def measure(_l: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        bi = BlockInfluence()
        bi.add_batch(x_in, x_out)
        influence.append(bi.value)

    sequential(ctx.runner, ctx.runner.embed(ctx.calib.ids), after_block=measure, desc="block influence",
               progress=ctx.progress)
    if ctx.dense_cache is not None:
        ctx.dense_cache["block_influence"] = influence
    return influence


def prune(ctx: PruneContext) -> dict:
    model, s = ctx.model, ctx.settings
    counts = param_counts(model)
    target = round(s.sparsity * counts.blocks)
    smallest = min((li.block_params for li in counts.layers if li.block_params), default=0)
    if s.sparsity > 0 and 2 * target < smallest:
        raise PutriError(f"sparsity {s.sparsity} is below half a block (each block holds "
                         f"{smallest / counts.blocks:.3f} of the block parameters): ShortGPT removes whole blocks; "
                         "raise the sparsity or use another method")
    influence = block_influence(ctx)
    units = [Unit("block", l, 0, counts.layers[l].block_params) for l in range(len(counts.layers))]
    chosen = global_selection(units, torch.tensor(influence, dtype=torch.float64), target)
    for unit in chosen:
        keep_kv_groups(model, unit.layer, [])
        keep_ffn_neurons(model, unit.layer, [])
    return {"block_influence": influence, "removed_blocks": sorted(u.layer for u in chosen), "target_removed": target}
