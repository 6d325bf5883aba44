"""Pruning pipelines: calibrate block by block, apply a method's units, resize the layers.

Methods (see ``docs``): ``putri`` (sequential OBS FFN pruning with least-squares update, then greedy
KV-head-group removal, optional o_proj refit), ``2ssp``, ``shortgpt`` and ``flap``. The algorithms
are in ``putri.py`` / ``baselines.py``; this file is plumbing: hidden-state streaming, hooks,
resume state, and the report. Only one block's statistics and one N x T x d tensor of calibration
hidden states are alive at a time; the model itself is modified in place (no second copy).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import baselines
from .budget import achieved, check_sparsity, split_budget
from .calibration import (
    Calibration,
    ChannelMask,
    embed,
    input_hook,
    lm_loss,
    run_attention,
    run_block,
    run_ffn,
)
from .errors import PutriError
from .model import PutriLlamaForCausalLM, keep_ffn_neurons, keep_kv_groups, param_counts
from .modeling_putri_llama import add_output_bias
from .putri import FFNPruner, greedy_removal, least_squares_columns

METHODS = ("putri", "2ssp", "shortgpt", "flap")


@dataclass
class PruneSettings:
    method: str = "putri"
    sparsity: float = 0.5
    alpha: float = 1.5  # budget split exponent divisor (2SSP/Putri)
    damping: float = 1e-2  # relative damping of H for OBS scoring
    update: bool = True  # least-squares update of kept down_proj columns (Putri)
    update_damping: float = 0.0  # relative ridge in that solve
    # Least-squares refit of kept o_proj columns after head removal (Putri "rec"). Default on: measured
    # better on held-out text (results/pruning/refit_study_0.50.json).
    o_refit: bool = True
    attn_samples: int = 2  # calibration samples used to score head groups / attention layers
    attn_len: int = 256  # their first tokens
    batch_size: int = 8

    def check(self) -> None:
        if self.method not in METHODS:
            raise PutriError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_sparsity(self.sparsity)
        if self.attn_samples < 1 or self.attn_len < 2 or self.batch_size < 1:
            raise PutriError("attn-samples and batch-size must be >= 1 and attn-len >= 2")
        if self.damping < 0 or self.update_damping < 0:
            raise PutriError("damping must be >= 0")


# ---------------------------------------------------------------------------------------------
# Resume state: hidden states and finished layers as safetensors, progress as JSON (never pickle)


class ResumeState:
    def __init__(self, directory: Path | None, key: str):
        self.dir = Path(directory) if directory is not None else None
        self.key = key
        self.meta: dict = {}

    def load(self) -> bool:
        """Read a previous run's progress; False when there is none."""
        if self.dir is None or not (self.dir / "meta.json").is_file():
            return False
        meta = json.loads((self.dir / "meta.json").read_text())
        if meta.get("key") != self.key:
            raise PutriError(f"resume state in {self.dir} comes from other settings, model or calibration; "
                             "run without --resume to start over")
        self.meta = meta
        return True

    def clear(self) -> None:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir)
        self.meta = {}

    def save(self, tensors: dict[str, dict[str, torch.Tensor]] | None = None, **meta) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, group in (tensors or {}).items():
            tmp = self.dir / f".{name}.tmp"
            save_file({k: v.contiguous() for k, v in group.items()}, str(tmp))
            tmp.replace(self.dir / f"{name}.safetensors")
        self.meta.update(meta, key=self.key)
        tmp = self.dir / ".meta.tmp"
        tmp.write_text(json.dumps(self.meta))
        tmp.replace(self.dir / "meta.json")

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.dir / f"{name}.safetensors"))


