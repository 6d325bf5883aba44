"""Model surgery, the physical part of pruning: keep some KV-head groups or FFN neurons of a layer.

A KV-head *group* is one KV head with the query heads that read it. Its channels are the rows of q_proj
(``heads_per_group * head_dim`` of them), of k_proj and v_proj (``head_dim``), and the matching input
columns of o_proj: :func:`group_channels` is the one place that maps groups to channel indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PutriError
from .families import PutriForCausalLM
from .widths import Widths


def group_channels(head_dim: int, heads_per_group: int, groups: Sequence[int]) -> torch.Tensor:
    """Channel indices of KV-head ``groups``: q_proj rows / o_proj columns with ``heads_per_group`` query heads
    per group, k_proj / v_proj rows with 1."""
    width = heads_per_group * head_dim
    if len(groups) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(int(g) * width, (int(g) + 1) * width) for g in groups])


def layer_group_channels(model: PutriForCausalLM, layer: int, groups: Sequence[int] | None = None) -> torch.Tensor:
    """o_proj input channels of ``groups`` of ``layer`` (all of the layer's channels when None)."""
    w = Widths.from_config(model.config)[layer]
    return group_channels(model.config.head_dim, w.group, range(w.kv_heads) if groups is None else groups)


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.data
    b = linear.bias.data if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w)
    if b is not None:
        out.bias.data.copy_(b)
    return out


def keep_kv_groups(model: PutriForCausalLM, layer_idx: int, keep: Sequence[int]) -> None:
    """Keep only the KV heads ``keep`` of a layer (each with its query heads); [] removes attention."""
    config = model.config
    layer = model.model.layers[layer_idx]
    w = Widths.from_config(config)[layer_idx]
    keep = sorted({int(k) for k in keep})
    if any(k < 0 or k >= w.kv_heads for k in keep):
        raise PutriError(f"layer {layer_idx}: KV head indices {keep} out of range 0..{w.kv_heads - 1}")
    if not keep:
        layer.self_attn = layer.input_layernorm = None
        config.set_layer_widths(layer_idx, heads=0, kv_heads=0)
        return
    d = config.head_dim
    q_rows, kv_rows = group_channels(d, w.group, keep), group_channels(d, 1, keep)
    attn = layer.self_attn
    attn.q_proj = _slice_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = _slice_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = _slice_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = _slice_linear(attn.o_proj, cols=q_rows)
    config.set_layer_widths(layer_idx, heads=len(keep) * w.group, kv_heads=len(keep))


def keep_ffn_neurons(model: PutriForCausalLM, layer_idx: int, keep: Sequence[int]) -> None:
    """Keep only the FFN neurons ``keep`` of a layer; [] removes the FFN."""
    layer = model.model.layers[layer_idx]
    width = model.config.intermediate_size_per_layer[layer_idx]
    idx = torch.tensor(sorted({int(k) for k in keep}), dtype=torch.long)
    if len(idx) and (idx.min() < 0 or idx.max() >= width):
        raise PutriError(f"layer {layer_idx}: FFN neuron indices out of range 0..{width - 1}")
    if len(idx) == 0:
        layer.mlp = layer.post_attention_layernorm = None
        model.config.set_layer_widths(layer_idx, ffn=0)
        return
    mlp = layer.mlp
    mlp.gate_proj = _slice_linear(mlp.gate_proj, rows=idx)
    mlp.up_proj = _slice_linear(mlp.up_proj, rows=idx)
    mlp.down_proj = _slice_linear(mlp.down_proj, cols=idx)
    mlp.intermediate_size = len(idx)
    model.config.set_layer_widths(layer_idx, ffn=len(idx))


def slice_randomly(model: PutriForCausalLM, kv_heads: Sequence[int], ffn: Sequence[int],
                   seed: int = 0) -> PutriForCausalLM:
    """Keep a random subset of KV groups and FFN neurons per layer, down to the given widths.

    No pruning criterion: this makes arbitrary per-layer shapes for parity tests, fuzzing, and
    speed measurements that do not depend on quality.
    """
    dense = Widths.from_config(model.config)
    dense.with_kv_and_ffn(kv_heads, ffn).check_within(dense)
    gen = torch.Generator().manual_seed(seed)
    for layer, (have, kv, width) in enumerate(zip(dense, kv_heads, ffn)):
        if kv < have.kv_heads:
            keep_kv_groups(model, layer, torch.randperm(have.kv_heads, generator=gen)[:kv].tolist())
        if width < have.ffn:
            keep_ffn_neurons(model, layer, torch.randperm(have.ffn, generator=gen)[:width].tolist())
    return model
