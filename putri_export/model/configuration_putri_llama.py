"""Config for a Llama-family model whose layers each have their own width.

This file is copied next to every saved checkpoint (``auto_map``) so that
``trust_remote_code=True`` loads it without ``putri_export`` installed: it may import
only transformers and its sibling.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from .configuration_putri import PerLayerWidthsConfig


@strict
class PutriLlamaConfig(PerLayerWidthsConfig, LlamaConfig):
    """``LlamaConfig`` plus every layer's query heads, KV heads and FFN width."""

    model_type = "putri_llama"

    # Set by _derive_layer_types (attention-free layers get their own type); Llama's config has no such field.
    layer_types: list[str] | None = None


__all__ = ["PutriLlamaConfig"]
