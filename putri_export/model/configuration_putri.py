"""Per-layer widths for a decoder config of any family (the part every ``PutriXConfig`` shares).

Copied next to every saved checkpoint with the family's config file (it is a relative import), so that
``trust_remote_code=True`` loads it without ``putri_export`` installed: it may import only transformers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

# transformers' cache maps this layer type to a DummyLayer (no KV stored); it is the
# library's label for blocks without attention (see cache_utils.get_layer_types_and_kwargs).
ATTENTION_FREE_LAYER_TYPE = "moe"


@dataclass
class PerLayerWidthsConfig:
    """Mixed in before a transformers config class: for every layer l, its query heads, KV heads and FFN width.

    The scalar fields keep the dense parent's values (they describe head_dim, RoPE, hidden size). A 0 in
    ``num_attention_heads_per_layer`` (and KV heads) means the layer has no attention sub-block; a 0 in
    ``intermediate_size_per_layer`` means no FFN. ``output_projection_bias`` adds a bias to every o_proj and
    down_proj (FLAP's compensation for removed channels).
    """

    num_attention_heads_per_layer: list[int] | None = None
    num_key_value_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    output_projection_bias: bool = False

    def __post_init__(self, **kwargs):
        if getattr(self, "head_dim", None) is None:  # Qwen2's config has no head_dim field; Llama's may be None
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        n = self.num_hidden_layers
        if self.num_attention_heads_per_layer is None:
            self.num_attention_heads_per_layer = [self.num_attention_heads] * n
        if self.num_key_value_heads_per_layer is None:
            self.num_key_value_heads_per_layer = [self.num_key_value_heads] * n
        if self.intermediate_size_per_layer is None:
            self.intermediate_size_per_layer = [self.intermediate_size] * n
        self.layer_types = self._derive_layer_types()
        super().__post_init__(**kwargs)

    # What a KV-head group holds besides its q/k/v/o weights (the search's parameter formula reads these).
    @property
    def qkv_bias(self) -> bool:
        return False

    @property
    def qk_norm(self) -> bool:
        return False

    def _derive_layer_types(self) -> list[str]:
        heads = self.num_attention_heads_per_layer
        if not any(heads):
            # No layer keeps a KV cache: keep plain layers so the cache API still answers
            # (positions and masks are irrelevant without attention).
            return ["full_attention"] * self.num_hidden_layers
        return ["full_attention" if h > 0 else ATTENTION_FREE_LAYER_TYPE for h in heads]

    def validate_architecture(self):
        """Per-layer checks replace the parent's global ``hidden_size % heads`` check."""
        n = self.num_hidden_layers
        lists = {
            "num_attention_heads_per_layer": self.num_attention_heads_per_layer,
            "num_key_value_heads_per_layer": self.num_key_value_heads_per_layer,
            "intermediate_size_per_layer": self.intermediate_size_per_layer,
        }
        for name, values in lists.items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries, expected num_hidden_layers={n}")
            if any((not isinstance(v, int)) or v < 0 for v in values):
                raise ValueError(f"{name} must hold non-negative integers, got {values}")
        for layer, (h, k) in enumerate(zip(self.num_attention_heads_per_layer, self.num_key_value_heads_per_layer)):
            if (h == 0) != (k == 0):
                raise ValueError(f"layer {layer}: {h} query heads with {k} KV heads; both must be 0 or both > 0")
            if k and h % k:
                raise ValueError(f"layer {layer}: {h} query heads is not a multiple of {k} KV heads")

    def set_layer_widths(
        self, layer_idx: int, heads: int | None = None, kv_heads: int | None = None, ffn: int | None = None
    ) -> None:
        """Record a layer's new widths (after its modules were resized) and re-validate."""
        if heads is not None:
            self.num_attention_heads_per_layer[layer_idx] = heads
        if kv_heads is not None:
            self.num_key_value_heads_per_layer[layer_idx] = kv_heads
        if ffn is not None:
            self.intermediate_size_per_layer[layer_idx] = ffn
        self.layer_types = self._derive_layer_types()
        self.validate_architecture()

    def layer_config(self, layer_idx: int):
        """A copy whose scalar head/FFN fields are this layer's (used to build its modules)."""
        cfg = copy.deepcopy(self)
        cfg.num_attention_heads = self.num_attention_heads_per_layer[layer_idx]
        cfg.num_key_value_heads = self.num_key_value_heads_per_layer[layer_idx]
        cfg.intermediate_size = self.intermediate_size_per_layer[layer_idx]
        return cfg


__all__ = ["ATTENTION_FREE_LAYER_TYPE", "PerLayerWidthsConfig"]
