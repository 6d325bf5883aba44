"""Stages Putri and 2SSP share: a resumable FFN pass, greedy attention removal by calibration loss, and the
physical removal of the masked head groups (with Putri's optional o_proj refit)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import PutriError
from ..model import PutriForCausalLM, keep_ffn_neurons, keep_kv_groups, layer_group_channels
from .context import PruneContext
from .obs import LinearPruner
from .settings import ReconstructionSettings
from .stream import BlockRunner, ChannelMask, DenseStream, Visitor, batches, capture_inputs, inputs_of, sequential

# ---------------------------------------------------------------------------------------------
# FFN pass: block by block, resumable after every block


def _ffn_tensors(model: PutriForCausalLM, layer_idx: int) -> dict[str, torch.Tensor]:
    mlp = model.model.layers[layer_idx].mlp
    if mlp is None:
        return {}
    return {"gate": mlp.gate_proj.weight.data, "up": mlp.up_proj.weight.data, "down": mlp.down_proj.weight.data}


def _restore_ffn(model: PutriForCausalLM, layer_idx: int, tensors: dict[str, torch.Tensor]) -> None:
    width = tensors["down"].shape[1] if tensors else 0
    keep_ffn_neurons(model, layer_idx, range(width))
    if width:
        mlp = model.model.layers[layer_idx].mlp
        mlp.gate_proj.weight.data.copy_(tensors["gate"])
        mlp.up_proj.weight.data.copy_(tensors["up"])
        mlp.down_proj.weight.data.copy_(tensors["down"])


FFNVisitor = Callable[[int, torch.Tensor], "tuple[dict, torch.Tensor | None]"]


def ffn_pass(ctx: PruneContext, visit: FFNVisitor, desc: str, attention: Visitor | None = None
             ) -> tuple[list[dict], bool]:
    """Run ``visit(l, h)`` on every FFN's input stream, block by block, saving the pruned FFN and the stream
    after each block so that ``--resume`` continues from the last finished one. ``visit`` returns the layer's
    log entry and, optionally, the stream after the FFN (None: run the possibly pruned FFN); ``attention``, when
    given, is the attention visitor of :func:`sequential`. Returns the log and whether the pass started from the
    first block."""
    model, store = ctx.model, ctx.store
    done = store.get("ffn_done", 0)
    log: list[dict] = store.get("ffn_log", [])
    if ctx.runner.block_store is None:  # a streamed model reads finished blocks back from its block store
        for l in range(done):
            _restore_ffn(model, l, store.tensors(f"ffn{l}"))
    hidden = store.tensors("hidden")["hidden"] if done else ctx.runner.embed(ctx.calib.ids)

    def on_ffn(l: int, h: torch.Tensor) -> torch.Tensor | None:
        entry, out = visit(l, h)
        log.append(entry)
        return out

    def checkpoint(l: int, _x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        # A streamed block was written back when it was closed: only the stream is kept here.
        ffn = {} if ctx.runner.block_store is not None else {f"ffn{l}": _ffn_tensors(model, l)}
        store.save({"hidden": {"hidden": x_out}, **ffn}, ffn_done=l + 1, ffn_log=log)

    sequential(ctx.runner, hidden, attention=attention, ffn=on_ffn, after_block=checkpoint, start=done, desc=desc,
               progress=ctx.progress)
    return log, done == 0


def keep_top(model: PutriForCausalLM, layer: int, scores: torch.Tensor, keep: int) -> None:
    """Keep the ``keep`` FFN neurons of ``layer`` with the highest ``scores``."""
    keep_ffn_neurons(model, layer, torch.sort(torch.topk(scores, keep).indices).values.tolist())


# ---------------------------------------------------------------------------------------------
# Greedy removal by calibration loss


@dataclass
class GreedyRound:
    removed: list
    losses: dict = field(default_factory=dict)  # candidate -> trial loss this round


def greedy_removal(candidates: Sequence[Hashable], trial_loss: Callable[[Hashable], float],
                   remove: Callable[[list], None], rounds: int, per_round: int,
                   on_round: Callable[[GreedyRound], None] | None = None) -> list[GreedyRound]:
    """Repeat ``rounds`` times: try removing each remaining candidate alone, then remove the
    ``per_round`` candidates whose removal hurt least (lowest trial loss). Ties break by order."""
    remaining = list(candidates)
    history = []
    for _ in range(rounds):
        if not remaining:
            break
        losses = {c: trial_loss(c) for c in remaining}
        chosen = sorted(remaining, key=lambda c: (losses[c], remaining.index(c)))[:per_round]
        remove(chosen)
        remaining = [c for c in remaining if c not in chosen]
        record = GreedyRound(removed=chosen, losses=losses)
        history.append(record)
        if on_round is not None:
            on_round(record)
    return history


class SliceEvaluator:
    """Calibration loss of the model with masked o_proj channels, on a short token slice.

    Caches the hidden states entering every layer for the current masks, so a trial mask in
    layer l only re-runs layers l..L-1.
    """

    def __init__(self, runner: BlockRunner, ids: torch.Tensor, masks: dict[int, ChannelMask]):
        self.runner, self.ids, self.masks = runner, ids, masks
        self.entering: list[torch.Tensor | None] = [None] * len(runner.layers)
        self.final: torch.Tensor | None = None
        self.refresh(0)

    def refresh(self, start: int) -> None:
        x = self.runner.embed(self.ids) if start == 0 else self.entering[start]
        self.final = self.runner.blocks(x, start, self.entering)

    def loss(self) -> float:
        return self.runner.lm_loss(self.final, self.ids)

    def trial(self, layer: int, channels: torch.Tensor) -> float:
        mask = self.masks[layer]
        extra = torch.ones_like(mask.mask)
        extra[channels] = 0
        mask.extra = extra
        try:
            out = self.runner.blocks(self.entering[layer], layer)
        finally:
            mask.extra = None
        return self.runner.lm_loss(out, self.ids)

    def remove(self, items: list[tuple[int, torch.Tensor]]) -> None:
        for layer, channels in items:
            self.masks[layer].mask[channels] = 0
        self.refresh(min(layer for layer, _ in items))


def attention_stage(ctx: PruneContext, rounds: int, per_round: int, unit: str
                    ) -> tuple[dict[int, ChannelMask], list[dict]]:
    """Greedy removal of KV-head groups (``unit='group'``) or whole attention layers (``'layer'``) by masking,
    scored by the calibration loss of :meth:`PruneContext.attention_slice`; resumable per round."""
    model, store = ctx.model, ctx.store
    if ctx.runner.block_store is not None:
        raise PutriError("scoring attention by calibration loss revisits every later block for each candidate, so it "
                         "needs the whole model in memory: use --attn-scoring local with --streaming, or "
                         "--streaming off")
    c = model.config
    attn_layers = [l for l in range(c.num_hidden_layers) if model.model.layers[l].self_attn is not None]
    masks = {l: ChannelMask(model.model.layers[l].self_attn.o_proj) for l in attn_layers}
    if unit == "group":
        candidates = [(l, g) for l in attn_layers for g in range(c.num_key_value_heads_per_layer[l])]
    else:
        candidates = [(l, None) for l in attn_layers]

    def channels(l: int, g: int | None) -> torch.Tensor:
        return layer_group_channels(model, l, None if g is None else [g])

    history: list[dict] = store.get("attn_rounds", [])
    for record in history:
        for l, g in record["removed"]:
            masks[l].mask[channels(l, g)] = 0
            candidates.remove((l, g))
    if rounds - len(history) <= 0 or not candidates:
        return masks, history
    evaluator = SliceEvaluator(ctx.runner, ctx.attention_slice(), masks)
    bar = tqdm(total=rounds, initial=len(history), desc=f"stage 2: attention {unit}s", unit="round",
               disable=not ctx.progress)

    def on_round(r: GreedyRound) -> None:
        history.append({"removed": [list(x) for x in r.removed],
                        "trial_losses": {f"{l}:{g}": v for (l, g), v in r.losses.items()},
                        "loss_after": evaluator.loss()})
        store.save(attn_rounds=history)
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss_after']:.4f}")

    greedy_removal(candidates, lambda cand: evaluator.trial(cand[0], channels(*cand)),
                   lambda chosen: evaluator.remove([(l, channels(l, g)) for l, g in chosen]),
                   rounds - len(history), per_round, on_round)
    bar.close()
    return masks, history


def masked_groups(model: PutriForCausalLM, masks: dict[int, ChannelMask]) -> dict[int, list[int]]:
    """Remove the mask hooks; return the KV-head groups each layer lost."""
    removed = {}
    for l, mask in masks.items():
        mask.remove()
        kv = model.config.num_key_value_heads_per_layer[l]
        removed[l] = [g for g in range(kv) if not bool(mask.mask[layer_group_channels(model, l, [g])[0]].item())]
    return removed


def fit_inputs(pruner: LinearPruner, module: torch.nn.Module, run: Callable[[slice], object], n: int,
               batch_size: int, target: Callable[[slice], torch.Tensor] | None) -> None:
    """Feed ``pruner`` the input rows of ``module`` while ``run(b)`` runs each batch ``b`` of the ``n`` calibration
    samples, paired with ``target(b)`` (the output rows the module should produce) when given."""
    if target is None:
        with capture_inputs(module, pruner.add_batch):
            for b in batches(n, batch_size):
                run(b)
        return
    for b in batches(n, batch_size):
        pruner.add_batch(inputs_of(module, lambda b=b: run(b)), target(b))


def remove_head_groups(ctx: PruneContext, removed: dict[int, list[int]], refit: bool,
                       dense: DenseStream | None = None) -> list[dict]:
    """Physically delete head groups; with ``refit``, re-solve the kept o_proj columns by least squares on the
    o_proj inputs of the already-pruned model, block by block (sequential, like stage 1): to the attention's own
    output, or with ``dense`` to the dense model's (its post-attention stream minus the pruned input stream)."""
    model, runner, s = ctx.model, ctx.runner, ctx.settings
    log: list[dict] = []

    def remove(l: int, x: torch.Tensor | None) -> None:
        h_dense = dense.step(l)[0] if dense is not None and x is not None else None
        groups = removed.get(l, [])
        if not groups:
            return
        layer = model.model.layers[l]
        keep_groups = [g for g in range(model.config.num_key_value_heads_per_layer[l]) if g not in groups]
        columns = None
        if x is not None and keep_groups:
            pruner = LinearPruner(layer.self_attn.o_proj.weight)
            target = None if h_dense is None else (lambda b: h_dense[b] - x[b])
            fit_inputs(pruner, layer.self_attn.o_proj, lambda b: runner.attention(layer, x[b]), x.shape[0],
                       runner.batch_size, target)
            columns = pruner.refit(layer_group_channels(model, l, keep_groups), s.update_damping)
        keep_kv_groups(model, l, keep_groups)
        if columns is not None:
            layer.self_attn.o_proj.weight.data.copy_(columns)
        log.append({"layer": l, "kept_groups": keep_groups, "refit": columns is not None,
                    "fit_target": "dense" if h_dense is not None else "local"})

    if refit:
        sequential(runner, runner.embed(ctx.calib.ids), attention=lambda l, x: remove(l, x),
                   desc="resizing attention + o_proj refit", progress=ctx.progress)
    else:
        for l in range(model.config.num_hidden_layers):
            remove(l, None)
    return log


