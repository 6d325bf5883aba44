"""The block runner: calibration hidden states streamed through a model one block at a time.

Pruning methods see the network as a stream: the hidden states entering block l for every calibration
sample (one tensor, N x T x d), the block itself, and hooks on its projections. Everything in the package
that runs a model block by block goes through :class:`BlockRunner` (sub-layers applied in batches with the
masks, positions and rotary embeddings of the model's own forward) and :func:`sequential` (the loop of
SparseGPT's ``llama_sequential``: observe a sub-layer's inputs, change the sub-layer, advance the stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.masking_utils import create_causal_mask

from ..errors import PutriError
from ..finite import check_finite
from ..model.blocks import BlockStore

_LAYER = object()  # "the layer's own sub-layer" (None means: no sub-layer)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


class BlockRunner:
    """A model's embedding, sub-layers and head applied to [N, T, d] hidden states, ``batch_size`` samples at a time."""

    def __init__(self, model, batch_size: int = 8, blocks: BlockStore | None = None, save_blocks: bool = True):
        # blocks: a streamed model's block store (sequential opens each block before it and closes it after);
        # None: the model is held whole. save_blocks False: the blocks are only read (a closed block is dropped,
        # not written back), as the search's supernet and fitness do.
        self.model, self.batch_size, self.block_store = model, batch_size, blocks
        self.save_blocks = save_blocks
        self._kwargs: dict[tuple, dict] = {}

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def kwargs(self, x: torch.Tensor) -> dict:
        """Mask, positions and rotary embeddings of a full-length, unpadded batch, as ``LlamaModel.forward``
        builds them (computed for one sample: they broadcast over the batch)."""
        key = (x.shape[1], x.dtype, x.device)
        if key not in self._kwargs:
            probe = x[:1]
            positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
            mask = create_causal_mask(config=self.model.config, inputs_embeds=probe, attention_mask=None, cache=None,
                                      position_ids=positions)
            self._kwargs[key] = {"attention_mask": mask, "position_ids": positions,
                                 "position_embeddings": self.model.model.rotary_emb(probe, position_ids=positions)}
        return self._kwargs[key]

    def _batched(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for b in batches(x.shape[0], self.batch_size):
            out[b] = fn(x[b])
        return out

    def open(self, l: int) -> None:
        if self.block_store is not None:
            self.block_store.open(l)

    def close(self, l: int) -> None:
        if self.block_store is not None:
            self.block_store.close(l, save=self.save_blocks)

    @contextmanager
    def opened(self, l: int) -> Iterator[nn.Module]:
        """Block ``l`` materialized for the ``with`` body, closed after it (also when the body raises)."""
        self.open(l)
        try:
            yield self.layers[l]
        finally:
            self.close(l)

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The hidden states entering block 0, on the model's device in its dtype."""
        weight = self.model.model.embed_tokens.weight
        return self.model.model.embed_tokens(ids.to(weight.device))

    @torch.no_grad()
    def attention(self, layer: nn.Module, x: torch.Tensor, attn: nn.Module | None = _LAYER) -> torch.Tensor:
        """``x + Attn(norm(x))``; ``attn`` replaces the layer's attention (a supernet variant; None: no attention)."""
        attn = layer.self_attn if attn is _LAYER else attn
        if attn is None:
            return x
        kw = self.kwargs(x)
        return self._batched(lambda xb: xb + attn(layer.input_layernorm(xb), **kw)[0], x)

    @torch.no_grad()
    def ffn(self, layer: nn.Module, h: torch.Tensor, mlp: nn.Module | None = _LAYER) -> torch.Tensor:
        """``h + FFN(norm(h))``; ``mlp`` replaces the layer's FFN (None: no FFN)."""
        mlp = layer.mlp if mlp is _LAYER else mlp
        if mlp is None:
            return h
        return self._batched(lambda hb: hb + mlp(layer.post_attention_layernorm(hb)), h)

    def block(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(layer, self.attention(layer, x))

    def block_batch(self, layer: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        """One batch through a block, differentiable (what block reconstruction trains through)."""
        h = xb
        if layer.self_attn is not None:
            h = h + layer.self_attn(layer.input_layernorm(xb), **self.kwargs(xb))[0]
        return h if layer.mlp is None else h + layer.mlp(layer.post_attention_layernorm(h))

    def blocks(self, x: torch.Tensor, start: int = 0,
               entering: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Blocks ``start``…L−1; ``entering[l]`` receives the hidden states entering block l when given."""
        for l in range(start, len(self.layers)):
            if entering is not None:
                entering[l] = x
            with self.opened(l) as layer:
                x = self.block(layer, x)
        return x

    def head_batches(self, hidden: torch.Tensor, budget_bytes: int = 128 << 20) -> Iterator[slice]:
        """Sample slices of ``hidden`` whose fp32 logits take at most ``budget_bytes`` (one sample at least, at most
        ``batch_size``): a 49k vocabulary makes 100 MB of logits per 512-token sample, more than a block."""
        per_sample = hidden.shape[1] * self.model.lm_head.out_features * 4
        return batches(hidden.shape[0], max(1, min(self.batch_size, budget_bytes // per_sample)))

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (fp32) from the hidden states leaving the last block."""
        return self.model.lm_head(self.model.model.norm(hidden)).float()

    @torch.no_grad()
    def lm_loss(self, hidden: torch.Tensor, ids: torch.Tensor) -> float:
        """Mean next-token cross-entropy of ``ids`` from the hidden states leaving the last block."""
        total, count = 0.0, 0
        for b in batches(hidden.shape[0], self.batch_size):
            logits = self.logits(hidden[b])
            total += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       ids[b, 1:].reshape(-1).to(logits.device),
                                                       reduction="sum").item()
            count += ids[b, 1:].numel()
        return total / count


@contextmanager
def capture_inputs(module: nn.Module, fn: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(rows)`` with the input of every forward of ``module``, as 2-D fp32 rows (tokens x features)."""
    def pre_hook(_module, args):
        x = args[0]
        fn(x.reshape(-1, x.shape[-1]).float())

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def inputs_of(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Every input row that reached ``module`` while ``run()`` ran (tokens x features)."""
    rows: list[torch.Tensor] = []
    with capture_inputs(module, rows.append):
        run()
    return torch.cat(rows)


Visitor = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def sequential(runner: BlockRunner, hidden: torch.Tensor, *, attention: Visitor | None = None,
               ffn: Visitor | None = None, after_block: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
               start: int = 0, desc: str = "blocks", progress: bool = True) -> torch.Tensor:
    """For every block from ``start``: ``attention(l, x)`` sees the attention's input stream (and may prune the
    sub-layer), the stream advances through it; ``ffn(l, h)`` likewise; then ``after_block(l, x_in, x_out)``.

    A visitor that returns a tensor gives the stream after its sub-layer itself (the supernet's expectation over
    variants, or an output already computed while observing); None means: run the (possibly changed) sub-layer.
    A streamed model's block is opened before its visitors and closed (written back) before ``after_block``.
    Returns the hidden states leaving the last block.
    """
    layers = runner.layers
    for l in tqdm(range(start, len(layers)), desc=desc, unit="block", initial=start, total=len(layers),
                  disable=not progress):
        runner.open(l)
        layer = layers[l]
        h = attention(l, hidden) if attention is not None else None
        if h is None:
            h = runner.attention(layer, hidden)
        out = ffn(l, h) if ffn is not None else None
        if out is None:
            out = runner.ffn(layers[l], h)
        runner.close(l)
        check_finite(out, f"the calibration hidden states leaving block {l}",
                     f"a value overflowed: check the weights of block {l} (a huge tensor?) and the calibration text")
        if after_block is not None:
            after_block(l, hidden, out)
        hidden = out
    return hidden


def require_whole_model(blocks: BlockStore | None, what: str, instead: str) -> None:
    """Refuse, in one wording, an option that keeps a second copy of the model beside the pruned one: streaming
    exists so that not even one whole copy has to fit. ``instead``: what the user can do rather than that."""
    if blocks is not None:
        raise PutriError(f"{what} keeps a copy of the whole model beside the pruned one, which a streamed model does "
                         f"not hold: use --streaming off (the model in memory), or {instead}")


class DenseStream:
    """The dense model's hidden states beside the pruned stream, advanced one block at a time on a frozen copy of
    the dense blocks: what dense-target least squares fits each pruned layer to."""

    def __init__(self, dense_model: nn.Module, ids: torch.Tensor, batch_size: int = 8):
        self.runner = BlockRunner(dense_model, batch_size)
        self.ids = ids
        self.x: torch.Tensor | None = None
        self.next = 0

    def step(self, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``l``'s dense hidden states after its attention and after the block (blocks before ``l`` are run
        first when skipped, e.g. on resume)."""
        if self.x is None or l < self.next:
            self.x, self.next = self.runner.embed(self.ids), 0
        while True:
            layer = self.runner.layers[self.next]
            h = self.runner.attention(layer, self.x)
            y = self.runner.ffn(layer, h)
            self.x, self.next = y, self.next + 1
            if self.next > l:
                return h, y


class ChannelMask:
    """Multiplies a linear layer's input channels by a 0/1 mask (removing heads without reshaping).

    Zeroing the o_proj input channels of a query-head group is exactly removing that group: its
    K/V rows feed nothing else. ``extra`` adds one more masked set for a single trial forward.
    """

    def __init__(self, module: nn.Linear):
        self.mask = torch.ones(module.in_features)
        self.extra: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self._apply)

    def _apply(self, _module, args):
        mask = self.mask if self.extra is None else self.mask * self.extra
        if bool((mask == 1).all()):
            return None
        return (args[0] * mask.to(args[0].device, args[0].dtype),)

    def remove(self) -> None:
        self.handle.remove()
