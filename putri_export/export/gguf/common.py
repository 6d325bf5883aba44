"""What every GGUF layout shares: tensor names, the quantizing sink, the hyperparameters, RoPE helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import numpy as np
import torch

from ...errors import PutriError
from ...model import PutriForCausalLM, Widths
from ..formats import GGUF_TYPES, gguf_file_type

QUANT_BLOCK = 32  # Q8_0 / Q4_x / Q5_x block size; also the width of the placeholder FFN


def permute_for_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF → llama.cpp row order for Q/K: per head, interleave the two rotary halves.

    HF rotates (x[:D/2], x[D/2:]) pairs; llama.cpp's normal rope rotates adjacent (x[2i], x[2i+1]) pairs.
    """
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def tensor_name(kind: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=layer) if layer is not None else base) + f".{suffix}"


class TensorSink:
    """Quantizes and adds tensors to the writer; 1-D tensors and rows that do not fit a block stay wide.

    Modes (gguf-py's guarded write order): ``buffer`` adds each tensor (the writer holds them until
    ``write_tensors_to_file``); ``plan`` only declares each tensor's name, type and size (its data may be on the meta
    device); ``stream`` writes each tensor's data at once, in the planned order (one tensor in memory at a time).
    """

    def __init__(self, writer: gguf.GGUFWriter, type_name: str, mode: str = "buffer"):
        self.writer = writer
        self.type_name = type_name
        self.qtype = GGUF_TYPES[type_name][0]
        self.mode = mode
        self.fallback: dict[str, str] = {}

    def type_for(self, name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType | None = None
                 ) -> gguf.GGMLQuantizationType:
        qtype = self.qtype if qtype is None else qtype
        if len(shape) == 1:
            return gguf.GGMLQuantizationType.F32
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if shape[-1] % block:
                self.fallback[name] = "F16"
                return gguf.GGMLQuantizationType.F16
        return qtype

    def add(self, name: str, tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType | None = None) -> None:
        qtype = self.type_for(name, tuple(tensor.shape), qtype)
        if self.mode == "plan":
            self.writer.add_tensor_info(name, *_packed(tuple(tensor.shape), qtype), raw_dtype=qtype)
            return
        data = tensor.detach().to(torch.float32).contiguous().numpy()
        packed = gguf.quants.quantize(data, qtype)
        if self.mode == "stream":
            planned = next((n for part in self.writer.tensors for n in part), None)
            if planned != name:
                raise PutriError(f"GGUF stream out of order: {name} written where {planned} was planned")
            self.writer.write_tensor_data(packed)
        else:
            # Block types are passed as packed bytes; the writer derives the logical shape from them.
            self.writer.add_tensor(name, packed, raw_dtype=qtype)


def _packed(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, numpy dtype and byte count of ``gguf.quants.quantize``'s output for a ``shape`` tensor."""
    if qtype == gguf.GGMLQuantizationType.F32:
        dtype, packed = np.dtype(np.float32), shape
    elif qtype == gguf.GGMLQuantizationType.F16:
        dtype, packed = np.dtype(np.float16), shape
    else:
        dtype, packed = np.dtype(np.uint8), gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return packed, dtype, int(np.prod(packed)) * dtype.itemsize


@dataclass
class Layout:
    """Per-layer widths as an architecture writes them (placeholders may widen a layer) and why."""

    heads: list[int]
    kv: list[int]
    ffn: list[int]
    workarounds: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model: PutriForCausalLM) -> Layout:
        w = Widths.from_config(model.config)
        return cls(w.heads, w.kv_heads, w.ffn)


def write_hparams(writer: gguf.GGUFWriter, model: PutriForCausalLM, layout: Layout, type_name: str,
                  name: str) -> None:
    c = model.config
    heads, kv, ffn = layout.heads, layout.kv, layout.ffn
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    # Written explicitly: otherwise llama.cpp derives the head size from layer 0's head count.
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf_file_type(type_name))
    rope_type = c.rope_parameters.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(c.rope_parameters["factor"]))
    elif rope_type not in ("default", "llama3"):
        raise PutriError(f"RoPE type {rope_type!r} has no GGUF encoding here (supported: default, linear, llama3)")
    writer.add_custom_alignment(gguf.GGUF_DEFAULT_ALIGNMENT)


def llama3_rope_freqs(model: PutriForCausalLM) -> torch.Tensor | None:
    """Llama-3 RoPE scaling has no GGUF key: llama.cpp divides each frequency by ``rope_freqs``."""
    c = model.config
    if c.rope_parameters.get("rope_type") != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](c, "cpu")
    d = c.head_dim
    base = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    return (base / scaled).float()


