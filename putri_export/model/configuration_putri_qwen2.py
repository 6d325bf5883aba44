"""Config for a Qwen2 / Qwen2.5 model whose layers each have their own width (copied next to checkpoints)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

from .configuration_putri import PerLayerWidthsConfig


@strict
class PutriQwen2Config(PerLayerWidthsConfig, Qwen2Config):
    """``Qwen2Config`` plus every layer's query heads, KV heads and FFN width."""

    model_type = "putri_qwen2"

    @property
    def qkv_bias(self) -> bool:  # Qwen2Attention always has q/k/v biases
        return True


__all__ = ["PutriQwen2Config"]
