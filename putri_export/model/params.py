"""Parameter counts of a per-layer-width model: each sub-block's own, blocks, embeddings, total."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .families import PutriForCausalLM


@dataclass
class LayerInfo:
    layer: int
    heads: int
    kv_heads: int
    ffn: int
    attn_params: int
    ffn_params: int

    @property
    def block_params(self) -> int:
        return self.attn_params + self.ffn_params


@dataclass
class ParamCounts:
    layers: list[LayerInfo]
    embeddings: int  # input embedding + untied lm_head
    final_norm: int

    @property
    def blocks(self) -> int:
        return sum(layer.block_params for layer in self.layers)

    @property
    def total(self) -> int:
        return self.blocks + self.embeddings + self.final_norm


def _numel(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def param_counts(model: PutriForCausalLM) -> ParamCounts:
    """Parameters actually held by each sub-block (norms counted with their sub-block)."""
    c = model.config
    layers = []
    for i, layer in enumerate(model.model.layers):
        layers.append(LayerInfo(
            layer=i,
            heads=c.num_attention_heads_per_layer[i],
            kv_heads=c.num_key_value_heads_per_layer[i],
            ffn=c.intermediate_size_per_layer[i],
            attn_params=_numel(layer.self_attn) + _numel(layer.input_layernorm),
            ffn_params=_numel(layer.mlp) + _numel(layer.post_attention_layernorm),
        ))
    emb = model.model.embed_tokens.weight.numel()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        emb += model.lm_head.weight.numel()
    return ParamCounts(layers=layers, embeddings=emb, final_norm=_numel(model.model.norm))


def achieved(model: PutriForCausalLM, dense_blocks: int, dense_total: int) -> dict:
    """Parameter counts and achieved sparsity of a pruned model against its dense parent."""
    counts = param_counts(model)
    return {
        "params_blocks": counts.blocks,
        "params_total": counts.total,
        "dense_params_blocks": dense_blocks,
        "dense_params_total": dense_total,
        "sparsity_blocks": 1 - counts.blocks / dense_blocks,
        "sparsity_total": 1 - counts.total / dense_total,
    }
