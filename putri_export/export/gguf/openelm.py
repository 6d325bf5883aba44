"""The ``openelm`` layout: Qwen3 blocks (per-head q/k RMSNorm) at per-layer widths.

Read from llama.cpp's ``openelm`` loader and graph (and checked by the parity tests): every layer's head count,
KV-head count and FFN width are its own; Q, K and V are one fused ``attn_qkv`` (Q heads, then K, then V); q/k
norms are one ``head_dim`` vector each, as in Qwen3; RoPE is NEOX (HF's rotary order, no permutation); the
output projection is always ``token_embd`` (tied) and nothing has a bias. Every layer has attention and an FFN,
so an empty sub-block is written as a placeholder contributing exactly zero: one KV-head group with all-zero
projections, or one quantization block of FFN neurons with an all-zero ``ffn_down``.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf
import torch
from torch import nn

from ...errors import PutriError
from ...model import PutriForCausalLM
from ..formats import LOW_BIT
from .common import QUANT_BLOCK, Layout, TensorSink, tensor_name

ARCH = "openelm"


def layout(model: PutriForCausalLM) -> Layout:
    c = model.config
    if not c.tie_word_embeddings:
        raise PutriError("untied Qwen3 (lm_head separate from embed_tokens, as in Qwen3-8B and larger) has no "
                         "per-layer-width GGUF architecture: llama.cpp's openelm, the one with q/k norms, always "
                         "ties the output to token_embd; export ONNX or the HF checkpoint instead")
    if c.output_projection_bias:
        raise PutriError("o_proj/down_proj biases (FLAP's compensation) cannot be written in llama.cpp's openelm "
                         "layout (no biases); prune Qwen3 for GGUF with putri, 2ssp or shortgpt")
    if (rope := c.rope_parameters.get("rope_type", "default")) != "default":
        raise PutriError(f"RoPE type {rope!r} has no encoding in llama.cpp's openelm layout (default only)")
    out = Layout.of(model)
    group = c.num_attention_heads // c.num_key_value_heads
    for layer in range(c.num_hidden_layers):
        if out.kv[layer] == 0:
            out.heads[layer], out.kv[layer] = group, 1
            out.workarounds.append(f"layer {layer} has no attention: one all-zero KV-head group (openelm layers "
                                   "always attend)")
        if out.ffn[layer] == 0:
            out.ffn[layer] = QUANT_BLOCK
            out.workarounds.append(f"layer {layer} has no FFN: placeholder FFN of {QUANT_BLOCK} neurons with zero "
                                   "ffn_down")
    return out


def write_tensors(sink: TensorSink, model: PutriForCausalLM, layout: Layout, type_name: str,
                  layers: Iterable[nn.Module] | None = None) -> None:
    """Every tensor, in file order; ``layers``: the blocks (default the model's; a streamed export opens them in
    turn)."""
    T = gguf.MODEL_TENSOR
    c = model.config
    d, hd = c.hidden_size, c.head_dim
    emb_type = gguf.GGMLQuantizationType.Q8_0 if type_name in LOW_BIT else None
    sink.add(tensor_name(T.TOKEN_EMBD), model.model.embed_tokens.weight, emb_type)
    sink.add(tensor_name(T.OUTPUT_NORM), model.model.norm.weight)
    for i, layer in enumerate(model.model.layers if layers is None else layers):
        attn, mlp = layer.self_attn, layer.mlp
        if attn is not None:
            sink.add(tensor_name(T.ATTN_NORM, i), layer.input_layernorm.weight)
            sink.add(tensor_name(T.ATTN_QKV, i), torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                                            attn.v_proj.weight]))
            sink.add(tensor_name(T.ATTN_Q_NORM, i), attn.q_norm.weight)
            sink.add(tensor_name(T.ATTN_K_NORM, i), attn.k_norm.weight)
            sink.add(tensor_name(T.ATTN_OUT, i), attn.o_proj.weight)
        else:
            q, kv = layout.heads[i] * hd, layout.kv[i] * hd
            sink.add(tensor_name(T.ATTN_NORM, i), torch.ones(d))
            sink.add(tensor_name(T.ATTN_QKV, i), torch.zeros(q + 2 * kv, d))
            sink.add(tensor_name(T.ATTN_Q_NORM, i), torch.ones(hd))
            sink.add(tensor_name(T.ATTN_K_NORM, i), torch.ones(hd))
            sink.add(tensor_name(T.ATTN_OUT, i), torch.zeros(d, q))
        if mlp is not None:
            norm, gate, up, down = (layer.post_attention_layernorm.weight, mlp.gate_proj.weight, mlp.up_proj.weight,
                                    mlp.down_proj.weight)
        else:
            n = layout.ffn[i]
            norm, gate, up, down = torch.ones(d), torch.zeros(n, d), torch.zeros(n, d), torch.zeros(d, n)
        sink.add(tensor_name(T.FFN_NORM, i), norm)
        sink.add(tensor_name(T.FFN_GATE, i), gate)
        sink.add(tensor_name(T.FFN_UP, i), up)
        sink.add(tensor_name(T.FFN_DOWN, i), down)
