"""FLAP: fluctuation (input-channel variance × squared column norm) of every ``o_proj`` (per KV-head group) and
``down_proj`` input on the dense model, standardized per layer and module, ranked globally; the removed channels'
mean contribution becomes a bias on ``o_proj`` / ``down_proj`` (kept in the checkpoint and in the exports)."""

from __future__ import annotations

import torch

from ...model import keep_ffn_neurons, keep_kv_groups, layer_group_channels, param_counts
from ...model.modeling_putri import add_output_bias
from ..context import PruneContext
from ..scores import ChannelStats, Unit, compensation_bias, fluctuation_scores, global_selection, standardize
from ..stages import SliceEvaluator
from ..stream import ChannelMask, capture_inputs, sequential


def fluctuation_stats(ctx: PruneContext) -> tuple[dict[int, ChannelStats], dict[int, ChannelStats]]:
    """Per-channel mean/variance of every o_proj and down_proj input on the dense model (cached per dense model)."""
    cached = (ctx.dense_cache or {}).get("flap_stats")
    if cached is not None:
        return cached
    layers, runner = ctx.model.model.layers, ctx.runner
    attn_stats: dict[int, ChannelStats] = {}
    ffn_stats: dict[int, ChannelStats] = {}

    def observer(stats: dict, projection, advance):
        """A visitor recording the input statistics of ``projection(layer)`` while the stream advances."""
        def visit(l: int, x: torch.Tensor) -> torch.Tensor | None:
            linear = projection(layers[l])
            if linear is None:
                return None
            stats[l] = ChannelStats(linear.in_features)
            with capture_inputs(linear, stats[l].add_batch):
                return advance(layers[l], x)
        return visit

    sequential(runner, runner.embed(ctx.calib.ids),
               attention=observer(attn_stats, lambda layer: layer.self_attn and layer.self_attn.o_proj,
                                  runner.attention),
               ffn=observer(ffn_stats, lambda layer: layer.mlp and layer.mlp.down_proj, runner.ffn),
               desc="fluctuation statistics", progress=ctx.progress)
    if ctx.dense_cache is not None:
        ctx.dense_cache["flap_stats"] = (attn_stats, ffn_stats)
    return attn_stats, ffn_stats


def select(ctx: PruneContext, attn_stats: dict, ffn_stats: dict) -> tuple[list[Unit], int]:
    """The globally lowest standardized units until the removed parameters are closest to the target."""
    c, layers = ctx.model.config, ctx.model.model.layers
    d, hd = c.hidden_size, c.head_dim
    units, scores = [], []
    for l, stats in attn_stats.items():
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        group = heads // kv
        channel = fluctuation_scores(layers[l].self_attn.o_proj.weight.data, stats.variance)
        scores.append(standardize(channel.view(kv, group * hd).mean(dim=1)))
        units += [Unit("attn", l, g, d * hd * (2 * group + 2)) for g in range(kv)]
    for l, stats in ffn_stats.items():
        channel = fluctuation_scores(layers[l].mlp.down_proj.weight.data, stats.variance)
        scores.append(standardize(channel))
        units += [Unit("ffn", l, j, 3 * d) for j in range(channel.numel())]
    target = round(ctx.settings.sparsity * param_counts(ctx.model).blocks)
    return global_selection(units, torch.cat(scores), target), target


def prune(ctx: PruneContext) -> dict:
    model = ctx.model
    c, layers = model.config, model.model.layers
    attn_stats, ffn_stats = fluctuation_stats(ctx)
    chosen, target = select(ctx, attn_stats, ffn_stats)
    if not chosen:
        return {"target_removed": target, "removed_groups": {}}
    removed_attn = {l: sorted(u.index for u in chosen if u.kind == "attn" and u.layer == l) for l in attn_stats}
    removed_ffn = {l: torch.tensor(sorted(u.index for u in chosen if u.kind == "ffn" and u.layer == l),
                                   dtype=torch.long) for l in ffn_stats}

    # FLAP as published first (masks + compensation bias; a fully removed sub-block keeps its bias), measured on
    # the attention slice; then the saved form, which cannot hold a bias without its module.
    c.output_projection_bias = True
    for layer in layers:
        add_output_bias(layer)
    masks = []
    for l, groups in removed_attn.items():
        o_proj = layers[l].self_attn.o_proj
        channels = layer_group_channels(model, l, groups)
        o_proj.bias.data += compensation_bias(o_proj.weight.data, attn_stats[l].mean, channels)
        masks.append(ChannelMask(o_proj))
        masks[-1].mask[channels] = 0
    for l, neurons in removed_ffn.items():
        down = layers[l].mlp.down_proj
        down.bias.data += compensation_bias(down.weight.data, ffn_stats[l].mean, neurons)
        masks.append(ChannelMask(down))
        masks[-1].mask[neurons] = 0
    attn_ids = ctx.attention_slice()
    loss_with_all_biases = SliceEvaluator(ctx.runner, attn_ids, {}).loss()
    for mask in masks:
        mask.remove()

    dropped = {"attn_layers": [], "ffn_layers": []}
    for l, groups in removed_attn.items():
        kv = c.num_key_value_heads_per_layer[l]
        if len(groups) == kv:
            dropped["attn_layers"].append(l)
        keep_kv_groups(model, l, [g for g in range(kv) if g not in groups])
    for l, neurons in removed_ffn.items():
        width = c.intermediate_size_per_layer[l]
        if len(neurons) == width:
            dropped["ffn_layers"].append(l)
        keep_ffn_neurons(model, l, sorted(set(range(width)) - set(neurons.tolist())))
    loss_saved = SliceEvaluator(ctx.runner, attn_ids, {}).loss()
    return {"target_removed": target, "removed_groups": {str(k): v for k, v in removed_attn.items()},
            "bias_dropped_with_removed_sublayers": dropped,
            "slice_loss_with_every_bias": loss_with_all_biases, "slice_loss_as_saved": loss_saved}
