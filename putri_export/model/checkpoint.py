"""Saving a per-layer-width model as a Hugging Face checkpoint (safetensors), whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..atomic import staged
from ..errors import PutriError
from .families import PutriForCausalLM

# What a pruned checkpoint's widths came from (the source model, settings, widths): kept with any checkpoint made
# from it, read for its widths and its dense model.
PRUNING_REPORTS = ("pruning_report.json", "search_report.json")
# Files the HF tokenizer does not re-save but exporters need (SentencePiece scores for GGUF).
TOKENIZER_SIDECARS = ("tokenizer.model",)


def save_checkpoint(model: PutriForCausalLM, tokenizer: PreTrainedTokenizerBase, out: Path,
                    source_dir: Path | None = None, overwrite: bool = False,
                    extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Save model + tokenizer (+ the source's SentencePiece model, + report files) to ``out`` atomically."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise PutriError(f"{out} exists; pass --overwrite to replace it")
    with staged(out, make_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_beside_weights(tmp, tokenizer, source_dir, extra_files)
    return out


def write_beside_weights(folder: Path, tokenizer: PreTrainedTokenizerBase, source_dir: Path | None,
                         extra_files: dict[str, str | bytes] | None) -> None:
    """The tokenizer, the source's SentencePiece model and the report files of a checkpoint being written."""
    tokenizer.save_pretrained(folder)
    for name in TOKENIZER_SIDECARS:
        if source_dir is not None and (Path(source_dir) / name).is_file() and not (folder / name).exists():
            shutil.copy2(Path(source_dir) / name, folder / name)
    for name, content in (extra_files or {}).items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
