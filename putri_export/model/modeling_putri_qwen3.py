"""A Qwen3 causal LM whose layers each have their own head count, KV-head count and FFN width.

Subclasses transformers' Qwen3 classes (per-head q/k RMSNorm live in its attention);
only the decoder layer changes (:mod:`.modeling_putri`). Copied next to saved checkpoints for
``trust_remote_code`` loading, so it imports only torch/transformers and siblings.
"""

from __future__ import annotations

from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3ForCausalLM,
    Qwen3MLP,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

from .configuration_putri_qwen3 import PutriQwen3Config
from .modeling_putri import (
    CacheAdoptingMixin,
    PutriDecoderLayer,
    build_causal_lm,
    build_model_body,
    putri_model_forward,
)


class PutriQwen3DecoderLayer(PutriDecoderLayer):
    attention_class, mlp_class, norm_class = Qwen3Attention, Qwen3MLP, Qwen3RMSNorm


class PutriQwen3PreTrainedModel(CacheAdoptingMixin, Qwen3PreTrainedModel):
    config_class = PutriQwen3Config
    config: PutriQwen3Config
    _no_split_modules = ["PutriQwen3DecoderLayer"]
    _can_record_outputs = {"hidden_states": PutriQwen3DecoderLayer, "attentions": Qwen3Attention}


class PutriQwen3Model(PutriQwen3PreTrainedModel, Qwen3Model):
    """``Qwen3Model`` over per-layer-width blocks."""

    forward = putri_model_forward

    def __init__(self, config: PutriQwen3Config):
        PutriQwen3PreTrainedModel.__init__(self, config)
        build_model_body(self, config, PutriQwen3DecoderLayer, Qwen3RotaryEmbedding)


class PutriQwen3ForCausalLM(PutriQwen3PreTrainedModel, Qwen3ForCausalLM):
    """``Qwen3ForCausalLM`` (forward, loss, generation) over ``PutriQwen3Model``."""

    def __init__(self, config: PutriQwen3Config):
        PutriQwen3PreTrainedModel.__init__(self, config)
        build_causal_lm(self, config, PutriQwen3Model)


PutriQwen3Config.register_for_auto_class()
PutriQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PutriQwen3DecoderLayer", "PutriQwen3ForCausalLM", "PutriQwen3Model", "PutriQwen3PreTrainedModel"]
