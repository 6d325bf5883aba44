"""Attention as ONNX Runtime's ``com.microsoft.GroupQueryAttention``: the KV cache written in place.

A torch custom op stands for the contrib op while the decoder is traced, and a translation turns it into the
node. The model's own code computes q/k/v, their norms and RoPE; only the cache update and the attention move
into the op, one node per attention layer with that layer's ``num_heads`` / ``kv_num_heads``. Bound by IO binding
to one buffer as both ``past_key_values.{l}.*`` and ``present.{l}.*`` ([batch, K_l, capacity, head_dim]), the new
keys and values are written into the buffer instead of the whole cache being copied every step.

The reference implementation below defines the semantics the exported graph is checked against: the cache buffer
holds ``seqlens_k + 1 - new`` valid positions before the step; the new keys land right after them; attention is
causal over the valid positions (right padding only, as in the contrib op).
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

ATTENTION_NAME = "putri_group_query_attention"


@torch.library.custom_op("putri::group_query_attention", mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                          past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
                          num_heads: int, kv_num_heads: int, scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query [B, S, H·D], key/value [B, S, K·D], past [B, K, P, D], seqlens_k [B] int32 (total length − 1 per
    row), total_sequence_length: scalar int32. Returns the output [B, S, H·D] and the present cache
    [B, K, max(P, total), D] (the past buffer with the new positions written when it is large enough)."""
    batch, new, _ = query.shape
    dim = query.shape[-1] // num_heads
    total = int(total_sequence_length)
    length = max(past_key.shape[2], total)
    present = []
    for past, fresh in ((past_key, key), (past_value, value)):
        buffer = past.new_zeros(batch, kv_num_heads, length, dim)
        buffer[:, :, : past.shape[2]] = past
        fresh = fresh.view(batch, new, kv_num_heads, dim).transpose(1, 2)
        for b in range(batch):
            end = int(seqlens_k[b]) + 1
            buffer[b, :, end - new: end] = fresh[b]
        present.append(buffer)
    q = query.view(batch, new, num_heads, dim).transpose(1, 2)
    out = torch.empty_like(q)
    for b in range(batch):
        end = int(seqlens_k[b]) + 1
        k = present[0][b:b + 1, :, :end].repeat_interleave(num_heads // kv_num_heads, dim=1)
        v = present[1][b:b + 1, :, :end].repeat_interleave(num_heads // kv_num_heads, dim=1)
        positions = torch.arange(end - new, end)[:, None]
        mask = torch.arange(end)[None, :] <= positions
        out[b:b + 1] = torch.nn.functional.scaled_dot_product_attention(q[b:b + 1], k, v, attn_mask=mask,
                                                                         scale=scale)
    return out.transpose(1, 2).reshape(batch, new, -1), present[0], present[1]


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads, kv_num_heads, scale):
    # Shapes only (tracing). The present length is data-dependent; the buffer's is the in-place case's.
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def translations() -> dict:
    """``torch.onnx.export``'s custom translation of :func:`group_query_attention` into the contrib op."""
    from .contrib import group_query_attention_onnx

    return {torch.ops.putri.group_query_attention.default: group_query_attention_onnx}


class CacheBuffers:
    """What the attention layers read and write during one traced step: each layer's past buffers in, its
    present buffers out, and the sequence lengths every layer shares."""

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor):
        self.past = past
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Valid positions per row after this step, minus one; the longest row's total (the mask's width).
        self.seqlens_k = (attention_mask.sum(dim=1) - 1).to(torch.int32)
        self.total_sequence_length = torch.full((), attention_mask.shape[1], dtype=torch.int32)


def group_query_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                                  cache_buffers: CacheBuffers | None = None, **kwargs):
    """A transformers attention function: q [B, H, S, D] and the step's new k/v [B, K, S, D] (no transformers
    cache is passed, so nothing was concatenated) → [B, S, H, D], the cache written through ``cache_buffers``."""
    if cache_buffers is None:
        raise RuntimeError(f"{ATTENTION_NAME} runs only inside the ONNX export's traced decoder")
    batch, heads, new, dim = query.shape
    kv_heads = key.shape[1]
    past_key, past_value = cache_buffers.past[module.layer_idx]
    flat = [t.transpose(1, 2).reshape(batch, new, -1) for t in (query, key, value)]
    out, present_key, present_value = torch.ops.putri.group_query_attention(
        *flat, past_key, past_value, cache_buffers.seqlens_k, cache_buffers.total_sequence_length,
        heads, kv_heads, float(scaling if scaling is not None else 1 / math.sqrt(dim)))
    cache_buffers.present[module.layer_idx] = (present_key, present_value)
    return out.view(batch, new, heads, dim), None


def _no_mask(*args, **kwargs) -> None:
    return None  # the contrib op masks causally from seqlens_k


AttentionInterface.register(ATTENTION_NAME, group_query_attention_forward)
AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