def state_key(model: PutriLlamaForCausalLM, calib: Calibration, settings: PruneSettings) -> str:
    ident = {"settings": asdict(settings), "calibration": calib.provenance(), "config": model.config.to_dict(),
             "weights": float(sum(p.detach().double().sum() for p in model.parameters()))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Stage 1: FFN neurons (Putri: sequential OBS + update; 2SSP: activation norm on the dense model)


def _ffn_tensors(model: PutriLlamaForCausalLM, layer_idx: int) -> dict[str, torch.Tensor]:
    mlp = model.model.layers[layer_idx].mlp
    if mlp is None:
        return {}
    return {"gate": mlp.gate_proj.weight.data, "up": mlp.up_proj.weight.data, "down": mlp.down_proj.weight.data}


def _restore_ffn(model: PutriLlamaForCausalLM, layer_idx: int, tensors: dict[str, torch.Tensor]) -> None:
    width = tensors["down"].shape[1] if tensors else 0
    keep_ffn_neurons(model, layer_idx, range(width))
    if width:
        mlp = model.model.layers[layer_idx].mlp
        mlp.gate_proj.weight.data.copy_(tensors["gate"])
        mlp.up_proj.weight.data.copy_(tensors["up"])
        mlp.down_proj.weight.data.copy_(tensors["down"])


def ffn_stage(model: PutriLlamaForCausalLM, ids: torch.Tensor, keep: list[int], settings: PruneSettings,
              state: ResumeState, progress: bool = True, dense_cache: dict | None = None) -> list[dict]:
    """Prune every FFN to ``keep[l]`` neurons, block by block."""
    sequential = settings.method == "putri"
    layers = model.model.layers
    if not sequential and dense_cache is not None and "ffn_l2" in dense_cache:
        return _ffn_from_norms(model, keep, dense_cache["ffn_l2"])
    norms: list[torch.Tensor | None] = [None] * len(layers)
    done = state.meta.get("ffn_done", 0)
    log: list[dict] = state.meta.get("ffn_log", [])
    for l in range(done):
        _restore_ffn(model, l, state.tensors(f"ffn{l}"))
    hidden = state.tensors("hidden")["hidden"] if done else embed(model, ids)
    bs = settings.batch_size
    for l in tqdm(range(done, len(layers)), desc="stage 1: FFN neurons", unit="block", disable=not progress,
                  initial=done, total=len(layers)):
        layer = layers[l]
        width = model.config.intermediate_size_per_layer[l]
        h = run_attention(model, layer, hidden, bs)
        entry = {"layer": l, "width": width, "kept": min(keep[l], width)}
        if layer.mlp is None or (sequential and keep[l] >= width):
            hidden = run_ffn(layer, h, bs)
        elif sequential and keep[l] == 0:
            keep_ffn_neurons(model, l, [])
            hidden = h
        elif sequential:
            pruner = FFNPruner(layer.mlp.down_proj.weight)
            with input_hook(layer.mlp.down_proj, pruner.add_batch):
                run_ffn(layer, h, bs)
            kept, columns, info = pruner.prune(keep[l], settings.damping, settings.update, settings.update_damping)
            entry.update(info)
            keep_ffn_neurons(model, l, kept.tolist())
            if len(kept):
                layer.mlp.down_proj.weight.data.copy_(columns)
            hidden = run_ffn(layer, h, bs)  # the pruned block's output feeds the next block
        else:  # 2SSP: every layer scored on the dense model's activations
            stats = baselines.ChannelStats(width)
            with input_hook(layer.mlp.down_proj, stats.add_batch):
                hidden = run_ffn(layer, h, bs)
            norms[l] = stats.l2_norm
            if keep[l] < width:
                keep_ffn_neurons(model, l, torch.sort(torch.topk(norms[l], keep[l]).indices).values.tolist())
        del h
        log.append(entry)
        state.save({"hidden": {"hidden": hidden}, f"ffn{l}": _ffn_tensors(model, l)}, ffn_done=l + 1, ffn_log=log)
    if not sequential and dense_cache is not None and done == 0:
        dense_cache["ffn_l2"] = norms
    return log


def _ffn_from_norms(model: PutriLlamaForCausalLM, keep: list[int], norms: list[torch.Tensor | None]) -> list[dict]:
    """2SSP's FFN step from activation norms already measured on the same dense model and calibration."""
    log = []
    for l, layer_norms in enumerate(norms):
        width = model.config.intermediate_size_per_layer[l]
        if layer_norms is not None and keep[l] < width:
            keep_ffn_neurons(model, l, torch.sort(torch.topk(layer_norms, keep[l]).indices).values.tolist())
        log.append({"layer": l, "width": width, "kept": min(keep[l], width)})
    return log


# ---------------------------------------------------------------------------------------------
# Stage 2: attention (head groups for Putri, whole layers for 2SSP), greedy by calibration loss


class SliceEvaluator:
    """Calibration loss of the model with masked o_proj channels, on a short token slice.

    Caches the hidden states entering every layer for the current masks, so a trial mask in
    layer l only re-runs layers l..L-1.
    """

    def __init__(self, model: PutriLlamaForCausalLM, ids: torch.Tensor, masks: dict[int, ChannelMask],
                 batch_size: int = 8):
        self.model, self.ids, self.masks, self.bs = model, ids, masks, batch_size
        self.entering: list[torch.Tensor] = [None] * len(model.model.layers)
        self.final: torch.Tensor | None = None
        self.refresh(0)

    def _run_from(self, start: int, x: torch.Tensor, store: bool) -> torch.Tensor:
        for l in range(start, len(self.model.model.layers)):
            if store:
                self.entering[l] = x
            x = run_block(self.model, self.model.model.layers[l], x, self.bs)
        return x

    def refresh(self, start: int) -> None:
        x = embed(self.model, self.ids) if start == 0 else self.entering[start]
        self.final = self._run_from(start, x, store=True)

    def loss(self) -> float:
        return lm_loss(self.model, self.final, self.ids, self.bs)

    def trial(self, layer: int, channels: torch.Tensor) -> float:
        mask = self.masks[layer]
        extra = torch.ones_like(mask.mask)
        extra[channels] = 0
        mask.extra = extra
        try:
            out = self._run_from(layer, self.entering[layer], store=False)
        finally:
            mask.extra = None
        return lm_loss(self.model, out, self.ids, self.bs)

    def remove(self, items: list[tuple[int, torch.Tensor]]) -> None:
        for layer, channels in items:
            self.masks[layer].mask[channels] = 0
        self.refresh(min(layer for layer, _ in items))


def _group_channels(model: PutriLlamaForCausalLM, layer: int, group: int | None) -> torch.Tensor:
    c = model.config
    heads, kv = c.num_attention_heads_per_layer[layer], c.num_key_value_heads_per_layer[layer]
    if group is None:
        return torch.arange(heads * c.head_dim)
    width = heads // kv * c.head_dim
    return torch.arange(group * width, (group + 1) * width)


def attention_stage(model: PutriLlamaForCausalLM, ids: torch.Tensor, rounds: int, per_round: int, unit: str,
                    settings: PruneSettings, state: ResumeState, progress: bool = True
                    ) -> tuple[dict[int, ChannelMask], list[dict]]:
    """Greedy removal of head groups (``unit='group'``) or attention layers (``'layer'``) by masking."""
    c = model.config
    attn_layers = [l for l in range(c.num_hidden_layers) if model.model.layers[l].self_attn is not None]
    masks = {l: ChannelMask(model.model.layers[l].self_attn.o_proj) for l in attn_layers}
    if unit == "group":
        candidates = [(l, g) for l in attn_layers for g in range(c.num_key_value_heads_per_layer[l])]
    else:
        candidates = [(l, None) for l in attn_layers]
    history: list[dict] = state.meta.get("attn_rounds", [])
    for record in history:
        for l, g in record["removed"]:
            masks[l].mask[_group_channels(model, l, g)] = 0
            candidates.remove((l, g))
    if rounds - len(history) <= 0 or not candidates:
        return masks, history
    evaluator = SliceEvaluator(model, ids, masks, settings.batch_size)
    bar = tqdm(total=rounds, initial=len(history), desc=f"stage 2: attention {unit}s", unit="round",
               disable=not progress)

    def trial(cand):
        return evaluator.trial(cand[0], _group_channels(model, *cand))

    def remove(chosen):
        evaluator.remove([(l, _group_channels(model, l, g)) for l, g in chosen])

    def on_round(r):
        history.append({"removed": [list(x) for x in r.removed],
                        "trial_losses": {f"{l}:{g}": v for (l, g), v in r.losses.items()},
                        "loss_after": evaluator.loss()})
        state.save(attn_rounds=history)
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss_after']:.4f}")

    greedy_removal(candidates, trial, remove, rounds - len(history), per_round, on_round)
    bar.close()
    return masks, history


def masked_groups(model: PutriLlamaForCausalLM, masks: dict[int, ChannelMask]) -> dict[int, list[int]]:
    """Remove the mask hooks; return the KV-head groups each layer lost."""
    c = model.config
    removed = {}
    for l, mask in masks.items():
        mask.remove()
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        width = heads // kv * c.head_dim
        removed[l] = [g for g in range(kv) if not bool(mask.mask[g * width].item())]
    return removed


def remove_head_groups(model: PutriLlamaForCausalLM, removed: dict[int, list[int]], ids: torch.Tensor | None,
                       refit: bool, settings: PruneSettings, progress: bool = True) -> list[dict]:
    """Physically delete head groups; with ``refit``, re-solve the kept o_proj columns by least squares
    on the o_proj inputs of the already-pruned model (sequential, like stage 1)."""
    c = model.config
    log = []
    hidden = embed(model, ids) if refit else None
    for l in tqdm(range(c.num_hidden_layers), desc="resizing attention" + (" + o_proj refit" if refit else ""),
                  unit="block", disable=not progress):
        layer = model.model.layers[l]
        groups = removed.get(l, [])
        if groups:
            keep_groups = [g for g in range(c.num_key_value_heads_per_layer[l]) if g not in groups]
            columns = None
            if refit and keep_groups:
                gram = FFNPruner(layer.self_attn.o_proj.weight)
                with input_hook(layer.self_attn.o_proj, gram.add_batch):
                    run_attention(model, layer, hidden, settings.batch_size)
                kept_channels = torch.cat([_group_channels(model, l, g) for g in keep_groups])
                columns = least_squares_columns(layer.self_attn.o_proj.weight.data, gram.hessian,
                                                kept_channels, settings.update_damping)
            keep_kv_groups(model, l, keep_groups)
            if columns is not None:
                layer.self_attn.o_proj.weight.data.copy_(columns)
            log.append({"layer": l, "kept_groups": keep_groups, "refit": columns is not None})
        if refit:
            hidden = run_block(model, layer, hidden, settings.batch_size)
    return log


# ---------------------------------------------------------------------------------------------
# Methods


def _attn_slice(ids: torch.Tensor, settings: PruneSettings) -> torch.Tensor:
    n = ids.shape[0]
    count = min(settings.attn_samples, n)
    rows = [round(i * n / count) for i in range(count)]
    return ids[rows, : settings.attn_len]


def _putri_or_2ssp(model, calib, settings, state, progress, dense_cache) -> dict:
    budget = split_budget(model, settings.sparsity, settings.alpha)
    ffn_log = ffn_stage(model, calib.ids, budget.ffn_keep, settings, state, progress, dense_cache)
    attn_ids = _attn_slice(calib.ids, settings)
    if settings.method == "putri":
        masks, rounds = attention_stage(model, attn_ids, budget.n_attn, budget.groups_per_layer, "group",
                                        settings, state, progress)
        refit = settings.o_refit
    else:
        masks, rounds = attention_stage(model, attn_ids, budget.n_attn, 1, "layer", settings, state, progress)
        refit = False
    attn_log = remove_head_groups(model, masked_groups(model, masks), calib.ids, refit, settings, progress)
    return {"budget": asdict(budget), "ffn": ffn_log, "attention_rounds": rounds, "attention": attn_log}


def _shortgpt(model, calib, settings, state, progress, dense_cache) -> dict:
    layers = model.model.layers
    counts = param_counts(model)
    target = round(settings.sparsity * counts.blocks)
    smallest = min((li.block_params for li in counts.layers if li.block_params), default=0)
    if settings.sparsity > 0 and 2 * target < smallest:
        raise PutriError(f"sparsity {settings.sparsity} is below half a block (each block holds "
                         f"{smallest / counts.blocks:.3f} of the block parameters): ShortGPT removes whole blocks; "
                         "raise the sparsity or use another method")
    influence = (dense_cache or {}).get("block_influence")
    if influence is None:
        hidden = embed(model, calib.ids)
        influence = []
        for l in tqdm(range(len(layers)), desc="block influence", unit="block", disable=not progress):
            bi = baselines.BlockInfluence()
            out = run_block(model, layers[l], hidden, settings.batch_size)
            bi.add_batch(hidden, out)
            influence.append(bi.value)
            hidden = out
        del hidden
        if dense_cache is not None:
            dense_cache["block_influence"] = influence
    units = [baselines.Unit("block", l, 0, counts.layers[l].block_params) for l in range(len(layers))]
    chosen = baselines.global_selection(units, torch.tensor(influence, dtype=torch.float64), target)
    for unit in chosen:
        keep_kv_groups(model, unit.layer, [])
        keep_ffn_neurons(model, unit.layer, [])
    return {"block_influence": influence, "removed_blocks": sorted(u.layer for u in chosen), "target_removed": target}


def _fluctuation_stats(model, calib, settings, progress) -> tuple[dict, dict]:
    """Per-channel mean/variance of every o_proj and down_proj input on the dense model."""
    layers = model.model.layers
    attn_stats, ffn_stats = {}, {}
    hidden = embed(model, calib.ids)
    for l in tqdm(range(len(layers)), desc="fluctuation statistics", unit="block", disable=not progress):
        layer = layers[l]
        hooks = []
        if layer.self_attn is not None:
            attn_stats[l] = baselines.ChannelStats(layer.self_attn.o_proj.in_features)
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
                lambda _m, a, s=attn_stats[l]: s.add_batch(a[0])))
        if layer.mlp is not None:
            ffn_stats[l] = baselines.ChannelStats(layer.mlp.down_proj.in_features)
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
                lambda _m, a, s=ffn_stats[l]: s.add_batch(a[0])))
        try:
            hidden = run_block(model, layer, hidden, settings.batch_size)
        finally:
            for h in hooks:
                h.remove()
    return attn_stats, ffn_stats


