"""Load any supported checkpoint (HF folder, ``.gguf``, built-in name) as a per-layer-width model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from ..errors import PutriError
from ..finite import check_weights
from .families import PUTRI_CLASSES, PutriForCausalLM, family_of

# Config keys of the source that our config must not inherit (sliding windows are refused by the family first).
_DROP_KEYS = {"model_type", "architectures", "transformers_version", "quantization_config", "auto_map",
              "sliding_window", "layer_types", "_name_or_path", "use_sliding_window", "max_window_layers"}


def config_from_source(config: PretrainedConfig | dict):
    """Identity-width per-layer config (``PutriLlamaConfig``, ``PutriQwen3Config``, ...) from a dense config."""
    d = dict(config if isinstance(config, dict) else config.to_dict())
    family = family_of(d.get("model_type"))
    family.check(d)
    if d.get("head_dim") is None:
        d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    keep = {k: v for k, v in d.items() if k not in _DROP_KEYS}
    return family.config_class(**keep)


def from_transformers(model: nn.Module) -> PutriForCausalLM:
    """Wrap a loaded transformers causal LM of a supported family as an identity-width model, sharing tensors."""
    if isinstance(model, PUTRI_CLASSES):
        return model
    config = config_from_source(model.config)
    config._attn_implementation = model.config._attn_implementation
    # Built on the meta device (no random init), then the source tensors are assigned in place.
    with torch.device("meta"):
        out = family_of(config.model_type).model_class(config)
    out.load_state_dict(model.state_dict(), strict=True, assign=True)
    # Non-persistent buffers (RoPE inverse frequencies) are not in the state dict: rebuild them for real.
    out.model.rotary_emb = type(out.model.rotary_emb)(config=config)
    if config.tie_word_embeddings:
        out.tie_weights()
    out.generation_config = model.generation_config
    return out.eval()


def load_model(
    spec: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PutriForCausalLM, PreTrainedTokenizerBase]:
    """Resolve ``spec`` (HF folder, ``.gguf`` file or built-in name) and load it as a per-layer-width model."""
    from .assets import resolve_model

    resolved = resolve_model(spec)
    if resolved.gguf_file is not None:
        return _load_gguf(resolved.path, resolved.gguf_file, dtype)
    return load_hf_dir(resolved.path, dtype)


def read_config(path: Path) -> dict:
    """The config.json of the HF folder ``path``, or one clear error."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PutriError(f"not a model folder: {path} has no config.json")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise PutriError(f"corrupt config: {config_file} is not valid JSON ({e})") from None


def load_hf_dir(path: Path, dtype: torch.dtype = torch.float32
                ) -> tuple[PutriForCausalLM, PreTrainedTokenizerBase]:
    source_config = read_config(path)
    model_type = source_config.get("model_type")
    family = family_of(model_type)
    family.check(source_config)  # before reading any weights
    if not any(path.glob("*.safetensors")):
        raise PutriError(f"no safetensors weights in {path} (putri-export never loads pickled .bin weights)")
    try:
        if model_type == family.model_type:
            model = family.model_class.from_pretrained(path, dtype=dtype, use_safetensors=True)
        else:
            model = from_transformers(AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True))
    except PutriError:
        raise
    except Exception as e:  # transformers/safetensors raise many types for damaged files
        raise PutriError(f"could not load the weights in {path}: {type(e).__name__}: {_first_line(e)}") from None
    check_weights(model, str(path), lambda name: _stored_dtype(path, name))
    return model.eval(), load_tokenizer(path)


def _stored_dtype(path: Path, name: str) -> str | None:
    """The dtype a tensor has in the folder's safetensors files (read from their headers), or None."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            if name in f.keys():  # noqa: SIM118 (safe_open has keys(), no __contains__)
                return f.get_slice(name).get_dtype()
    return None


def load_tokenizer(path: Path, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as e:
        raise PutriError(f"could not load a tokenizer from {path}: {type(e).__name__}: {_first_line(e)}") from None


def _load_gguf(folder: Path, gguf_file: str, dtype: torch.dtype
               ) -> tuple[PutriForCausalLM, PreTrainedTokenizerBase]:
    """transformers' GGUF loader dequantizes to its plain family model (undoing llama.cpp's Q/K permutation)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    except Exception as e:
        raise PutriError(f"could not load GGUF {folder / gguf_file}: {type(e).__name__}: {_first_line(e)}") from None
    check_weights(model, str(folder / gguf_file))
    return from_transformers(model), load_tokenizer(folder, gguf_file)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


