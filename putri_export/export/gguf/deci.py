"""The ``deci`` layout: Llama and Qwen2 blocks at per-layer widths.

Architecture choice (read from llama.cpp's loader and graph, and checked by the parity tests):
llama.cpp reads ``head_count``, ``head_count_kv`` and ``feed_forward_length`` as per-layer arrays for
every architecture, but the ``llama`` graph and tensor loader size every layer like layer 0, so a GGUF
whose layers differ fails to load. The ``deci`` architecture (Nemotron-51B) is per-layer throughout:
tensors, graph and KV cache, with attention-free (0 heads) and FFN-free layers. Its graph has two
defects we write around, both exactly (the added parts contribute zeros):

* layer 0 with 0 heads breaks the head-size derivation at load time → write it as deci's
  "linear attention" (head_count > 0, head_count_kv = 0, an all-zero ``attn_output``);
* a layer with attention and ``feed_forward_length`` 0 drops its attention output (the graph
  ``continue``s before adding it) → give it a tiny FFN (one quantization block of neurons) with an
  all-zero ``ffn_down``.

A layer with neither attention nor FFN is an identity in deci and needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import gguf
import torch
from torch import nn

from ...model import PutriForCausalLM
from ..formats import LOW_BIT
from .common import QUANT_BLOCK, Layout, TensorSink, llama3_rope_freqs, permute_for_rope, tensor_name

ARCH = "deci"


def layout(model: PutriForCausalLM) -> Layout:
    """The model's widths with deci's workarounds (each contributing exactly zero)."""
    c = model.config
    out = Layout.of(model)
    heads, kv, ffn, workarounds = out.heads, out.kv, out.ffn, out.workarounds
    if not any(heads):  # llama.cpp cannot create a context without a single KV-cache layer
        heads[0], kv[0] = c.num_attention_heads // c.num_key_value_heads, 1
        workarounds.append("no layer has attention: layer 0 written with one all-zero KV-head group "
                           "(zero attn_output) so that llama.cpp has a KV cache")
    elif heads[0] == 0:
        heads[0] = c.num_attention_heads  # "linear attention" with an all-zero output projection
        workarounds.append("layer 0 has no attention: written as deci linear attention with zero attn_output")
    last = c.num_hidden_layers - 1
    for layer in range(c.num_hidden_layers):
        # deci skips an FFN-free layer's residual update, dropping its attention output; in the last layer
        # that also drops the output-row selection, and llama.cpp aborts on the unallocated input.
        if ffn[layer] == 0 and (heads[layer] > 0 or layer == last):
            ffn[layer] = QUANT_BLOCK
            what = "attention but no FFN" if heads[layer] > 0 else "no FFN and is the last layer"
            workarounds.append(f"layer {layer} has {what}: placeholder FFN of {QUANT_BLOCK} "
                               "neurons with zero ffn_down")
    return out


def write_tensors(sink: TensorSink, model: PutriForCausalLM, layout: Layout, type_name: str,
                  layers: Iterable[nn.Module] | None = None) -> None:
    """Every tensor, in file order; ``layers``: the blocks (default the model's; a streamed export opens them in
    turn)."""
    heads, kv, ffn = layout.heads, layout.kv, layout.ffn
    T = gguf.MODEL_TENSOR
    c = model.config
    # llama.cpp's own low-bit recipes keep embeddings wider; Q8_0 is the widest block type gguf-py writes.
    emb_type = gguf.GGMLQuantizationType.Q8_0 if type_name in LOW_BIT else None
    sink.add(tensor_name(T.TOKEN_EMBD), model.model.embed_tokens.weight, emb_type)
    sink.add(tensor_name(T.OUTPUT_NORM), model.model.norm.weight)
    if not c.tie_word_embeddings:
        sink.add(tensor_name(T.OUTPUT), model.lm_head.weight, emb_type)
    if (freqs := llama3_rope_freqs(model)) is not None:
        sink.add(tensor_name(T.ROPE_FREQS), freqs)
    d = c.hidden_size
    for i, layer in enumerate(model.model.layers if layers is None else layers):
        attn, mlp = layer.self_attn, layer.mlp
        if attn is not None:
            sink.add(tensor_name(T.ATTN_NORM, i), layer.input_layernorm.weight)
            for kind, proj, n_heads in ((T.ATTN_Q, attn.q_proj, heads[i]), (T.ATTN_K, attn.k_proj, kv[i]),
                                        (T.ATTN_V, attn.v_proj, None)):
                # Q/K rows (and Qwen2's biases on them) go to llama.cpp's rotary order; V stays.
                order = (lambda t, n=n_heads: permute_for_rope(t, n)) if n_heads else (lambda t: t)
                sink.add(tensor_name(kind, i), order(proj.weight))
                if proj.bias is not None:
                    sink.add(tensor_name(kind, i, "bias"), order(proj.bias))
            sink.add(tensor_name(T.ATTN_OUT, i), attn.o_proj.weight)
            if attn.o_proj.bias is not None:  # FLAP compensation
                sink.add(tensor_name(T.ATTN_OUT, i, "bias"), attn.o_proj.bias)
        elif heads[i] > 0:  # layer-0 workarounds, contributing exactly zero
            sink.add(tensor_name(T.ATTN_NORM, i), torch.ones(d))
            if kv[i] > 0:  # one all-zero KV-head group
                q, k = heads[i] * c.head_dim, kv[i] * c.head_dim
                for kind, rows in ((T.ATTN_Q, q), (T.ATTN_K, k), (T.ATTN_V, k)):
                    sink.add(tensor_name(kind, i), torch.zeros(rows, d))
                sink.add(tensor_name(T.ATTN_OUT, i), torch.zeros(d, q))
            else:  # linear attention
                sink.add(tensor_name(T.ATTN_OUT, i), torch.zeros(d, d))
        if mlp is not None:
            sink.add(tensor_name(T.FFN_NORM, i), layer.post_attention_layernorm.weight)
            sink.add(tensor_name(T.FFN_GATE, i), mlp.gate_proj.weight)
            sink.add(tensor_name(T.FFN_UP, i), mlp.up_proj.weight)
            sink.add(tensor_name(T.FFN_DOWN, i), mlp.down_proj.weight)
            if mlp.down_proj.bias is not None:
                sink.add(tensor_name(T.FFN_DOWN, i, "bias"), mlp.down_proj.bias)
        elif ffn[i] > 0:  # placeholder FFN contributing exactly zero
            sink.add(tensor_name(T.FFN_NORM, i), torch.ones(d))
            sink.add(tensor_name(T.FFN_GATE, i), torch.zeros(ffn[i], d))
            sink.add(tensor_name(T.FFN_UP, i), torch.zeros(ffn[i], d))
            sink.add(tensor_name(T.FFN_DOWN, i), torch.zeros(d, ffn[i]))


