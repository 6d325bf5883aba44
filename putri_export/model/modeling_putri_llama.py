"""A Llama causal LM whose layers each have their own head count, KV-head count and FFN width.

Subclasses transformers' Llama classes: attention, MLP, norms, rotary embedding, masks, cache and
generation are transformers' own; only the decoder layer changes (:mod:`.modeling_putri`). Copied next to
saved checkpoints for ``trust_remote_code`` loading, so it imports only torch/transformers and siblings.
"""

from __future__ import annotations

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
from .modeling_putri import (
    CacheAdoptingMixin,
    PutriDecoderLayer,
    build_causal_lm,
    build_model_body,
    putri_model_forward,
)


class PutriLlamaDecoderLayer(PutriDecoderLayer):
    attention_class, mlp_class, norm_class = LlamaAttention, LlamaMLP, LlamaRMSNorm


class PutriLlamaPreTrainedModel(CacheAdoptingMixin, LlamaPreTrainedModel):
    config_class = PutriLlamaConfig
    config: PutriLlamaConfig
    _no_split_modules = ["PutriLlamaDecoderLayer"]
    _can_record_outputs = {"hidden_states": PutriLlamaDecoderLayer, "attentions": LlamaAttention}


class PutriLlamaModel(PutriLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` (its forward, masks and cache) over per-layer-width blocks."""

    def __init__(self, config: PutriLlamaConfig):
        PutriLlamaPreTrainedModel.__init__(self, config)
        build_model_body(self, config, PutriLlamaDecoderLayer, LlamaRotaryEmbedding)

    forward = putri_model_forward


class PutriLlamaForCausalLM(PutriLlamaPreTrainedModel, LlamaForCausalLM):
    """``LlamaForCausalLM`` (forward, loss, generation) over ``PutriLlamaModel``."""

    def __init__(self, config: PutriLlamaConfig):
        PutriLlamaPreTrainedModel.__init__(self, config)
        build_causal_lm(self, config, PutriLlamaModel)


# save_pretrained copies this file and the config file next to the weights and writes auto_map.
PutriLlamaConfig.register_for_auto_class()
PutriLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PutriLlamaDecoderLayer", "PutriLlamaForCausalLM", "PutriLlamaModel", "PutriLlamaPreTrainedModel"]
