"""The part of every per-layer-width model that is not family-specific: a decoder block built at its own
layer's width whose empty sub-blocks are skipped (the residual passes through), and the model body.

Each family module (``modeling_putri_llama``, ``modeling_putri_qwen2``, ...) names its transformers
attention, MLP, norm and rotary classes; everything else (masks, cache, generation) is transformers' own.
Copied next to saved checkpoints as a relative import, so it imports only torch/transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DummyLayer, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaModel


def _with_bias(linear: nn.Linear) -> nn.Linear:
    if linear.bias is not None:
        return linear
    out = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    out.weight = linear.weight
    nn.init.zeros_(out.bias)
    return out


def add_output_bias(layer: nn.Module) -> None:
    """Give the layer's o_proj and down_proj a (zero) bias, keeping their weights."""
    if layer.self_attn is not None:
        layer.self_attn.o_proj = _with_bias(layer.self_attn.o_proj)
    if layer.mlp is not None:
        layer.mlp.down_proj = _with_bias(layer.mlp.down_proj)


class PutriDecoderLayer(GradientCheckpointingLayer):
    """A family's block with optional attention and optional FFN; subclasses name the family's modules."""

    attention_class: type[nn.Module]
    mlp_class: type[nn.Module]
    norm_class: type[nn.Module]

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        layer_config = config.layer_config(layer_idx)
        self.self_attn = self.input_layernorm = None
        self.mlp = self.post_attention_layernorm = None
        if layer_config.num_attention_heads > 0:
            self.self_attn = self.attention_class(layer_config, layer_idx)
            # Runtime settings (attention implementation) follow the model's config, not the copy.
            self.self_attn.config = config
            self.input_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        if layer_config.intermediate_size > 0:
            self.mlp = self.mlp_class(layer_config)
            self.post_attention_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        if config.output_projection_bias:
            add_output_bias(self)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # The cache and its flags reach the attention under whatever names this transformers version uses.
        if self.self_attn is not None:
            residual = hidden_states
            attn_out, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + attn_out
        if self.mlp is not None:
            residual = hidden_states
            hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


def build_model_body(model: nn.Module, config, layer_class: type[PutriDecoderLayer],
                     rotary_class: type[nn.Module]) -> None:
    """The modules of a family's ``XModel`` (its ``__init__`` body, at per-layer widths)."""
    model.padding_idx = config.pad_token_id
    model.vocab_size = config.vocab_size
    model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, model.padding_idx)
    model.layers = nn.ModuleList([layer_class(config, i) for i in range(config.num_hidden_layers)])
    model.norm = layer_class.norm_class(config.hidden_size, eps=config.rms_norm_eps)
    model.rotary_emb = rotary_class(config=config)
    model.gradient_checkpointing = False
    model.post_init()


def past_length(cache) -> int:
    """Tokens already held by ``cache``, read from its first layer that stores keys (0 if none does)."""
    for layer in getattr(cache, "layers", ()):
        if not isinstance(layer, DummyLayer):
            return layer.get_seq_length()
    return 0


class AttentionFreeCacheLayer(DummyLayer):
    """The cache layer of a block without attention: stores nothing, and answers the cache's length from the
    layers that do. transformers (>= 5.25) asks layer 0 for the cache length, and a plain ``DummyLayer`` cannot
    answer, so a model whose first block has no attention would fail in ``forward`` and ``generate``."""

    def __init__(self, cache):
        super().__init__()
        self.cache = cache

    def get_seq_length(self) -> int:
        return past_length(self.cache)


def adopt_cache(cache) -> None:
    """Give the attention-free layers of ``cache`` (any transformers cache built from our config) a length."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # no cache (use_cache off)
        return
    for i, layer in enumerate(layers):
        if type(layer) is DummyLayer:
            layers[i] = AttentionFreeCacheLayer(cache)


class CacheAdoptingMixin:
    """Before a family's ``PreTrainedModel``: ``generate`` asks its fresh cache for its length before the first
    forward, so the cache is adopted where ``generate`` creates it."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        out = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        adopt_cache(model_kwargs.get("cache"))
        return out


def putri_model_forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                        position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                        inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None, **kwargs):
    """Every family's ``XModel.forward``: ``LlamaModel``'s (Qwen's looks masks up by layer type and has none for
    attention-free layers; sliding windows are refused at load, so the masks are Llama's), over an adopted cache."""
    if cache is None and (self.config.use_cache if use_cache is None else use_cache):
        cache = DynamicCache(config=self.config)
    adopt_cache(cache)
    return LlamaModel.forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)


def build_causal_lm(lm: nn.Module, config, model_class: type[nn.Module]) -> None:
    """The modules of a family's ``XForCausalLM`` (its ``__init__`` body)."""
    lm.model = model_class(config)
    lm.vocab_size = config.vocab_size
    lm.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    lm.post_init()


__all__ = ["PutriDecoderLayer", "add_output_bias", "build_causal_lm", "build_model_body", "past_length",
           "putri_model_forward", "adopt_cache", "AttentionFreeCacheLayer", "CacheAdoptingMixin"]
