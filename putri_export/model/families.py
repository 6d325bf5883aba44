"""The model families putri-export prunes: which source checkpoints each takes, its per-layer-width classes,
and what it refuses. Adding a family is one ``configuration_putri_x.py`` + ``modeling_putri_x.py`` pair and
one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import PutriError
from .configuration_putri_llama import PutriLlamaConfig
from .configuration_putri_qwen2 import PutriQwen2Config
from .configuration_putri_qwen3 import PutriQwen3Config
from .modeling_putri_llama import PutriLlamaForCausalLM
from .modeling_putri_qwen2 import PutriQwen2ForCausalLM
from .modeling_putri_qwen3 import PutriQwen3ForCausalLM

PutriForCausalLM = PutriLlamaForCausalLM | PutriQwen2ForCausalLM | PutriQwen3ForCausalLM


def _no_sliding_window(d: dict) -> str | None:
    window, ctx = d.get("sliding_window"), d.get("max_position_embeddings", 0)
    active = d.get("use_sliding_window", d.get("model_type") == "mistral")
    if active and window not in (None, 0) and window < ctx:
        return (f"sliding_window={window} < context {ctx} is active; the exporters' runtimes would need "
                "per-layer window masks (only checkpoints without an active sliding window are supported)")
    return None


def _no_qwen3_attention_bias(d: dict) -> str | None:
    if d.get("attention_bias"):
        return "attention_bias=true (biases on q/k/v and o_proj) is not a released Qwen3 layout and is not supported"
    return None


@dataclass(frozen=True)
class Family:
    name: str
    source_types: tuple[str, ...]  # config model_type values loaded as this family (the dense ones)
    config_class: type
    model_class: type
    refusals: tuple[Callable[[dict], str | None], ...] = field(default=())

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def check(self, config: dict) -> None:
        """Raise with the reason when a source config uses something this family cannot honour."""
        for refusal in self.refusals:
            if (why := refusal(config)) is not None:
                raise PutriError(f"unsupported {config.get('model_type')} checkpoint: {why}")


FAMILIES = (
    Family("llama", ("llama", "mistral"), PutriLlamaConfig, PutriLlamaForCausalLM, (_no_sliding_window,)),
    Family("qwen2", ("qwen2",), PutriQwen2Config, PutriQwen2ForCausalLM, (_no_sliding_window,)),
    Family("qwen3", ("qwen3",), PutriQwen3Config, PutriQwen3ForCausalLM,
           (_no_sliding_window, _no_qwen3_attention_bias)),
)
PUTRI_CLASSES = tuple(f.model_class for f in FAMILIES)
_NOT_YET = {
    "gemma": "it scales embeddings and uses GeGLU/offset norms",
    "gemma2": "it soft-caps logits and alternates sliding-window layers",
    "phi3": "its q/k/v and gate/up projections are fused",
    "qwen2_moe": "it is a mixture of experts", "qwen3_moe": "it is a mixture of experts",
}


def family_of(model_type: str | None) -> Family:
    """The family of a source (``llama``, ``qwen3``, ...) or per-layer-width (``putri_qwen3``) model_type."""
    for family in FAMILIES:
        if model_type in family.source_types or model_type == family.model_type:
            return family
    why = _NOT_YET.get(model_type or "", "it is not a decoder family putri-export knows")
    accepted = ", ".join(t for f in FAMILIES for t in f.source_types)
    raise PutriError(f"unsupported architecture model_type={model_type!r}: {why}. Supported: {accepted} "
                     "(without an active sliding window)")


__all__ = ["FAMILIES", "PUTRI_CLASSES", "Family", "PutriForCausalLM", "family_of"]