def _flap(model, calib, settings, state, progress, dense_cache) -> dict:
    c = model.config
    layers = model.model.layers
    d, hd = c.hidden_size, c.head_dim
    cached = (dense_cache or {}).get("flap_stats")
    attn_stats, ffn_stats = cached if cached is not None else _fluctuation_stats(model, calib, settings, progress)
    if dense_cache is not None:
        dense_cache["flap_stats"] = (attn_stats, ffn_stats)
    units, scores = [], []
    for l, stats in attn_stats.items():
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        group = heads // kv
        channel = baselines.fluctuation_scores(layers[l].self_attn.o_proj.weight.data, stats.variance)
        scores.append(baselines.standardize(channel.view(kv, group * hd).mean(dim=1)))
        units += [baselines.Unit("attn", l, g, d * hd * (2 * group + 2)) for g in range(kv)]
    for l, stats in ffn_stats.items():
        channel = baselines.fluctuation_scores(layers[l].mlp.down_proj.weight.data, stats.variance)
        scores.append(baselines.standardize(channel))
        units += [baselines.Unit("ffn", l, j, 3 * d) for j in range(channel.numel())]
    target = round(settings.sparsity * param_counts(model).blocks)
    chosen = baselines.global_selection(units, torch.cat(scores), target)
    if not chosen:
        return {"target_removed": target, "removed_groups": {}}

    # FLAP as published first (masks + compensation bias; a fully removed sub-block leaves its bias),
    # measured on the attention slice; then the saved form, which cannot hold a bias without its module.
    c.output_projection_bias = True
    for layer in layers:
        add_output_bias(layer)
    removed_attn = {l: sorted(u.index for u in chosen if u.kind == "attn" and u.layer == l) for l in attn_stats}
    removed_ffn = {l: torch.tensor(sorted(u.index for u in chosen if u.kind == "ffn" and u.layer == l),
                                   dtype=torch.long) for l in ffn_stats}
    masks = {}
    for l, groups in removed_attn.items():
        o_proj = layers[l].self_attn.o_proj
        channels = (torch.cat([_group_channels(model, l, g) for g in groups]) if groups
                    else torch.zeros(0, dtype=torch.long))
        o_proj.bias.data += baselines.compensation_bias(o_proj.weight.data, attn_stats[l].mean, channels)
        masks[l] = ChannelMask(o_proj)
        masks[l].mask[channels] = 0
    for l, neurons in removed_ffn.items():
        down = layers[l].mlp.down_proj
        down.bias.data += baselines.compensation_bias(down.weight.data, ffn_stats[l].mean, neurons)
        masks[("ffn", l)] = ChannelMask(down)
        masks[("ffn", l)].mask[neurons] = 0
    attn_ids = _attn_slice(calib.ids, settings)
    loss_with_all_biases = SliceEvaluator(model, attn_ids, {}, settings.batch_size).loss()
    dropped = {"attn_layers": [], "ffn_layers": []}
    for mask in masks.values():
        mask.remove()
    for l, groups in removed_attn.items():
        kv = c.num_key_value_heads_per_layer[l]
        if len(groups) == kv:
            dropped["attn_layers"].append(l)
        keep_kv_groups(model, l, [g for g in range(kv) if g not in groups])
    for l, neurons in removed_ffn.items():
        width = c.intermediate_size_per_layer[l]
        if len(neurons) == width:
            dropped["ffn_layers"].append(l)
        keep_ffn_neurons(model, l, sorted(set(range(width)) - set(neurons.tolist())))
    loss_saved = SliceEvaluator(model, attn_ids, {}, settings.batch_size).loss()
    return {"target_removed": target, "removed_groups": {str(k): v for k, v in removed_attn.items()},
            "bias_dropped_with_removed_sublayers": dropped,
            "slice_loss_with_every_bias": loss_with_all_biases, "slice_loss_as_saved": loss_saved}


