"""Týr's supernet: Putri-pruned variants of every attention and FFN sub-layer at several widths.

A sub-layer's *units* are its KV-head groups (a KV head with its query heads) or its FFN neurons.
For each sub-layer the local pruner (Putri: greedy head-group removal with least-squares o_proj
refit; OBS neuron scores with least-squares down_proj update) produces one variant per level.
Variants are nested and only differ in the kept indices and the refit output columns, so a
variant is stored as those two tensors (safetensors, one file per variant) and rebuilt on demand.

Blocks are processed in order and the calibration input of block l+1 is the *expectation* over
levels of block l's variant outputs (weight ∝ kept fraction), as in Týr; ``centre`` propagates
the centre level's output instead (Týr's released code).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from .calibration import batches, block_kwargs, embed
from .errors import PutriError
from .model import PutriLlamaForCausalLM, keep_ffn_neurons, keep_kv_groups, param_counts
from .putri import FFNPruner, gram, group_removal_order, least_squares_columns, obs_scores

KINDS = ("attn", "ffn")


@dataclass(frozen=True)
class SubLayer:
    kind: str  # "attn" (units: KV-head groups) or "ffn" (units: neurons)
    layer: int
    max_units: int  # units in the model being pruned
    unit_params: int  # parameters per unit
    norm_params: int  # the sub-layer's RMSNorm, gone when it keeps no unit

    def params(self, units: int) -> int:
        return units * self.unit_params + (self.norm_params if units else 0)


def sublayers(model: PutriLlamaForCausalLM) -> list[SubLayer]:
    """Every sub-layer in forward order (attn 0, ffn 0, attn 1, ...), including empty ones."""
    c = model.config
    d, hd = c.hidden_size, c.head_dim
    out = []
    for l in range(c.num_hidden_layers):
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        group = heads // kv if kv else 1
        out.append(SubLayer("attn", l, kv, d * hd * (2 * group + 2), d))
        out.append(SubLayer("ffn", l, c.intermediate_size_per_layer[l], 3 * d, d))
    counts = param_counts(model)
    for s in out:  # the formula must agree with the modules (it does for bias-free Llama blocks)
        held = counts.layers[s.layer].attn_params if s.kind == "attn" else counts.layers[s.layer].ffn_params
        if held != s.params(s.max_units):
            raise PutriError(f"layer {s.layer} {s.kind}: holds {held} parameters, expected {s.params(s.max_units)}; "
                             "the search supports Llama blocks without projection biases")
    return out


def level_grid(centre: int, step: int, side: int, max_units: int) -> list[int]:
    """Unit counts ``centre + j*step`` (|j| <= side) inside [0, max]; 0 and max are added when the
    window reaches past them (a sub-layer may vanish or stay dense)."""
    grid = {centre + j * step for j in range(-side, side + 1) if 0 <= centre + j * step <= max_units}
    if centre - side * step < 0:
        grid.add(0)
    if centre + side * step > max_units:
        grid.add(max_units)
    return sorted(grid)


# ---------------------------------------------------------------------------------------------
# Variants: stored as (kept indices, refit output columns); modules rebuilt on demand


def _group_channels(head_dim: int, group: int, groups: Sequence[int]) -> torch.Tensor:
    width = group * head_dim
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups])


def build_attention(model: PutriLlamaForCausalLM, layer: int, groups: Sequence[int], o_columns: torch.Tensor
                    ) -> LlamaAttention | None:
    """A standalone attention module of ``layer`` keeping KV groups ``groups`` with new o_proj columns."""
    if not groups:
        return None
    c = model.config
    dense = model.model.layers[layer].self_attn
    kv, heads, hd = c.num_key_value_heads_per_layer[layer], c.num_attention_heads_per_layer[layer], c.head_dim
    group = heads // kv
    cfg = c.layer_config(layer)
    cfg.num_attention_heads, cfg.num_key_value_heads = len(groups) * group, len(groups)
    with torch.device("meta"):
        module = LlamaAttention(cfg, layer)
    q_rows = _group_channels(hd, group, groups)
    kv_rows = _group_channels(hd, 1, groups)
    state = {"q_proj.weight": dense.q_proj.weight[q_rows], "k_proj.weight": dense.k_proj.weight[kv_rows],
             "v_proj.weight": dense.v_proj.weight[kv_rows], "o_proj.weight": o_columns}
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        if getattr(dense, name).bias is not None:
            state[f"{name}.bias"] = getattr(dense, name).bias[rows]
    module.load_state_dict(state, assign=True)
    module.config = c  # runtime settings (attention implementation) follow the model
    return module.eval()


def build_mlp(model: PutriLlamaForCausalLM, layer: int, neurons: torch.Tensor, down_columns: torch.Tensor
              ) -> LlamaMLP | None:
    if neurons.numel() == 0:
        return None
    cfg = model.config.layer_config(layer)
    cfg.intermediate_size = neurons.numel()
    dense = model.model.layers[layer].mlp
    with torch.device("meta"):
        module = LlamaMLP(cfg)
    module.load_state_dict({"gate_proj.weight": dense.gate_proj.weight[neurons],
                            "up_proj.weight": dense.up_proj.weight[neurons],
                            "down_proj.weight": down_columns}, assign=True)
    return module.eval()


class VariantBank:
    """Variants of one supernet on disk, with a small in-memory cache of rebuilt modules."""

    def __init__(self, model: PutriLlamaForCausalLM, directory: Path, cache_bytes: int = 512 << 20):
        self.model, self.dir = model, Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache: OrderedDict[tuple, nn.Module | None] = OrderedDict()
        self.cache_bytes, self.held = cache_bytes, 0
        self.max_units = {(s.kind, s.layer): s.max_units for s in sublayers(model)}

    def path(self, kind: str, layer: int, units: int) -> Path:
        return self.dir / f"{kind}{layer}_{units}.safetensors"

    def save(self, kind: str, layer: int, units: int, keep: torch.Tensor, columns: torch.Tensor) -> None:
        tmp = self.dir / f".{kind}{layer}_{units}.tmp"
        save_file({"keep": keep.contiguous(), "columns": columns.contiguous()}, str(tmp))
        tmp.replace(self.path(kind, layer, units))

    def load(self, kind: str, layer: int, units: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = load_file(str(self.path(kind, layer, units)))
        return tensors["keep"], tensors["columns"]

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*.safetensors"))

    def module(self, kind: str, layer: int, units: int) -> nn.Module | None:
        """The sub-layer at ``units`` (the dense module itself at full width, None at 0)."""
        dense_layer = self.model.model.layers[layer]
        if units == self.max_units[(kind, layer)]:
            return dense_layer.self_attn if kind == "attn" else dense_layer.mlp
        if units == 0:
            return None
        key = (kind, layer, units)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        keep, columns = self.load(kind, layer, units)
        module = (build_attention(self.model, layer, keep.tolist(), columns) if kind == "attn"
                  else build_mlp(self.model, layer, keep, columns))
        size = sum(p.numel() * p.element_size() for p in module.parameters())
        self.cache[key] = module
        self.held += size
        while self.held > self.cache_bytes and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.held -= sum(p.numel() * p.element_size() for p in old.parameters())
        return module


# ---------------------------------------------------------------------------------------------
# Building the supernet block by block


def _collect_inputs(module: nn.Linear, run) -> torch.Tensor:
    """Run ``run()`` and return every input row that reached ``module`` (tokens x features)."""
    rows = []
    handle = module.register_forward_pre_hook(lambda _m, a: rows.append(a[0].reshape(-1, a[0].shape[-1]).float()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(rows)


def _attention_inputs(model, layer, x, bs) -> torch.Tensor:
    def run():
        for b in batches(x.shape[0], bs):
            layer.self_attn(layer.input_layernorm(x[b]), **block_kwargs(model, x[b]))
    return _collect_inputs(layer.self_attn.o_proj, run)


def _ffn_inputs(layer, h, bs) -> torch.Tensor:
    def run():
        for b in batches(h.shape[0], bs):
            layer.mlp(layer.post_attention_layernorm(h[b]))
    return _collect_inputs(layer.mlp.down_proj, run)


def attention_variants(model: PutriLlamaForCausalLM, layer: int, z: torch.Tensor, hessian: torch.Tensor,
                       units: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Putri's local attention pruner: for each kept-group count, the kept groups (nested greedy
    order by refit error) and the least-squares o_proj columns."""
    c = model.config
    kv, heads, hd = c.num_key_value_heads_per_layer[layer], c.num_attention_heads_per_layer[layer], c.head_dim
    group = heads // kv
    weight = model.model.layers[layer].self_attn.o_proj.weight.data
    order = group_removal_order(weight, hessian, [_group_channels(hd, group, [g]) for g in range(kv)])
    out = {}
    for k in units:
        if k in (0, kv):
            continue
        kept = sorted(order[kv - k:])
        channels = _group_channels(hd, group, kept)
        out[k] = (torch.tensor(kept, dtype=torch.long), least_squares_columns(weight, hessian, channels))
    return out


