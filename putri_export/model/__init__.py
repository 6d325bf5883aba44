"""The per-layer-width model: its transformers classes per family, loading, surgery, widths, counts, checkpoints.

Entry points: :func:`load_model` (any supported input → a ``Putri<Family>ForCausalLM`` + tokenizer),
:func:`save_checkpoint`, :class:`Widths`, :func:`param_counts`, and the surgery in :mod:`.surgery`; the families
(Llama, Qwen2, Qwen3) are listed in :mod:`.families`. Importing this package registers every family's classes
with transformers' Auto classes, so saved checkpoints load without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .checkpoint import save_checkpoint
from .configuration_putri_llama import PutriLlamaConfig
from .families import FAMILIES, PutriForCausalLM, family_of
from .load import load_model, load_tokenizer
from .modeling_putri_llama import PutriLlamaForCausalLM
from .params import ParamCounts, achieved, param_counts
from .surgery import group_channels, keep_ffn_neurons, keep_kv_groups, layer_group_channels, slice_randomly
from .widths import LayerWidths, Widths

for _family in FAMILIES:
    AutoConfig.register(_family.model_type, _family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(_family.config_class, _family.model_class, exist_ok=True)

__all__ = ["FAMILIES", "LayerWidths", "ParamCounts", "PutriForCausalLM", "PutriLlamaConfig", "PutriLlamaForCausalLM",
           "Widths", "achieved", "family_of", "group_channels", "keep_ffn_neurons", "keep_kv_groups",
           "layer_group_channels", "load_model", "load_tokenizer", "param_counts", "save_checkpoint",
           "slice_randomly"]
