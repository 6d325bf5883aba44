"""The per-layer-width model: its transformers classes, loading, surgery, widths, counts, checkpoints.

Entry points: :func:`load_model` (any supported input → ``PutriLlamaForCausalLM`` + tokenizer),
:func:`save_checkpoint`, :class:`Widths`, :func:`param_counts`, and the surgery in :mod:`.surgery`.
Importing this package registers the classes with transformers' Auto classes, so saved checkpoints load
without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .checkpoint import save_checkpoint
from .configuration_putri_llama import PutriLlamaConfig
from .load import load_model, load_tokenizer
from .modeling_putri_llama import PutriLlamaForCausalLM
from .params import ParamCounts, achieved, param_counts
from .surgery import group_channels, keep_ffn_neurons, keep_kv_groups, layer_group_channels, slice_randomly
from .widths import LayerWidths, Widths

AutoConfig.register(PutriLlamaConfig.model_type, PutriLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(PutriLlamaConfig, PutriLlamaForCausalLM, exist_ok=True)

__all__ = ["LayerWidths", "ParamCounts", "PutriLlamaConfig", "PutriLlamaForCausalLM", "Widths", "achieved",
           "group_channels", "keep_ffn_neurons", "keep_kv_groups", "layer_group_channels", "load_model",
           "load_tokenizer", "param_counts", "save_checkpoint", "slice_randomly"]
