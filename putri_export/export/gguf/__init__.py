"""GGUF export of a per-layer-width model, for stock llama.cpp: one entry point, :func:`write_gguf`, which
picks the llama.cpp architecture whose graph is per-layer and holds the family's block (``deci`` for Llama and
Qwen2, ``openelm`` for Qwen3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf

from ...atomic import staged
from ...errors import PutriError
from ...model import PutriForCausalLM, Widths
from ...model.blocks import BlockStore
from ..formats import GGUF_TYPES
from . import deci, openelm
from .common import Layout, TensorSink, permute_for_rope, write_hparams
from .vocab import write_tokenizer


@dataclass
class GGUFExportReport:
    path: str
    type: str
    bytes: int
    layers: list[dict]
    workarounds: list[str] = field(default_factory=list)
    fallback_tensors: dict[str, str] = field(default_factory=dict)  # name -> type used instead
    arch: str = deci.ARCH

    def to_dict(self) -> dict:
        return asdict(self)


def write_gguf(model: PutriForCausalLM, tokenizer_dir: Path, out: Path, type_name: str = "f16",
               name: str | None = None, progress: bool = True, blocks: BlockStore | None = None) -> GGUFExportReport:
    """Write ``model`` (and the tokenizer found in ``tokenizer_dir``) to ``out`` atomically.

    ``blocks``: a streamed model's block store: the tensors are declared from the skeleton first, then written
    block by block as each is opened (one block and one converted tensor in memory)."""
    type_name = type_name.lower()
    if type_name not in GGUF_TYPES:
        raise PutriError(f"unknown GGUF type {type_name!r}: choose one of {', '.join(GGUF_TYPES)}")
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
                            layout.workarounds, sink.fallback, arch.ARCH)


__all__ = ["GGUFExportReport", "Layout", "permute_for_rope", "write_gguf", "write_tokenizer"]
