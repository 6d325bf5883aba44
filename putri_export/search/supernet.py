"""Týr's supernet: Putri-pruned variants of every attention and FFN sub-layer at several widths.

A sub-layer's *units* are its KV-head groups (a KV head with its query heads) or its FFN neurons.
For each sub-layer the local pruner (Putri: greedy head-group removal with least-squares o_proj
refit; OBS neuron scores with least-squares down_proj update) produces one variant per level.
Variants are nested and only differ in the kept indices and the refit output columns, so a
variant is stored as those two tensors (safetensors, one file per variant) and rebuilt on demand.

A streamed model (``blocks``) is read block by block and never written while the supernet is built; pruning to
the searched widths writes its blocks to the store's work folder like ``prune`` does.

Blocks are processed in order and the calibration input of block l+1 is the *expectation* over
levels of block l's variant outputs (weight ∝ kept fraction), as in Týr; ``centre`` propagates
the centre level's output instead (Týr's released code).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..atomic import save_tensors_atomic
from ..errors import PutriError
from ..model import PutriForCausalLM, Widths, group_channels, keep_ffn_neurons, keep_kv_groups
from ..model.blocks import BlockStore
from ..prune.obs import LinearPruner, gram, group_removal_order, least_squares_columns, obs_scores
from ..prune.stream import BlockRunner, inputs_of, sequential
from .space import sublayers

KINDS = ("attn", "ffn")


# ---------------------------------------------------------------------------------------------
# Variants: stored as (kept indices, refit output columns); modules rebuilt on demand


_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def build_attention(model: PutriForCausalLM, layer: int, groups: Sequence[int], o_columns: torch.Tensor
                    ) -> nn.Module | None:
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
        module = type(dense)(cfg, layer)  # the family's attention class
    q_rows = group_channels(hd, group, groups)
    kv_rows = group_channels(hd, 1, groups)
    # Per-head-dim parameters (Qwen3's q/k norms) are shared by all heads: kept whole.
    state = {name: t for name, t in dense.state_dict().items() if name.split(".")[0] not in _PROJECTIONS}
    state |= {"q_proj.weight": dense.q_proj.weight[q_rows], "k_proj.weight": dense.k_proj.weight[kv_rows],
              "v_proj.weight": dense.v_proj.weight[kv_rows], "o_proj.weight": o_columns}
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        if getattr(dense, name).bias is not None:
            state[f"{name}.bias"] = getattr(dense, name).bias[rows]
    module.load_state_dict(state, assign=True)
    module.config = c  # runtime settings (attention implementation) follow the model
    return module.eval()


def build_mlp(model: PutriForCausalLM, layer: int, neurons: torch.Tensor, down_columns: torch.Tensor
              ) -> nn.Module | None:
    if neurons.numel() == 0:
        return None
    cfg = model.config.layer_config(layer)
    cfg.intermediate_size = neurons.numel()
    dense = model.model.layers[layer].mlp
    with torch.device("meta"):
        module = type(dense)(cfg)  # the family's MLP class
    module.load_state_dict({"gate_proj.weight": dense.gate_proj.weight[neurons],
                            "up_proj.weight": dense.up_proj.weight[neurons],
                            "down_proj.weight": down_columns}, assign=True)
    return module.eval()


class VariantBank:
    """Variants of one supernet on disk, with a small in-memory cache of rebuilt modules.

    A variant is rebuilt from its layer's dense weights: a streamed model's block must be open when it is asked for.
    """

    def __init__(self, model: PutriForCausalLM, directory: Path, cache_bytes: int = 128 << 20):
        self.model, self.dir = model, Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache: OrderedDict[tuple, nn.Module | None] = OrderedDict()
        self.cache_bytes, self.held = cache_bytes, 0
        self.max_units = {(s.kind, s.layer): s.max_units for s in sublayers(model)}

    def path(self, kind: str, layer: int, units: int) -> Path:
        return self.dir / f"{kind}{layer}_{units}.safetensors"

    def save(self, kind: str, layer: int, units: int, keep: torch.Tensor, columns: torch.Tensor) -> None:
        save_tensors_atomic(self.path(kind, layer, units), {"keep": keep, "columns": columns})

    def load(self, kind: str, layer: int, units: int) -> tuple[torch.Tensor, torch.Tensor]:
        # onto the model's device: a variant is rebuilt from the dense block's weights there
        device = str(self.model.model.embed_tokens.weight.device)
        tensors = load_file(str(self.path(kind, layer, units)), device=device)
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


def attention_variants(model: PutriForCausalLM, layer: int, z: torch.Tensor, hessian: torch.Tensor,
                       units: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Putri's local attention pruner: for each kept-group count, the kept groups (nested greedy
    order by refit error) and the least-squares o_proj columns."""
    c = model.config
    kv, heads, hd = c.num_key_value_heads_per_layer[layer], c.num_attention_heads_per_layer[layer], c.head_dim
    group = heads // kv
    weight = model.model.layers[layer].self_attn.o_proj.weight.data
    order = group_removal_order(weight, hessian, [group_channels(hd, group, [g]) for g in range(kv)])
    out = {}
    for k in units:
        if k in (0, kv):
            continue
        kept = sorted(order[kv - k:])
        channels = group_channels(hd, group, kept)
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
        return inputs[:, channel_of(keep)] @ cols.T.to(inputs.dtype)

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




