"""What the exporters write: formats, GGUF types, ONNX quantizations (names only; importable without torch)."""

from __future__ import annotations

import gguf

FORMATS = ("gguf", "onnx")

GGUF_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (gguf.GGMLQuantizationType.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (gguf.GGMLQuantizationType.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}
LOW_BIT = {"q4_0", "q4_1", "q5_0", "q5_1"}
# Written by llama.cpp's own quantizer (llama_model_quantize) from an f32 GGUF, optionally with an importance
# matrix: its per-tensor mixes (the _M recipes keep some tensors wider) and its fallbacks for rows that are not a
# multiple of the 256-value super-block. i-quants that cannot run without an importance matrix are not offered.
LLAMA_CPP_TYPES = {
    "q3_k_m": gguf.LlamaFileType.MOSTLY_Q3_K_M,
    "q4_k_s": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_s": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
    "iq4_nl": gguf.LlamaFileType.MOSTLY_IQ4_NL,
    "iq4_xs": gguf.LlamaFileType.MOSTLY_IQ4_XS,
}
ALL_GGUF_TYPES = (*GGUF_TYPES, *LLAMA_CPP_TYPES)


def gguf_file_type(type_name: str) -> gguf.LlamaFileType:
    """``general.file_type`` of a GGUF of our type ``type_name``."""
    return GGUF_TYPES[type_name][1] if type_name in GGUF_TYPES else LLAMA_CPP_TYPES[type_name]


# ONNX: fp32, or weight-only MatMulNBits with 8 / 4 bits (int8 compute; 8 bits symmetric round to nearest)
QUANTIZATIONS = ("none", "int8", "int4")
# How 4-bit weights are rounded. Integer zero points (or none) keep MatMulNBits on its fast int8 kernel; HQQ's
# fitted float zero points do not (it decoded 8x slower than int8 on SmolLM2). GPTQ (gptq.py) from calibration Gram
# matrices is the default: SmolLM2-135M, 16 × 512 WikiText-2 windows vs fp32: rtn +26.5%, gptq +13.9%, gptq-sym
# +16.7%, at rtn's speed (results/onnx-int4). SmolLM2's weights are themselves Q4_1-dequantized, a grid HQQ's float
# zero points reproduce exactly, so HQQ looks lossless there and is no judge. tools/onnx_int4.py writes the methods
# that need no calibration, for comparison.
INT4_METHODS = {
    "rtn": "round to nearest, symmetric (no zero points)",
    "rtn-asym": "round to nearest, min/max with 4-bit integer zero points",
    "k-quant": "llama.cpp-style search of each block's scale and integer zero point (onnxruntime's k_quant)",
    "hqq": "HQQ: fitted scales and float zero points (slow kernel)",
    "gptq": "GPTQ from calibration text (rounding errors moved onto later columns), integer zero points",
    "gptq-sym": "GPTQ from calibration text onto the symmetric grid (no zero points)",
}
DEFAULT_INT4_METHOD = "gptq"
# ONNX attention: "gqa" = com.microsoft.GroupQueryAttention per layer, KV cache written in place in a buffer bound as
# both past and present (ONNX Runtime, onnxruntime-genai); "standard" = portable ONNX ops, the cache concatenated
# and returned whole every step.
ONNX_ATTENTIONS = ("gqa", "standard")
