"""Weight-only quantization of an exported ONNX decoder with onnxruntime's own quantizers (MatMulNBits).

Every MatMul weight becomes a MatMulNBits node, blocks of 32 along K, computed by the CPU kernel's int8 path
(``accuracy_level`` 4). Activations are never quantized per tensor: SmolLM2's outlier channels made
``quantize_dynamic``'s per-tensor uint8 activations cost +60% perplexity (MatMulNBits int8: +1%).
"""

from __future__ import annotations

import logging
from pathlib import Path

NBITS_BLOCK = 32
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8-quantized activation blocks: the CPU kernel's fast path

# How 4-bit weights are rounded. Integer zero points (or none) keep MatMulNBits on its fast int8 kernel; HQQ's
# fitted float zero points do not (it decoded 4x slower than int8 on SmolLM2).
INT4_METHODS = {
    "rtn": "round to nearest, symmetric (no zero points)",
    "rtn-asym": "round to nearest, min/max with 4-bit integer zero points",
    "k-quant": "llama.cpp-style search of each block's scale and integer zero point (onnxruntime's k_quant)",
    "hqq": "HQQ: fitted scales and float zero points (slow kernel)",
}
DEFAULT_INT4_METHOD = "k-quant"


def _config(bits: int, method: str):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if bits == 8 or method in ("rtn", "rtn-asym"):
        return nbits.DefaultWeightOnlyQuantConfig(block_size=NBITS_BLOCK, is_symmetric=bits == 8 or method == "rtn",
                                                  bits=bits, accuracy_level=ACCURACY_LEVEL)
    if method == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=NBITS_BLOCK, bits=4)
    if method == "k-quant":
        return nbits.KQuantWeightOnlyQuantConfig()
    raise ValueError(f"unknown int4 method {method!r}: choose one of {', '.join(INT4_METHODS)}")


def quantize_weights(src: Path, dst: Path, bits: int, method: str = DEFAULT_INT4_METHOD) -> None:
    """``src`` (fp32 graph + external data) → ``dst`` with every MatMul weight in ``bits`` bits (8: symmetric round
    to nearest; 4: ``method``, one of :data:`INT4_METHODS`)."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model = onnx.load(str(src))
    # the k_quant path takes block size, symmetry and accuracy level from the quantizer, not its config
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=NBITS_BLOCK, is_symmetric=False,
                                           accuracy_level=ACCURACY_LEVEL, algo_config=_config(bits, method))
    quantizer.process()
    graph = quantizer.model.model.graph
    for node in graph.node:  # HQQ leaves accuracy_level unset (fp32 compute): ask for the int8 kernel too
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", ACCURACY_LEVEL))
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=True)
    for f in dst.parent.glob(dst.name + "*"):
        f.chmod(0o644)  # the quantizer writes its data file owner-only
