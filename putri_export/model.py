"""Load any supported checkpoint as a per-layer-width model; resize layers; count parameters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from .configuration_putri_llama import PutriLlamaConfig
from .errors import PutriError
from .modeling_putri_llama import PutriLlamaForCausalLM

# With this module imported, the Auto classes load saved checkpoints without trust_remote_code.
AutoConfig.register(PutriLlamaConfig.model_type, PutriLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(PutriLlamaConfig, PutriLlamaForCausalLM, exist_ok=True)

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


def load_hf_dir(path: Path, dtype: torch.dtype = torch.float32) -> tuple[PutriLlamaForCausalLM, PreTrainedTokenizerBase]:
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
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file) if gguf_file else AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise PutriError(f"could not load a tokenizer from {path}: {type(e).__name__}: {_first_line(e)}") from None


def _load_gguf(folder: Path, gguf_file: str, dtype: torch.dtype) -> tuple[PutriLlamaForCausalLM, PreTrainedTokenizerBase]:
    """transformers' GGUF loader dequantizes to a plain Llama (undoing llama.cpp's Q/K permutation)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    except Exception as e:
        raise PutriError(f"could not load GGUF {folder / gguf_file}: {type(e).__name__}: {_first_line(e)}") from None
    return from_llama(model), load_tokenizer(folder, gguf_file)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------------------------------------
# Resizing layers (the physical part of pruning)


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.data
    b = linear.bias.data if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w)
    if b is not None:
        out.bias.data.copy_(b)
    return out


def keep_kv_groups(model: PutriLlamaForCausalLM, layer_idx: int, keep: Sequence[int]) -> None:
    """Keep only the KV heads ``keep`` of a layer (each with its query heads); [] removes attention."""
    config = model.config
    layer = model.model.layers[layer_idx]
    kv = config.num_key_value_heads_per_layer[layer_idx]
    heads = config.num_attention_heads_per_layer[layer_idx]
    keep = sorted(set(int(k) for k in keep))
    if any(k < 0 or k >= kv for k in keep):
        raise PutriError(f"layer {layer_idx}: KV head indices {keep} out of range 0..{kv - 1}")
    if not keep:
        layer.self_attn = layer.input_layernorm = None
        config.set_layer_widths(layer_idx, heads=0, kv_heads=0)
        return
    group, d = heads // kv, config.head_dim
    kv_rows = torch.cat([torch.arange(k * d, (k + 1) * d) for k in keep])
    q_rows = torch.cat([torch.arange((k * group) * d, (k + 1) * group * d) for k in keep])
    attn = layer.self_attn
    attn.q_proj = _slice_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = _slice_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = _slice_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = _slice_linear(attn.o_proj, cols=q_rows)
    config.set_layer_widths(layer_idx, heads=len(keep) * group, kv_heads=len(keep))


def keep_ffn_neurons(model: PutriLlamaForCausalLM, layer_idx: int, keep: Sequence[int]) -> None:
    """Keep only the FFN neurons ``keep`` of a layer; [] removes the FFN."""
    layer = model.model.layers[layer_idx]
    width = model.config.intermediate_size_per_layer[layer_idx]
    idx = torch.tensor(sorted(set(int(k) for k in keep)), dtype=torch.long)
    if len(idx) and (idx.min() < 0 or idx.max() >= width):
        raise PutriError(f"layer {layer_idx}: FFN neuron indices out of range 0..{width - 1}")
    if len(idx) == 0:
        layer.mlp = layer.post_attention_layernorm = None
        model.config.set_layer_widths(layer_idx, ffn=0)
        return
    mlp = layer.mlp
    mlp.gate_proj = _slice_linear(mlp.gate_proj, rows=idx)
    mlp.up_proj = _slice_linear(mlp.up_proj, rows=idx)
    mlp.down_proj = _slice_linear(mlp.down_proj, cols=idx)
    mlp.intermediate_size = len(idx)
    model.config.set_layer_widths(layer_idx, ffn=len(idx))


# ---------------------------------------------------------------------------------------------
# Parameter counts


@dataclass
class LayerInfo:
    layer: int
    heads: int
    kv_heads: int
    ffn: int
    attn_params: int
    ffn_params: int

    @property
    def block_params(self) -> int:
        return self.attn_params + self.ffn_params


@dataclass
class ParamCounts:
    layers: list[LayerInfo]
    embeddings: int  # input embedding + untied lm_head
    final_norm: int

    @property
    def blocks(self) -> int:
        return sum(layer.block_params for layer in self.layers)

    @property
    def total(self) -> int:
        return self.blocks + self.embeddings + self.final_norm


def _numel(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def param_counts(model: PutriLlamaForCausalLM) -> ParamCounts:
    """Parameters actually held by each sub-block (norms counted with their sub-block)."""
    c = model.config
    layers = []
    for i, layer in enumerate(model.model.layers):
        layers.append(LayerInfo(
            layer=i,
            heads=c.num_attention_heads_per_layer[i],
            kv_heads=c.num_key_value_heads_per_layer[i],
            ffn=c.intermediate_size_per_layer[i],
            attn_params=_numel(layer.self_attn) + _numel(layer.input_layernorm),
            ffn_params=_numel(layer.mlp) + _numel(layer.post_attention_layernorm),
        ))
    emb = model.model.embed_tokens.weight.numel()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        emb += model.lm_head.weight.numel()
    return ParamCounts(layers=layers, embeddings=emb, final_norm=_numel(model.model.norm))


def slice_randomly(model: PutriLlamaForCausalLM, kv_heads: Sequence[int], ffn: Sequence[int],
                   seed: int = 0) -> PutriLlamaForCausalLM:
    """Keep a random subset of KV groups and FFN neurons per layer, down to the given widths.

    No pruning criterion: this makes arbitrary per-layer shapes for parity tests, fuzzing, and
    speed measurements that do not depend on quality.
    """
    c = model.config
    if len(kv_heads) != c.num_hidden_layers or len(ffn) != c.num_hidden_layers:
        raise PutriError(f"need {c.num_hidden_layers} KV-head and FFN widths, got {len(kv_heads)} and {len(ffn)}")
    gen = torch.Generator().manual_seed(seed)
    for layer in range(c.num_hidden_layers):
        have_kv, have_ffn = c.num_key_value_heads_per_layer[layer], c.intermediate_size_per_layer[layer]
        if not (0 <= kv_heads[layer] <= have_kv and 0 <= ffn[layer] <= have_ffn):
            raise PutriError(f"layer {layer}: widths ({kv_heads[layer]} KV, {ffn[layer]} FFN) exceed "
                             f"the model's ({have_kv}, {have_ffn})")
        if kv_heads[layer] < have_kv:
            keep_kv_groups(model, layer, torch.randperm(have_kv, generator=gen)[: kv_heads[layer]].tolist())
        if ffn[layer] < have_ffn:
            keep_ffn_neurons(model, layer, torch.randperm(have_ffn, generator=gen)[: ffn[layer]].tolist())
    return model


# Files the HF tokenizer does not re-save but exporters need (SentencePiece scores for GGUF).
TOKENIZER_SIDECARS = ("tokenizer.model",)


def save_checkpoint(model: PutriLlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, out: Path,
                    source_dir: Path | None = None, overwrite: bool = False,
                    extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Save model + tokenizer (+ the source's SentencePiece model, + report files) to ``out`` atomically."""
    import shutil

    from .atomic import staged

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
