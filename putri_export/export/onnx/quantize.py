"""Weight-only quantization of an exported ONNX decoder with onnxruntime's own quantizers (MatMulNBits).

Every MatMul weight becomes a MatMulNBits node, blocks of 32 along K, computed by the CPU kernel's int8 path
(``accuracy_level`` 4). A tied output projection (``MatMul(h, Transpose(embedding))``, SmolLM2 and Llama-3.2) is
first given its own transposed weight so that it is quantized too: it is the largest matrix read per decoded token
(SmolLM2: 113 MB in fp32, a fifth of the parameters), and kept in 8 bits when the rest is in 4 (as llama.cpp keeps
``output.weight`` in Q6_K in its 4-bit types). The embedding lookup stays fp32 (one row per token).
Activations are never quantized per tensor: SmolLM2's outlier channels made ``quantize_dynamic``'s per-tensor uint8
activations cost +60% perplexity (MatMulNBits int8: +1%).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..formats import DEFAULT_INT4_METHOD, INT4_METHODS  # noqa: F401 (the onnx package re-exports them)

NBITS_BLOCK = 32
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8-quantized activation blocks: the CPU kernel's fast path



def _config(bits: int, method: str):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if bits == 8 or method in ("rtn", "rtn-asym", "gptq", "gptq-sym"):  # gptq: rtn's nodes, GPTQ's codes then
        symmetric = bits == 8 or method in ("rtn", "gptq-sym")
        return nbits.DefaultWeightOnlyQuantConfig(block_size=NBITS_BLOCK, is_symmetric=symmetric, bits=bits,
                                                  accuracy_level=ACCURACY_LEVEL)
    if method == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=NBITS_BLOCK, bits=4)
    if method == "k-quant":
        return nbits.KQuantWeightOnlyQuantConfig()
    raise ValueError(f"unknown int4 method {method!r}: choose one of {', '.join(INT4_METHODS)}")


def untie_output_projection(model) -> list[str]:
    """Give every ``MatMul(x, Transpose(W))`` with an initializer ``W`` its own transposed initializer (the quantizer
    takes only initializer weights); drops the Transpose when nothing else reads it. Returns the MatMul nodes' names."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    untied = []
    for node in graph.node:
        source = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[source.input[0]])  # (onnx.load read the external data)
        name = f"{source.input[0]}.transposed"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), name))
        node.input[1] = name
        untied.append(node.name)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] not in used]:
        graph.node.remove(node)
    return untied


def _quantize(model, config, bits: int, only: list[str] | None = None, exclude: list[str] = ()):
    """Every MatMul of ``model`` but ``exclude`` (or only the nodes ``only``) to MatMulNBits."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if only is not None:  # (its nodes_to_include adds nodes to the MatMuls; it does not restrict them)
        exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in only]

    # the k_quant path takes block size, symmetry and accuracy level from the quantizer, not its config
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=NBITS_BLOCK, is_symmetric=False,
                                           accuracy_level=ACCURACY_LEVEL, algo_config=config,
                                           nodes_to_exclude=list(exclude))
    quantizer.process()
    return quantizer.model.model


def _weight_fingerprints(model) -> dict[str, str]:
    """MatMul weight initializer → :func:`gptq.fingerprint` of its data."""
    from onnx import numpy_helper

    from .gptq import fingerprint

    initializers = {i.name: i for i in model.graph.initializer}
    return {n.input[1]: fingerprint(numpy_helper.to_array(initializers[n.input[1]])) for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in initializers}


def _write_codes(model, fingerprints: dict[str, str], codes: dict[str, tuple]) -> int:
    """Replace the 4-bit MatMulNBits nodes' weights and scales by GPTQ's (found by the fingerprint of the weight
    each node was made from); every 4-bit node must have codes. Returns how many nodes were rewritten."""
    from onnx import numpy_helper

    from ...errors import PutriError

    initializers = {i.name: i for i in model.graph.initializer}
    done = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or not any(a.name == "bits" and a.i == 4 for a in node.attribute):
            continue
        source = node.input[1].removesuffix("_Q4")
        found = codes.get(fingerprints.get(source, ""))
        if found is None:
            raise PutriError(f"GPTQ: no codes for the 4-bit MatMul {node.name} (weight {source}): the calibration "
                             "pass did not see this weight; export int4 with --int4-method rtn")
        if len(node.input[1:4]) != len(found):
            raise PutriError(f"GPTQ codes for {node.name} and the node disagree on zero points")
        for name, value in zip(node.input[1:4], found):
            old = initializers[name]
            if tuple(old.dims) != value.shape:
                raise PutriError(f"GPTQ codes for {node.name} have shape {value.shape}, the node {tuple(old.dims)}")
            old.CopyFrom(numpy_helper.from_array(value, name))
        done += 1
    return done


def quantize_weights(src: Path, dst: Path, bits: int, method: str = DEFAULT_INT4_METHOD,
                     gptq_codes: dict[str, tuple] | None = None) -> None:
    """``src`` (fp32 graph + external data) → ``dst`` with every MatMul weight in ``bits`` bits (8: symmetric round
    to nearest; 4: ``method``, one of :data:`INT4_METHODS`; ``gptq``/``gptq-sym`` take ``gptq_codes`` from
    :func:`gptq.gptq_weights` of the same model, with the same symmetry)."""
    import onnx

    from ...errors import PutriError

    gptq = bits == 4 and method.startswith("gptq")
    if gptq and not gptq_codes:
        raise PutriError("int4 method gptq needs calibration text (GPTQ's Gram matrices): give --gptq-data")

    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model = onnx.load(str(src))
    output = untie_output_projection(model)
    if bits == 4 and output:
        model = _quantize(model, _config(8, "rtn"), bits=8, only=output)
    fingerprints = _weight_fingerprints(model) if gptq else {}
    model = _quantize(model, _config(bits, method), bits=bits, exclude=output if bits == 4 else [])
    if fingerprints:
        _write_codes(model, fingerprints, gptq_codes)
    graph = model.graph
    for node in graph.node:  # HQQ leaves accuracy_level unset (fp32 compute): ask for the int8 kernel too
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", ACCURACY_LEVEL))
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data", size_threshold=1024)
    for f in dst.parent.glob(dst.name + "*"):
        f.chmod(0o644)  # the quantizer writes its data file owner-only
