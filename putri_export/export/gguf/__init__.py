"""GGUF export of a per-layer-width model, for stock llama.cpp: one entry point, :func:`write_gguf`, which
picks the llama.cpp architecture whose graph is per-layer and holds the family's block (``deci`` for Llama and
Qwen2, ``openelm`` for Qwen3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ...atomic import staged
from ...errors import PutriError
from ...model import PutriForCausalLM, Widths
from ...model.blocks import BlockStore
from ..formats import ALL_GGUF_TYPES, GGUF_TYPES, LLAMA_CPP_TYPES
from . import deci, openelm
from .common import Layout, TensorSink, permute_for_rope, write_hparams
from .imatrix import gguf_importance, importance_matrix
from .quantize import quantize_gguf
from .vocab import write_tokenizer


@dataclass
class GGUFExportReport:
    path: str
    type: str
    bytes: int
    layers: list[dict]
    workarounds: list[str] = field(default_factory=list)
    fallback_tensors: dict[str, str] = field(default_factory=dict)  # name -> type used instead (gguf-py types)
    arch: str = deci.ARCH
    tensor_types: dict[str, str] = field(default_factory=dict)  # every tensor's type in the file written
    importance_matrix: bool = False  # llama.cpp's quantizer weighed its rounding by calibration statistics

    def to_dict(self) -> dict:
        return asdict(self)


def write_gguf(model: PutriForCausalLM, tokenizer_dir: Path, out: Path, type_name: str = "f16",
               name: str | None = None, progress: bool = True, blocks: BlockStore | None = None,
               imatrix: dict[str, np.ndarray] | None = None, threads: int | None = None) -> GGUFExportReport:
    """Write ``model`` (and the tokenizer found in ``tokenizer_dir``) to ``out`` atomically.

    ``blocks``: a streamed model's block store: the tensors are declared from the skeleton first, then written
    block by block as each is opened (one block and one converted tensor in memory). K-quant and i-quant types
    are written in f32 first and then quantized by llama.cpp's quantizer, weighing rounding errors by ``imatrix``
    (``imatrix.importance_matrix`` of the model on calibration text) when given."""
    type_name = type_name.lower()
    if type_name in LLAMA_CPP_TYPES:
        return _write_with_llama_quantizer(model, tokenizer_dir, Path(out), type_name, name, progress, blocks,
                                           imatrix, threads)
    if type_name not in GGUF_TYPES:
        raise PutriError(f"unknown GGUF type {type_name!r}: choose one of {', '.join(ALL_GGUF_TYPES)}")
    if imatrix is not None:
        raise PutriError(f"an importance matrix weighs llama.cpp's quantizer; {type_name} is written by gguf-py: use "
                         f"one of {', '.join(LLAMA_CPP_TYPES)}")
    if getattr(model.config, "mlp_bias", False):
        raise PutriError("models with biases on gate_proj/up_proj (mlp_bias) have no GGUF layout here")
    arch = openelm if model.config.qk_norm else deci
    layout = arch.layout(model)  # refuses what the architecture cannot hold, before anything is written
    out = Path(out)
    with staged(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=arch.ARCH)
        write_hparams(writer, model, layout, type_name, name or out.stem)
        write_tokenizer(writer, tokenizer_dir, model.config.vocab_size)
        if blocks is None:
            sink = TensorSink(writer, type_name)
            arch.write_tensors(sink, model, layout, type_name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        else:
            arch.write_tensors(TensorSink(writer, type_name, mode="plan"), model, layout, type_name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            sink = TensorSink(writer, type_name, mode="stream")
            arch.write_tensors(sink, model, layout, type_name, layers=blocks.in_turn(progress, "writing GGUF"))
        writer.close()
    return GGUFExportReport(str(out), type_name, out.stat().st_size, Widths.from_config(model.config).to_json(),
                            layout.workarounds, sink.fallback, arch.ARCH, tensor_types(out))


def tensor_types(path: Path) -> dict[str, str]:
    """Every tensor's type in the GGUF ``path`` (its header only is read)."""
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _write_with_llama_quantizer(model: PutriForCausalLM, tokenizer_dir: Path, out: Path, type_name: str,
                                name: str | None, progress: bool, blocks: BlockStore | None,
                                imatrix: dict[str, np.ndarray] | None, threads: int | None) -> GGUFExportReport:
    with staged(out) as tmp:
        f32 = tmp.with_name(tmp.name + ".f32")
        try:
            report = write_gguf(model, tokenizer_dir, f32, "f32", name or out.stem, progress, blocks)
            importance = gguf_importance(imatrix, list(report.tensor_types)) if imatrix else None
            quantize_gguf(f32, tmp, type_name, importance, threads)
        finally:
            f32.unlink(missing_ok=True)
    report.path, report.type, report.bytes = str(out), type_name, out.stat().st_size
    report.tensor_types, report.importance_matrix = tensor_types(out), bool(imatrix)
    return report


__all__ = ["GGUFExportReport", "Layout", "importance_matrix", "permute_for_rope", "tensor_types", "write_gguf",
           "write_tokenizer"]
