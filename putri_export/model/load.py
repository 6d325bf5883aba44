"""Load any supported checkpoint (HF folder, ``.gguf``, built-in name) as a per-layer-width model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from ..errors import PutriError
from .configuration_putri_llama import PutriLlamaConfig
from .modeling_putri_llama import PutriLlamaForCausalLM

# model_type values whose checkpoints are exactly Llama blocks (same weight names and math).
LLAMA_COMPATIBLE = {"llama", "mistral", PutriLlamaConfig.model_type}
# Config keys of the source that our config must not inherit.
_DROP_KEYS = {"model_type", "architectures", "transformers_version", "quantization_config", "auto_map",
              "sliding_window", "layer_types", "_name_or_path", "use_sliding_window", "max_window_layers"}


def config_from_llama(config: LlamaConfig | dict) -> PutriLlamaConfig:
    """Identity-width ``PutriLlamaConfig`` from a Llama (or Mistral without sliding window) config."""
    d = dict(config if isinstance(config, dict) else config.to_dict())
    model_type = d.get("model_type")
    if model_type == "mistral" and d.get("sliding_window") not in (None, 0):
        window, ctx = d["sliding_window"], d.get("max_position_embeddings", 0)
        if window < ctx:
            raise PutriError(
                f"unsupported Mistral checkpoint: sliding_window={window} < context {ctx}; only Mistral models "
                "without an active sliding window are Llama-equivalent"
            )
    if d.get("head_dim") is None:
        d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    keep = {k: v for k, v in d.items() if k not in _DROP_KEYS}
    return PutriLlamaConfig(**keep)


def from_llama(model: nn.Module) -> PutriLlamaForCausalLM:
    """Wrap a loaded ``LlamaForCausalLM`` (or compatible) as an identity-width model, sharing tensors."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LLAMA_COMPATIBLE:
        raise_unsupported(model_type)
    if isinstance(model, PutriLlamaForCausalLM):
        return model
    config = config_from_llama(model.config)
    config._attn_implementation = model.config._attn_implementation
    # Built on the meta device (no random init), then the source tensors are assigned in place.
    with torch.device("meta"):
        out = PutriLlamaForCausalLM(config)
    out.load_state_dict(model.state_dict(), strict=True, assign=True)
    # Non-persistent buffers (RoPE inverse frequencies) are not in the state dict: rebuild them for real.
    out.model.rotary_emb = LlamaRotaryEmbedding(config=config)
    if config.tie_word_embeddings:
        out.tie_weights()
    out.generation_config = model.generation_config
    return out.eval()


def raise_unsupported(model_type: str | None) -> None:
    hints = {
        "qwen2": "its q/k/v projections carry biases that the exporters do not write yet",
        "qwen3": "its per-head q/k norms are not part of the Llama block",
        "gemma": "it scales embeddings and uses GeGLU/offset norms",
    }
    why = hints.get(model_type or "", "it is not a Llama-family decoder")
    raise PutriError(
        f"unsupported architecture model_type={model_type!r}: {why}. Supported: "
        f"{', '.join(sorted(LLAMA_COMPATIBLE))} (Mistral without sliding window)"
    )


def load_model(
    spec: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PutriLlamaForCausalLM, PreTrainedTokenizerBase]:
    """Resolve ``spec`` (HF folder, ``.gguf`` file or built-in name) and load it as a per-layer-width model."""
    from .assets import resolve_model

    resolved = resolve_model(spec)
    if resolved.gguf_file is not None:
        return _load_gguf(resolved.path, resolved.gguf_file, dtype)
    return load_hf_dir(resolved.path, dtype)


def load_hf_dir(path: Path, dtype: torch.dtype = torch.float32
                ) -> tuple[PutriLlamaForCausalLM, PreTrainedTokenizerBase]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PutriError(f"not a model folder: {path} has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise PutriError(f"corrupt config: {config_file} is not valid JSON ({e})") from None
    if model_type not in LLAMA_COMPATIBLE:
        raise_unsupported(model_type)
    if not any(path.glob("*.safetensors")):
        raise PutriError(f"no safetensors weights in {path} (putri-export never loads pickled .bin weights)")
    try:
        if model_type == PutriLlamaConfig.model_type:
            model = PutriLlamaForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
        else:
            model = from_llama(AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True))
    except PutriError:
        raise
    except Exception as e:  # transformers/safetensors raise many types for damaged files
        raise PutriError(f"could not load the weights in {path}: {type(e).__name__}: {_first_line(e)}") from None
    return model.eval(), load_tokenizer(path)


def load_tokenizer(path: Path, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as e:
        raise PutriError(f"could not load a tokenizer from {path}: {type(e).__name__}: {_first_line(e)}") from None


def _load_gguf(folder: Path, gguf_file: str, dtype: torch.dtype
               ) -> tuple[PutriLlamaForCausalLM, PreTrainedTokenizerBase]:
    """transformers' GGUF loader dequantizes to a plain Llama (undoing llama.cpp's Q/K permutation)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    except Exception as e:
        raise PutriError(f"could not load GGUF {folder / gguf_file}: {type(e).__name__}: {_first_line(e)}") from None
    return from_llama(model), load_tokenizer(folder, gguf_file)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


