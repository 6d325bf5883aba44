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

QUANTIZATIONS = ("none", "int8", "int4")  # ONNX: fp32, or weight-only MatMulNBits with 8 / 4 bits