def _fp32(linear: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``linear`` applied in fp32 to captured (fp32) input rows, whatever the model's dtype."""
    bias = linear.bias.float() if linear.bias is not None else None
    return torch.nn.functional.linear(rows, linear.weight.float(), bias)


def _o_proj_inputs(runner: BlockRunner, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return inputs_of(layer.self_attn.o_proj, lambda: runner.attention(layer, x))


def _down_proj_inputs(runner: BlockRunner, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return inputs_of(layer.mlp.down_proj, lambda: runner.ffn(layer, h))


@torch.no_grad()
def build_supernet(model: PutriForCausalLM, ids: torch.Tensor, levels: dict[tuple[str, int], list[int]],
                   centres: dict[tuple[str, int], int], bank: VariantBank, propagation: str = "expectation",
                   damping: float = 1e-2, batch_size: int = 8, progress: bool = True,
                   blocks: BlockStore | None = None) -> None:
    """Prune every sub-layer at its levels and store the variants in ``bank``; the stream fed to the next
    sub-layer is the expectation (or the centre level) over this one's variants."""
    if propagation not in ("expectation", "centre"):
        raise PutriError(f"unknown propagation {propagation!r}; use expectation or centre")
    c = model.config
    runner = BlockRunner(model, batch_size, blocks, save_blocks=False)
    widths = Widths.from_config(c)

    def attention(l: int, x: torch.Tensor) -> torch.Tensor:
        w = widths[l]
        if not w.kv_heads:
            return x
        layer = model.model.layers[l]
        z = _o_proj_inputs(runner, layer, x)
        units = levels[("attn", l)]
        variants = attention_variants(model, l, z, gram(z), units)
        for k, (keep, cols) in variants.items():
            bank.save("attn", l, k, keep, cols)
        out = _propagate(z, variants, units, w.kv_heads, _fp32(layer.self_attn.o_proj, z), propagation,
                         centres[("attn", l)], lambda keep: group_channels(c.head_dim, w.group, keep.tolist()))
        return x + out.view(x.shape).to(x.dtype)

    def ffn(l: int, h: torch.Tensor) -> torch.Tensor:
        width = widths[l].ffn
        if not width:
            return h
        layer = model.model.layers[l]
        a = _down_proj_inputs(runner, layer, h)
        units = levels[("ffn", l)]
        weight = layer.mlp.down_proj.weight.data
        variants = ffn_variants(weight, gram(a), a.shape[0], units, damping)
        for k, (keep, cols) in variants.items():
            bank.save("ffn", l, k, keep, cols)
        out = _propagate(a, variants, units, width, _fp32(layer.mlp.down_proj, a), propagation, centres[("ffn", l)],
                         lambda keep: keep)
        return h + out.view(h.shape).to(h.dtype)

    sequential(runner, runner.embed(ids), attention=attention, ffn=ffn, desc="supernet", progress=progress)


# ---------------------------------------------------------------------------------------------
# Pruning to given per-layer widths (the searched result, or a user's distribution)


@torch.no_grad()
def prune_to_widths(model: PutriForCausalLM, ids: torch.Tensor, target: Widths, damping: float = 1e-2,
                    batch_size: int = 8, progress: bool = True, blocks: BlockStore | None = None) -> list[dict]:
    """Putri's local pruners at exactly these widths, sequentially: each block is calibrated on the
    outputs of the already-pruned earlier blocks (no expectation: the real pruned prefix). A streamed model's
    pruned blocks go to the store's work folder (started afresh)."""
    dense = Widths.from_config(model.config)
    target.check_within(dense)
    if blocks is not None:
        blocks.reset()
    runner = BlockRunner(model, batch_size, blocks)
    log = [{"layer": l, "kv_heads": w.kv_heads, "ffn": w.ffn} for l, w in enumerate(target)]

    def fit_to(width: int, have: int, remove) -> int:
        """The width to fit the sub-layer to; 0 when there is nothing to fit (it stays whole, or goes)."""
        if width == 0 and have:
            remove()
        return width if 0 < width < have else 0

    def attention(l: int, x: torch.Tensor) -> None:
        if kv := fit_to(target[l].kv_heads, dense[l].kv_heads, lambda: keep_kv_groups(model, l, [])):
            layer = model.model.layers[l]
            z = _o_proj_inputs(runner, layer, x)
            keep, cols = attention_variants(model, l, z, gram(z), [kv])[kv]
            keep_kv_groups(model, l, keep.tolist())
            layer.self_attn.o_proj.weight.data.copy_(cols)
            log[l]["kept_groups"] = keep.tolist()

    def ffn(l: int, h: torch.Tensor) -> None:
        if width := fit_to(target[l].ffn, dense[l].ffn, lambda: keep_ffn_neurons(model, l, [])):
            layer = model.model.layers[l]
            pruner = LinearPruner(layer.mlp.down_proj.weight)
            pruner.add_batch(_down_proj_inputs(runner, layer, h))
            keep, cols, info = pruner.prune(width, damping)
            keep_ffn_neurons(model, l, keep.tolist())
            layer.mlp.down_proj.weight.data.copy_(cols)
            log[l].update(info)

    sequential(runner, runner.embed(ids), attention=attention, ffn=ffn, desc="pruning to widths", progress=progress)
    return log
