"""Config for a Qwen3 model whose layers each have their own width (copied next to checkpoints)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

from .configuration_putri import PerLayerWidthsConfig


@strict
class PutriQwen3Config(PerLayerWidthsConfig, Qwen3Config):
    """``Qwen3Config`` plus every layer's query heads, KV heads and FFN width."""

    model_type = "putri_qwen3"

    @property
    def qk_norm(self) -> bool:  # Qwen3Attention normalizes every query and key head (shared head_dim weights)
        return True


__all__ = ["PutriQwen3Config"]
