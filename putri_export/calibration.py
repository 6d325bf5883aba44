"""Calibration plumbing: token samples, and running the model one block at a time.

Pruning methods see the network as a stream: the hidden states entering block l for every
calibration sample (one tensor, N x T x d), the block itself, and hooks on its projections.
Blocks are run with exactly the masks, positions and rotary embeddings of the model's own
forward (``block_kwargs`` builds them the way ``LlamaModel.forward`` does), so statistics
match what the model computes at inference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from .data import load_corpus
from .errors import PutriError
from .evaluate import tokenize_corpus
from .modeling_putri_llama import PutriLlamaDecoderLayer, PutriLlamaForCausalLM


@dataclass
class CalibrationSource:
    corpus: str  # what the user asked for
    source: str  # the file or hub dataset read
    sha256: str  # of the corpus text
    tokens: int  # tokens in the whole corpus
    samples: int  # windows taken from it (the first ones, in order)


@dataclass
class Calibration:
    ids: torch.Tensor  # (N, T) token ids
    sources: list[CalibrationSource]

    def provenance(self) -> dict:
        n, t = self.ids.shape
        return {"samples": n, "seq_len": t, "tokens": n * t, "sources": [asdict(s) for s in self.sources]}


def load_calibration(tokenizer, specs: str | list[str], samples: int, seq_len: int) -> Calibration:
    """The first ``samples`` non-overlapping ``seq_len``-token windows, split evenly across corpora.

    ``specs`` is one data spec or a comma-separated list (e.g. ``wikitext2:valid,tinystories:train``).
    Windows are taken in order from the start of each corpus (no shuffling, as the reference), so
    the tail of a calibration corpus stays unseen.
    """
    names = [s.strip() for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    if not names:
        raise PutriError("no calibration data given (--calib)")
    if samples < 1 or seq_len < 2:
        raise PutriError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples} x {seq_len}")
    shares = [samples // len(names) + (1 if i < samples % len(names) else 0) for i in range(len(names))]
    chunks, sources = [], []
    for name, share in zip(names, shares):
        if share == 0:
            continue
        corpus = load_corpus(name)
        ids = tokenize_corpus(tokenizer, corpus)
        have = ids.numel() // seq_len
        if have < share:
            raise PutriError(
                f"calibration corpus {name!r} ({corpus.source}) has {ids.numel()} tokens: {have} windows of "
                f"{seq_len}, but {share} are needed ({samples} samples over {len(names)} corpora); "
                f"lower --calib-samples or --calib-len, or give more text")
        chunks.append(ids[: share * seq_len].view(share, seq_len))
        sources.append(CalibrationSource(name, corpus.source, hashlib.sha256(corpus.text.encode()).hexdigest(),
                                         ids.numel(), share))
    return Calibration(torch.cat(chunks), sources)


# ---------------------------------------------------------------------------------------------
# Running blocks


def block_kwargs(model: PutriLlamaForCausalLM, hidden: torch.Tensor) -> dict:
    """Mask, positions and rotary embeddings for a full-length, unpadded batch (as the model's forward)."""
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=None,
                              cache=None, position_ids=positions)
    return {"attention_mask": mask, "position_ids": positions,
            "position_embeddings": model.model.rotary_emb(hidden, position_ids=positions)}


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def embed(model: PutriLlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model.model.embed_tokens(ids).float()


@torch.no_grad()
def run_block(model: PutriLlamaForCausalLM, layer: PutriLlamaDecoderLayer, hidden: torch.Tensor,
              batch_size: int = 8) -> torch.Tensor:
    """Block output for every sample (hooks on the block's modules see each batch)."""
    out = torch.empty_like(hidden)
    for b in batches(hidden.shape[0], batch_size):
        x = hidden[b]
        out[b] = layer(x, **block_kwargs(model, x))
    return out


@torch.no_grad()
def run_attention(model: PutriLlamaForCausalLM, layer: PutriLlamaDecoderLayer, hidden: torch.Tensor,
                  batch_size: int = 8) -> torch.Tensor:
    """``h = x + Attn(norm(x))`` for every sample: the FFN's residual input."""
    if layer.self_attn is None:
        return hidden.clone()
    out = torch.empty_like(hidden)
    for b in batches(hidden.shape[0], batch_size):
        x = hidden[b]
        kw = block_kwargs(model, x)
        attn, _ = layer.self_attn(layer.input_layernorm(x), **kw)
        out[b] = x + attn
    return out


@torch.no_grad()
def run_ffn(layer: PutriLlamaDecoderLayer, hidden: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``y = h + FFN(norm(h))`` for every sample."""
    if layer.mlp is None:
        return hidden.clone()
    out = torch.empty_like(hidden)
    for b in batches(hidden.shape[0], batch_size):
        h = hidden[b]
        out[b] = h + layer.mlp(layer.post_attention_layernorm(h))
    return out


@torch.no_grad()
def lm_loss(model: PutriLlamaForCausalLM, hidden: torch.Tensor, ids: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy from the hidden states leaving the last block."""
    total, count = 0.0, 0
    for b in batches(hidden.shape[0], batch_size):
        logits = model.lm_head(model.model.norm(hidden[b])).float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                ids[b, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += ids[b, 1:].numel()
    return total / count


@contextmanager
def input_hook(module: nn.Module, fn: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call ``fn(input)`` with the (2-D, tokens x features) input of every forward of ``module``."""
    def pre_hook(_module, args):
        x = args[0]
        fn(x.reshape(-1, x.shape[-1]).float())

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


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
        return (args[0] * mask.to(args[0].dtype),)

    def remove(self) -> None:
        self.handle.remove()
