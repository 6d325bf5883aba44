"""Týr's search space: a configuration is the kept units of every sub-layer (KV-head groups of each attention,
neurons of each FFN), and the moves that keep the attention and FFN budgets fixed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import PutriError
from ..model import PutriForCausalLM, Widths, param_counts
from ..prune.budget import aligned_widths, split_budget

Config = tuple[int, ...]  # kept units per sub-layer, in ``sublayers()`` order (attn 0, ffn 0, attn 1, ...)


@dataclass(frozen=True)
class SubLayer:
    kind: str  # "attn" (units: KV-head groups) or "ffn" (units: neurons)
    layer: int
    max_units: int  # units in the model being pruned
    unit_params: int  # parameters per unit
    norm_params: int  # the sub-layer's RMSNorm, gone when it keeps no unit

    def params(self, units: int) -> int:
        return units * self.unit_params + (self.norm_params if units else 0)


def sublayers(model: PutriForCausalLM) -> list[SubLayer]:
    """Every sub-layer in forward order (attn 0, ffn 0, attn 1, ...), including empty ones."""
    c = model.config
    d, hd = c.hidden_size, c.head_dim
    out = []
    for l in range(c.num_hidden_layers):
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        group = heads // kv if kv else 1
        # A KV-head group: q rows of its query heads, its k and v rows, o columns (+ Qwen2's q/k/v biases);
        # the sub-layer's fixed part: its RMSNorm (+ Qwen3's per-head q/k norms).
        unit = d * hd * (2 * group + 2) + (hd * (group + 2) if c.qkv_bias else 0)
        out.append(SubLayer("attn", l, kv, unit, d + (2 * hd if c.qk_norm else 0)))
        out.append(SubLayer("ffn", l, c.intermediate_size_per_layer[l], 3 * d, d))
    counts = param_counts(model)
    for s in out:  # the formula must agree with the modules (it does unless o_proj/MLP carry biases)
        held = counts.layers[s.layer].attn_params if s.kind == "attn" else counts.layers[s.layer].ffn_params
        if held != s.params(s.max_units):
            raise PutriError(f"layer {s.layer} {s.kind}: holds {held} parameters, expected {s.params(s.max_units)}; "
                             "the search supports blocks without o_proj/MLP biases")
    return out


def level_step(sub: SubLayer, step_frac: float, align: int = 1) -> int:
    """Units between neighbouring levels of ``sub`` at ``step_frac`` of its width (FFN levels stay on multiples of
    ``align``; at least one unit)."""
    unit = align if sub.kind == "ffn" else 1
    return max(1, round(step_frac * sub.max_units / unit)) * unit if sub.max_units else 1


def level_grid(centre: int, step: int, side: int, max_units: int) -> list[int]:
    """Unit counts ``centre + j*step`` (|j| <= side) inside [0, max]; 0 and max are added when the
    window reaches past them (a sub-layer may vanish or stay dense)."""
    grid = {centre + j * step for j in range(-side, side + 1) if 0 <= centre + j * step <= max_units}
    if centre - side * step < 0:
        grid.add(0)
    if centre + side * step > max_units:
        grid.add(max_units)
    return sorted(grid)


def initial_config(model: PutriForCausalLM, subs: list[SubLayer], sparsity: float, alpha: float, align: int = 1
                   ) -> Config:
    """Putri's split, spread as evenly as the units allow: the attention head groups it removes go
    round-robin over the layers, and every FFN keeps the same neuron count (±1; ±``align`` in multiples of it)."""
    budget = split_budget(model, sparsity, alpha)
    attn = [i for i, s in enumerate(subs) if s.kind == "attn" and s.max_units]
    ffn = [i for i, s in enumerate(subs) if s.kind == "ffn" and s.max_units]
    units = [s.max_units for s in subs]
    groups, extra = divmod(budget.head_groups, len(attn))
    extra_at = {round((j + 0.5) * len(attn) / extra - 0.5) for j in range(extra)} if extra else set()
    for j, i in enumerate(attn):
        units[i] = max(0, units[i] - groups - (1 if j in extra_at else 0))
    target_kept = budget.block_params - budget.target_removed
    attn_params = sum(subs[i].params(units[i]) for i in attn)
    norms = sum(subs[i].norm_params for i in ffn)
    neurons = round((target_kept - attn_params - norms) / subs[ffn[0]].unit_params)
    neurons = min(max(neurons, 0), sum(subs[i].max_units for i in ffn))
    if align > 1:
        spread = aligned_widths([neurons / len(ffn)] * len(ffn), [subs[i].max_units for i in ffn], align)
        for i, k in zip(ffn, spread):
            units[i] = k
    else:
        for j, i in enumerate(ffn):  # even spread, each within its width
            units[i] = min(subs[i].max_units, neurons // len(ffn) + (1 if j < neurons % len(ffn) else 0))
    return repair_budget(subs, tuple(units), target_kept, align)


def kept_params(subs: list[SubLayer], config: Config) -> int:
    """Block parameters a configuration keeps."""
    return sum(s.params(u) for s, u in zip(subs, config))


def start_config(subs: list[SubLayer], widths: Widths, target_kept: int, align: int = 1) -> Config:
    """A given distribution (e.g. the widths Putri's greedy head removal chose) as a configuration, its FFNs moved
    by :func:`repair_budget` to this search's target."""
    config = []
    for s in subs:
        config.append(widths[s.layer].kv_heads if s.kind == "attn" else widths[s.layer].ffn)
        if config[-1] > s.max_units:
            raise PutriError(f"the start widths keep {config[-1]} units in layer {s.layer}'s {s.kind}; the model has "
                             f"{s.max_units}")
    return repair_budget(subs, tuple(config), target_kept, align)


def repair_budget(subs: list[SubLayer], config: Config, target_kept: int, align: int = 1) -> Config:
    """Move FFN neurons one at a time (from the widest, to the narrowest) until the kept block
    parameters are within half a neuron of the target: the search keeps unit totals, and a
    sub-layer emptied or revived changes the count by its norm. With ``align`` > 1 they move ``align`` at a time
    and the result keeps at most the target, short of it by less than ``align`` neurons."""
    units = list(config)
    ffn = [i for i, s in enumerate(subs) if s.kind == "ffn" and s.max_units]
    unit = subs[ffn[0]].unit_params if ffn else 0
    for _ in range(sum(s.max_units for s in subs if s.kind == "ffn") + 1):
        diff = kept_params(subs, units) - target_kept
        if (abs(diff) <= unit / 2) if align == 1 else (-align * unit < diff <= 0):
            break
        if diff > 0:  # to the next multiple of align below (a dense, unaligned width included)
            options = [i for i in ffn if units[i] > align] or [i for i in ffn if units[i] > 0]
            if not options:
                break
            i = max(options, key=lambda i: (units[i], -i))
            units[i] = (units[i] - 1) // align * align
        else:
            options = ([i for i in ffn if 0 < units[i] < subs[i].max_units]
                       or [i for i in ffn if units[i] < subs[i].max_units])
            if not options:
                break
            i = min(options, key=lambda i: (units[i], i))
            units[i] = min((units[i] // align + 1) * align, subs[i].max_units)
    return tuple(units)


def mutate(config: Config, levels: list[list[int]], kinds: list[str], rng: random.Random, max_shifts: int) -> Config:
    """1..max_shifts level shifts: one sub-layer one level sparser, another of the same kind one
    level denser by exactly as many units, so each kind's total is unchanged."""
    child = list(config)
    for _ in range(rng.randint(1, max_shifts)):
        for _try in range(64):
            a = rng.randrange(len(child))
            ia = levels[a].index(child[a])
            if ia == 0:
                continue
            delta = child[a] - levels[a][ia - 1]
            partners = []
            for b in range(len(child)):
                if b == a or kinds[b] != kinds[a]:
                    continue
                ib = levels[b].index(child[b])
                if ib + 1 < len(levels[b]) and levels[b][ib + 1] - child[b] == delta:
                    partners.append(b)
            if partners:
                b = rng.choice(partners)
                child[a] -= delta
                child[b] += delta
                break
    return tuple(child)


def trade(config: Config, rng: random.Random, levels: list[list[int]], subs: list[SubLayer], limit: int) -> Config:
    """Move parameters between attention and FFN: one attention sub-layer one level sparser or denser, then FFN
    sub-layers one level at a time (chosen at random) the other way, until the kept parameters are at most
    ``limit`` and no further FFN level fits under it. Every width stays on its level grid (the supernet has it);
    the total never passes the budget, so a trade can only win by quality, not by parameters."""
    child = list(config)
    attn = [i for i, s in enumerate(subs) if s.kind == "attn" and len(levels[i]) > 1]
    ffn = [i for i, s in enumerate(subs) if s.kind == "ffn" and len(levels[i]) > 1]
    if not attn or not ffn:
        return config
    a = rng.choice(attn)
    ia = levels[a].index(child[a])
    child[a] = levels[a][rng.choice([j for j in (ia - 1, ia + 1) if 0 <= j < len(levels[a])])]

    def shifted(i: int, by: int) -> int | None:
        j = levels[i].index(child[i]) + by
        return levels[i][j] if 0 <= j < len(levels[i]) else None

    while kept_params(subs, child) > limit:
        options = [i for i in ffn if shifted(i, -1) is not None]
        if not options:
            return config
        i = rng.choice(options)
        child[i] = shifted(i, -1)
    while True:
        room = limit - kept_params(subs, child)
        options = [i for i in ffn if (u := shifted(i, 1)) is not None
                   and subs[i].params(u) - subs[i].params(child[i]) <= room]
        if not options:
            break
        i = rng.choice(options)
        child[i] = shifted(i, 1)
    return tuple(child)


def config_widths(model: PutriForCausalLM, config: Config) -> Widths:
    """The per-layer widths a configuration keeps (query heads follow each layer's heads per KV head)."""
    return Widths.from_config(model.config).with_kv_and_ffn(config[0::2], config[1::2])
