"""A Llama causal LM whose layers each have their own head count, KV-head count and FFN width.

Subclasses transformers' Llama classes: attention, MLP, norms, rotary embedding, masks,
cache and generation are transformers' own. Only the decoder layer changes: it builds
each sub-block at that layer's width and skips a sub-block of width 0 (the residual
passes through). Copied next to saved checkpoints for ``trust_remote_code`` loading, so
it imports only torch/transformers and its sibling config.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_putri_llama import PutriLlamaConfig


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


class PutriLlamaDecoderLayer(GradientCheckpointingLayer):
    """Llama block with optional attention and optional FFN."""

    def __init__(self, config: PutriLlamaConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        layer_config = config.layer_config(layer_idx)
        self.self_attn = self.input_layernorm = None
        self.mlp = self.post_attention_layernorm = None
        if layer_config.num_attention_heads > 0:
            self.self_attn = LlamaAttention(layer_config, layer_idx)
            # Runtime settings (attention implementation) follow the model's config, not the copy.
            self.self_attn.config = config
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if layer_config.intermediate_size > 0:
            self.mlp = LlamaMLP(layer_config)
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
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


class PutriLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = PutriLlamaConfig
    config: PutriLlamaConfig
    _no_split_modules = ["PutriLlamaDecoderLayer"]
    _can_record_outputs = {"hidden_states": PutriLlamaDecoderLayer, "attentions": LlamaAttention}


class PutriLlamaModel(PutriLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` (its forward, masks and cache) over per-layer-width blocks."""

    def __init__(self, config: PutriLlamaConfig):
        PutriLlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [PutriLlamaDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class PutriLlamaForCausalLM(PutriLlamaPreTrainedModel, LlamaForCausalLM):
    """``LlamaForCausalLM`` (forward, loss, generation) over ``PutriLlamaModel``."""

    def __init__(self, config: PutriLlamaConfig):
        PutriLlamaPreTrainedModel.__init__(self, config)
        self.model = PutriLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


# save_pretrained copies this file and the config file next to the weights and writes auto_map.
PutriLlamaConfig.register_for_auto_class()
PutriLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PutriLlamaDecoderLayer", "PutriLlamaForCausalLM", "PutriLlamaModel", "PutriLlamaPreTrainedModel"]
