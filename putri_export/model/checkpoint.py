"""Saving a per-layer-width model as a Hugging Face checkpoint (safetensors), whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..atomic import staged
from ..errors import PutriError
from .families import PutriForCausalLM

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
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_SIDECARS:
            if source_dir is not None and (Path(source_dir) / name).is_file() and not (tmp / name).exists():
                shutil.copy2(Path(source_dir) / name, tmp / name)
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
    return out