def ffn_variants(weight: torch.Tensor, hessian: torch.Tensor, tokens: int, units: Sequence[int], damping: float
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Putri stage 1 at several widths: top neurons by OBS x energy, least-squares down_proj columns."""
    scores, _ = obs_scores(weight, hessian, tokens, damping)
    out = {}
    for k in units:
        if k in (0, weight.shape[1]):
            continue
        keep = torch.sort(torch.topk(scores, k).indices).values
        out[k] = (keep, least_squares_columns(weight, hessian, keep))
    return out


def _propagate(inputs: torch.Tensor, variants: dict, units: Sequence[int], max_units: int, full_out: torch.Tensor,
               propagation: str, centre: int, channel_of) -> torch.Tensor:
    """Sub-layer output fed forward: the kept-fraction-weighted mean over levels, or the centre level's."""
    def output(k):
        if k == max_units:
            return full_out
        if k == 0:
            return torch.zeros_like(full_out)
        keep, cols = variants[k]
        return inputs[:, channel_of(keep)] @ cols.T

    if propagation == "centre":
        return output(centre)
    weights = {k: k / max_units for k in units}
    total = sum(weights.values())
    if total == 0:
        return torch.zeros_like(full_out)
    acc = torch.zeros_like(full_out)
    for k, w in weights.items():
        if w:
            acc += (w / total) * output(k)
    return acc


@torch.no_grad()
def build_supernet(model: PutriLlamaForCausalLM, ids: torch.Tensor, levels: dict[tuple[str, int], list[int]],
                   centres: dict[tuple[str, int], int], bank: VariantBank, propagation: str = "expectation",
                   damping: float = 1e-2, batch_size: int = 8, progress: bool = True) -> None:
    """Prune every sub-layer at its levels and store the variants in ``bank``."""
    if propagation not in ("expectation", "centre"):
        raise PutriError(f"unknown propagation {propagation!r}; use expectation or centre")
    c = model.config
    hd = c.head_dim
    x = embed(model, ids)
    n, t, d = x.shape
    for l in tqdm(range(c.num_hidden_layers), desc="supernet", unit="block", disable=not progress):
        layer = model.model.layers[l]
        kv = c.num_key_value_heads_per_layer[l]
        if kv:
            group = c.num_attention_heads_per_layer[l] // kv
            z = _attention_inputs(model, layer, x, batch_size)
            hessian = gram(z)
            units = levels[("attn", l)]
            variants = attention_variants(model, l, z, hessian, units)
            for k, (keep, cols) in variants.items():
                bank.save("attn", l, k, keep, cols)
            full = layer.self_attn.o_proj(z)
            attn_out = _propagate(z, variants, units, kv, full, propagation, centres[("attn", l)],
                                  lambda keep: _group_channels(hd, group, keep.tolist()))
            h = x + attn_out.view(n, t, d)
            del z, full, attn_out
        else:
            h = x
        width = c.intermediate_size_per_layer[l]
        if width:
            a = _ffn_inputs(layer, h, batch_size)
            hessian = gram(a)
            units = levels[("ffn", l)]
            weight = layer.mlp.down_proj.weight.data
            variants = ffn_variants(weight, hessian, a.shape[0], units, damping)
            for k, (keep, cols) in variants.items():
                bank.save("ffn", l, k, keep, cols)
            full = layer.mlp.down_proj(a)
            ffn_out = _propagate(a, variants, units, width, full, propagation, centres[("ffn", l)], lambda keep: keep)
            x = h + ffn_out.view(n, t, d)
            del a, full, ffn_out
        else:
            x = h


# ---------------------------------------------------------------------------------------------
# Pruning to given per-layer widths (the searched result, or a user's distribution)


@torch.no_grad()
def prune_to_widths(model: PutriLlamaForCausalLM, ids: torch.Tensor, kv_heads: Sequence[int], ffn: Sequence[int],
                    damping: float = 1e-2, batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Putri's local pruners at exactly these widths, sequentially: each block is calibrated on the
    outputs of the already-pruned earlier blocks (no expectation: the real pruned prefix)."""
    c = model.config
    check_widths(model, kv_heads, ffn)
    x = embed(model, ids)
    n, t, d = x.shape
    log = []
    for l in tqdm(range(c.num_hidden_layers), desc="pruning to widths", unit="block", disable=not progress):
        layer = model.model.layers[l]
        kv = c.num_key_value_heads_per_layer[l]
        entry = {"layer": l, "kv_heads": kv_heads[l], "ffn": ffn[l]}
        if kv and kv_heads[l] < kv:
            if kv_heads[l] == 0:
                keep_kv_groups(model, l, [])
            else:
                z = _attention_inputs(model, layer, x, batch_size)
                keep, cols = attention_variants(model, l, z, gram(z), [kv_heads[l]])[kv_heads[l]]
                del z
                keep_kv_groups(model, l, keep.tolist())
                layer.self_attn.o_proj.weight.data.copy_(cols)
                entry["kept_groups"] = keep.tolist()
        h = x
        if layer.self_attn is not None:
            h = torch.empty_like(x)
            for b in batches(n, batch_size):
                h[b] = x[b] + layer.self_attn(layer.input_layernorm(x[b]), **block_kwargs(model, x[b]))[0]
        width = c.intermediate_size_per_layer[l]
        if width and ffn[l] < width:
            if ffn[l] == 0:
                keep_ffn_neurons(model, l, [])
            else:
                pruner = FFNPruner(layer.mlp.down_proj.weight)
                pruner.add_batch(_ffn_inputs(layer, h, batch_size))
                keep, cols, info = pruner.prune(ffn[l], damping)
                keep_ffn_neurons(model, l, keep.tolist())
                layer.mlp.down_proj.weight.data.copy_(cols)
                entry.update(info)
        x = h
        if layer.mlp is not None:
            x = torch.empty_like(h)
            for b in batches(n, batch_size):
                x[b] = h[b] + layer.mlp(layer.post_attention_layernorm(h[b]))
        log.append(entry)
    return log


def check_widths(model: PutriLlamaForCausalLM, kv_heads: Sequence[int], ffn: Sequence[int]) -> None:
    c = model.config
    if len(kv_heads) != c.num_hidden_layers or len(ffn) != c.num_hidden_layers:
        raise PutriError(f"the distribution has {len(kv_heads)} attention and {len(ffn)} FFN entries; the model has "
                         f"{c.num_hidden_layers} layers")
    for l in range(c.num_hidden_layers):
        have_kv, have_ffn = c.num_key_value_heads_per_layer[l], c.intermediate_size_per_layer[l]
        if not (0 <= kv_heads[l] <= have_kv) or not (0 <= ffn[l] <= have_ffn):
            raise PutriError(f"layer {l}: asks for {kv_heads[l]} KV heads and {ffn[l]} FFN neurons; the model has "
                             f"{have_kv} and {have_ffn} (widths can only shrink)")
