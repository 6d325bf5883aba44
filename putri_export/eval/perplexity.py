"""Perplexity with the standard protocol: join documents, tokenize once, non-overlapping windows.

The same windows are scored for every model and artifact: a ``LogitsFn`` maps token windows [B, T] to
logits [B, T, V], from PyTorch (:func:`torch_logits_fn`) or from any runtime that gives one sequence's
logits (:func:`runtime_logits_fn`: llama.cpp, ONNX Runtime, in their child processes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Corpus, windows
from ..finite import check_finite


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    windows: int
    predicted_tokens: int  # windows × (seq_len − 1): the first token of a window has no context
    seq_len: int
    corpus_tokens: int
    data: str
    data_source: str

    def to_dict(self) -> dict:
        return asdict(self)


LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def window_nll(logits_fn: LogitsFn, batch: torch.Tensor) -> torch.Tensor:
    """Summed NLL (float64) of tokens 1..T−1 of each window, given logits for the whole window."""
    logits = logits_fn(batch).float()
    check_finite(logits, "the logits of an evaluation window",
                 "a value overflowed in the model: check its weights (or load it in float32)")
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logprobs.gather(-1, batch[:, 1:, None]).squeeze(-1)
    return nll.double().sum()


NllFn = Callable[[torch.Tensor], torch.Tensor]  # windows [B, T] → summed NLL (float64) of tokens 1..T−1


def logits_nll_fn(logits_fn: LogitsFn) -> NllFn:
    """Score windows from their logits (:func:`window_nll`)."""
    return lambda batch: window_nll(logits_fn, batch)


def perplexity(logits_fn: LogitsFn, ids: torch.Tensor, seq_len: int, max_windows: int | None = None,
               batch_size: int = 1, corpus: Corpus | None = None, progress: bool = True) -> PerplexityResult:
    """Mean NLL over all predicted tokens of ``ids`` cut into windows; ``logits_fn`` maps [B, T] → [B, T, V]."""
    return nll_perplexity(logits_nll_fn(logits_fn), ids, seq_len, max_windows, batch_size, corpus, progress)


def nll_perplexity(nll_fn: NllFn, ids: torch.Tensor, seq_len: int, max_windows: int | None = None,
                   batch_size: int = 1, corpus: Corpus | None = None, progress: bool = True) -> PerplexityResult:
    """:func:`perplexity` from a function that scores windows itself (e.g. :func:`runtime_nll_fn`)."""
    wins = windows(ids, seq_len, max_windows, corpus.source if corpus else "the corpus")
    total = 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, len(wins), batch_size), desc="perplexity", unit="batch", disable=not progress):
            total += float(nll_fn(wins[start : start + batch_size]))
    count = len(wins) * (seq_len - 1)
    mean = total / count
    return PerplexityResult(
        perplexity=math.exp(mean), mean_nll=mean, windows=len(wins), predicted_tokens=count, seq_len=seq_len,
        corpus_tokens=int(ids.numel()), data=corpus.name if corpus else "", data_source=corpus.source if corpus else "",
    )


def streamed_perplexity(runner, ids: torch.Tensor, seq_len: int, max_windows: int | None = None,
                        corpus: Corpus | None = None, chunk_tokens: int = 65536, progress: bool = True
                        ) -> PerplexityResult:
    """The same windows and mean NLL as :func:`perplexity`, for a model streamed block by block (``runner`` is a
    ``prune.stream.BlockRunner`` over a block store): ``chunk_tokens`` tokens of windows at a time go through every
    block, so one block and one chunk's hidden states are alive at once."""
    from ..prune.stream import batches, sequential

    wins = windows(ids, seq_len, max_windows, corpus.source if corpus else "the corpus")
    total = 0.0
    per_chunk = max(1, chunk_tokens // seq_len)
    with torch.inference_mode():
        for chunk in tqdm(list(batches(len(wins), per_chunk)), desc="perplexity (streamed)", unit="chunk",
                          disable=not progress):
            part = wins[chunk]
            hidden = sequential(runner, runner.embed(part), desc="blocks", progress=False)
            for b in batches(part.shape[0], runner.batch_size):
                logits = runner.logits(hidden[b]).cpu()
                total += float(window_nll(lambda _, logits=logits: logits, part[b]))
    count = len(wins) * (seq_len - 1)
    mean = total / count
    return PerplexityResult(
        perplexity=math.exp(mean), mean_nll=mean, windows=len(wins), predicted_tokens=count, seq_len=seq_len,
        corpus_tokens=int(ids.numel()), data=corpus.name if corpus else "", data_source=corpus.source if corpus else "",
    )


def model_perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, max_windows: int | None = None,
                     batch_size: int = 1, corpus: Corpus | None = None, progress: bool = True,
                     blocks=None) -> PerplexityResult:
    """Perplexity of a PyTorch model: held whole (``blocks`` None) or streamed through its block store."""
    if blocks is None:
        return perplexity(torch_logits_fn(model), ids, seq_len, max_windows, batch_size, corpus, progress)
    from ..prune.stream import BlockRunner

    return streamed_perplexity(BlockRunner(model, batch_size, blocks), ids, seq_len, max_windows, corpus,
                               progress=progress)


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    device = next(model.parameters()).device

    def fn(batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch.to(device), use_cache=False).logits.cpu()

    return fn


def runtime_nll_fn(runtime) -> NllFn:
    """Summed NLL of windows scored inside a runtime's child process (``runtime.token_nll(tokens) -> [T-1]``): only
    T − 1 numbers per window cross the pipe, not T × V logits (WikiText-2 test with a 49K vocabulary: 59 GB)."""
    def fn(batch: torch.Tensor) -> torch.Tensor:
        nll = torch.from_numpy(np.concatenate([runtime.token_nll(row.tolist()) for row in batch]))
        check_finite(nll, "the token log-likelihoods of an evaluation window",
                     "a value overflowed in the runtime: check the artifact's weights")
        return nll.sum()

    return fn


def runtime_logits_fn(runtime) -> LogitsFn:
    """Windows through a runtime that scores one sequence at a time (``runtime.logits(tokens) -> [T, V]``)."""
    def fn(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([runtime.logits(row.tolist()) for row in batch]))

    return fn