_METHODS = {"putri": _putri_or_2ssp, "2ssp": _putri_or_2ssp, "shortgpt": _shortgpt, "flap": _flap}


def prune_model(model: PutriLlamaForCausalLM, calib: Calibration, settings: PruneSettings,
                state_dir: Path | None = None, resume: bool = False, progress: bool = True,
                dense_cache: dict | None = None) -> dict:
    """Prune ``model`` in place and return the report.

    ``dense_cache``: a dict the caller passes again when pruning *the same dense model with the same
    calibration* at other settings; statistics that depend only on the dense model (2SSP activation
    norms, ShortGPT block influence, FLAP fluctuations) are measured once and reused.
    """
    settings.check()
    start = time.perf_counter()
    dense = param_counts(model)
    state = ResumeState(state_dir, state_key(model, calib, settings))
    resumed = state.load() if resume else False
    if not resumed:
        state.clear()
    model.eval()
    with torch.no_grad():
        details = _METHODS[settings.method](model, calib, settings, state, progress, dense_cache)
    state.clear()
    c = model.config
    return {
        "method": settings.method,
        "settings": asdict(settings),
        "sparsity_target": settings.sparsity,
        **achieved(model, dense.blocks, dense.total),
        "widths": [{"layer": l, "heads": c.num_attention_heads_per_layer[l],
                    "kv_heads": c.num_key_value_heads_per_layer[l], "ffn": c.intermediate_size_per_layer[l]}
                   for l in range(c.num_hidden_layers)],
        "calibration": calib.provenance(),
        "resumed": resumed,
        "prune_seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "details": details,
    }