def refit_ffns(ctx: PruneContext, dense: DenseStream) -> list[dict]:
    """One more pass once every block has its final widths: each FFN's down_proj columns re-solved by least squares
    to the dense model's FFN output (its block output minus the pruned post-attention stream), on the stream of the
    finished pruned model (its heads were removed after its FFN was fitted)."""
    model, runner, s = ctx.model, ctx.runner, ctx.settings
    log: list[dict] = []

    def refit(l: int, h: torch.Tensor) -> None:
        y_dense = dense.step(l)[1]
        layer = model.model.layers[l]
        if layer.mlp is None:
            return
        down = layer.mlp.down_proj
        pruner = LinearPruner(down.weight)
        fit_inputs(pruner, down, lambda b: runner.ffn(layer, h[b]), h.shape[0], runner.batch_size,
                   lambda b: y_dense[b] - h[b])
        down.weight.data.copy_(pruner.refit(torch.arange(down.in_features), s.update_damping))
        log.append({"layer": l, "width": down.in_features, "tokens": pruner.tokens})
        pruner.free()

    sequential(runner, runner.embed(ctx.calib.ids), ffn=refit, desc="final FFN refit to the dense model",
               progress=ctx.progress)
    return log


def relative_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """``mean((output - target)²) / mean(target²)``."""
    return float((output - target).double().pow(2).mean() / target.double().pow(2).mean())


