"""A Qwen2 causal LM whose layers each have their own head count, KV-head count and FFN width.

Subclasses transformers' Qwen2 classes (q/k/v biases live in its attention);
only the decoder layer changes (:mod:`.modeling_putri`). Copied next to saved checkpoints for
``trust_remote_code`` loading, so it imports only torch/transformers and siblings.
"""

from __future__ import annotations

from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2ForCausalLM,
    Qwen2MLP,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from .configuration_putri_qwen2 import PutriQwen2Config
from .modeling_putri import (
    CacheAdoptingMixin,
    PutriDecoderLayer,
    build_causal_lm,
    build_model_body,
    putri_model_forward,
)


class PutriQwen2DecoderLayer(PutriDecoderLayer):
    attention_class, mlp_class, norm_class = Qwen2Attention, Qwen2MLP, Qwen2RMSNorm


class PutriQwen2PreTrainedModel(CacheAdoptingMixin, Qwen2PreTrainedModel):
    config_class = PutriQwen2Config
    config: PutriQwen2Config
    _no_split_modules = ["PutriQwen2DecoderLayer"]
    _can_record_outputs = {"hidden_states": PutriQwen2DecoderLayer, "attentions": Qwen2Attention}


class PutriQwen2Model(PutriQwen2PreTrainedModel, Qwen2Model):
    """``Qwen2Model`` over per-layer-width blocks."""

    forward = putri_model_forward

    def __init__(self, config: PutriQwen2Config):
        PutriQwen2PreTrainedModel.__init__(self, config)
        build_model_body(self, config, PutriQwen2DecoderLayer, Qwen2RotaryEmbedding)


class PutriQwen2ForCausalLM(PutriQwen2PreTrainedModel, Qwen2ForCausalLM):
    """``Qwen2ForCausalLM`` (forward, loss, generation) over ``PutriQwen2Model``."""

    def __init__(self, config: PutriQwen2Config):
        PutriQwen2PreTrainedModel.__init__(self, config)
        build_causal_lm(self, config, PutriQwen2Model)


PutriQwen2Config.register_for_auto_class()
PutriQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PutriQwen2DecoderLayer", "PutriQwen2ForCausalLM", "PutriQwen2Model", "PutriQwen2PreTrainedModel"]
