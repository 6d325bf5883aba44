"""Export + verify as one step: an artifact reaches its final name only after it passed parity in its runtime."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PutriError
from .checks import ParityCheck
from .formats import FORMATS


@dataclass
class ExportResult:
    path: Path
    format: str
    variant: str
    written: bool  # False: parity failed, nothing at ``path``
    bytes: int = 0
    export_seconds: float = 0.0
    parity: object | None = None  # verify.ParityReport, None when not verified
    notes: list[str] = field(default_factory=list)  # exporter workarounds, fallback tensor types
    tensor_types: dict[str, str] = field(default_factory=dict)  # GGUF: every tensor's type in the file


def artifact_bytes(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def export_verified(model, tokenizer, source: Path, out: Path, fmt: str, variant: str, *, verify: bool = True,
                    check: ParityCheck | None = None, threads: int | None = None, progress: bool = True,
                    blocks=None, calibration=None, onnx_attention: str = "gqa",
                    int4_method: str | None = None) -> ExportResult:
    """Write ``model`` as ``fmt`` (``gguf`` type or ONNX quantization ``variant``) under a staging name beside
    ``out``, verify it against ``model`` in its own runtime, and rename it to ``out`` only if it passed.

    ``source``: the HF folder ``model`` came from (tokenizer files). ``blocks``: the block store of a streamed
    ``model`` (written one block or tensor at a time and verified against a streamed reference). ``calibration``:
    token windows [N, T] the quantizer learns from — llama.cpp's K-/i-quants weigh their rounding by the importance
    matrix computed on them; ONNX int4's GPTQ methods need them. ``onnx_attention``: the ONNX graph's attention
    (``formats.ONNX_ATTENTIONS``); ``int4_method``: how ONNX int4 rounds (``onnx.quantize.INT4_METHODS``). A failed
    parity check returns ``written=False``; an export error raises. Either way nothing is left at ``out`` or
    beside it.
    """
    import torch

    from ..atomic import commit, remove, staging_path
    from .verify import verify_artifact

    if fmt not in FORMATS:
        raise PutriError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(out, "unverified")
    result = ExportResult(out, fmt, variant, written=False)
    try:
        t0 = time.perf_counter()
        if fmt == "gguf":
            from .formats import LLAMA_CPP_TYPES
            from .gguf import importance_matrix, write_gguf

            imatrix = None
            if calibration is not None and variant in LLAMA_CPP_TYPES:
                imatrix = importance_matrix(model, calibration, blocks, progress=progress)
            with torch.no_grad():
                report = write_gguf(model, source, tmp, variant, name=out.stem, progress=progress, blocks=blocks,
                                    imatrix=imatrix, threads=threads)
            result.notes = list(report.workarounds) + [f"{name} kept as {kind} (rows not a multiple of the block)"
                                                       for name, kind in report.fallback_tensors.items()]
            result.tensor_types = report.tensor_types
        else:
            from .onnx import DEFAULT_INT4_METHOD, gptq_weights, write_onnx

            method = int4_method or DEFAULT_INT4_METHOD
            codes = None
            if variant == "int4" and method.startswith("gptq"):
                if calibration is None:
                    raise PutriError(f"ONNX int4 method {method} needs calibration text (its Gram matrices): give "
                                     "calibration windows, or choose int4 method rtn")
                codes = gptq_weights(model, calibration, blocks, symmetric=method == "gptq-sym", progress=progress)
            write_onnx(model, source, tmp, variant, overwrite=True, blocks=blocks, attention=onnx_attention,
                       int4_method=method, gptq_codes=codes)
        result.export_seconds = time.perf_counter() - t0
        if verify:
            result.parity = verify_artifact(tmp, source, check, threads, progress=progress,
                                            loaded=(model, tokenizer, blocks))
            if not result.parity.passed:
                return result
        commit(tmp, out)
        if result.parity is not None:
            result.parity.artifact = str(out)  # it was checked under the staging name
        result.written = True
        result.bytes = artifact_bytes(out)
        return result
    finally:
        remove(tmp)