def train_block(runner: BlockRunner, layer: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, epochs: int,
                lr: float, step_samples: int, generator: torch.Generator) -> None:
    """Adam on every floating-point parameter of ``layer`` for ``epochs`` shuffled passes over the samples of ``x``,
    ``step_samples`` per step, minimising the block's mean squared error to ``target`` (relative to the target's
    energy). A constant learning rate: with these few steps a cosine decay to a tenth fitted every block worse, and
    smaller steps (more of them for the same passes) fitted better (results/quality)."""
    params = [p for p in layer.parameters() if p.is_floating_point()]
    if not params or epochs <= 0:
        return
    scale = float(target.double().pow(2).mean())
    optimizer = torch.optim.Adam(params, lr=lr)
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                for idx in torch.randperm(x.shape[0], generator=generator).split(step_samples):
                    idx = idx.to(x.device)
                    loss = (runner.block_batch(layer, x[idx]) - target[idx]).pow(2).mean() / scale
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    finally:
        for p in params:
            p.requires_grad_(False)


def reconstruct_blocks(runner: BlockRunner, ids: torch.Tensor, dense: DenseStream, settings: ReconstructionSettings,
                       progress: bool = True) -> list[dict]:
    """Block reconstruction: block by block, every kept weight of the pruned block (projections and norms) is trained
    (:func:`train_block`) so that the block's output on the *pruned* stream matches the dense model's block output on
    the dense stream; the stream then advances through the trained block. Memory: one block's gradients and Adam
    state beside the two streams; epochs, learning rate and windows per step from ``settings``. Used by Putri's last
    stage, the search's final pruning and tools/reconstruct.py."""
    x = runner.embed(ids)
    generator = torch.Generator().manual_seed(0)
    log: list[dict] = []
    for l in tqdm(range(len(runner.layers)), desc="block reconstruction", unit="block", disable=not progress):
        layer = runner.layers[l]
        y_dense = dense.step(l)[1]
        before = relative_error(runner.block(layer, x), y_dense)
        train_block(runner, layer, x, y_dense, settings.reconstruct_epochs, settings.reconstruct_lr,
                    settings.reconstruct_batch, generator)
        x_next = runner.block(layer, x)  # the "after" error and the next block's input: one forward
        log.append({"layer": l, "relative_error_before": before,
                    "relative_error_after": relative_error(x_next, y_dense)})
        x = x_next
    return log


def mean_block_errors(log: list[dict]) -> dict[str, float]:
    """The mean over blocks of a :func:`reconstruct_blocks` log's relative errors, before and after."""
    return {k: sum(e[f"relative_error_{k}"] for e in log) / len(log) for k in ("before", "after")}


def reconstruct_model(model: PutriForCausalLM, dense_model: PutriForCausalLM, ids: torch.Tensor, batch_size: int,
                      settings: ReconstructionSettings, progress: bool = True) -> list[dict]:
    """:func:`reconstruct_blocks` of a pruned model held whole in memory against a frozen dense copy."""
    return reconstruct_blocks(BlockRunner(model, batch_size), ids, DenseStream(dense_model, ids, batch_size),
                              settings, progress)
