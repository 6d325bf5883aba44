"""Deployable artifacts: GGUF for llama.cpp and ONNX for ONNX Runtime, each proven equal to its PyTorch model.

Entry point: :func:`export_verified` (write under a staging name, verify in the artifact's own runtime, rename
only if it passed). Inside: ``gguf`` and ``onnx`` (the writers), ``verify`` (the parity check and tolerances),
``formats`` and ``checks`` (the names and tolerances every part agrees on).
"""

from .._lazy import lazy_exports
from .checks import TOLERANCES, ParityCheck, Tolerance
from .formats import FORMATS, GGUF_TYPES, QUANTIZATIONS

__getattr__ = lazy_exports(__name__, {
    "export_verified": ".verified", "ExportResult": ".verified", "artifact_bytes": ".verified",
    "ParityReport": ".verify", "verify_artifact": ".verify"})
__all__ = ["FORMATS", "GGUF_TYPES", "QUANTIZATIONS", "TOLERANCES", "ExportResult", "ParityCheck", "ParityReport",
           "Tolerance", "artifact_bytes", "export_verified", "verify_artifact"]
