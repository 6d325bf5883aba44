"""Perplexity with the standard protocol: join documents, tokenize once, non-overlapping windows."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .data import Corpus
from .errors import PutriError


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


def tokenize_corpus(tokenizer: PreTrainedTokenizerBase, corpus: Corpus) -> torch.Tensor:
    """Token ids of the whole corpus, without special tokens (so every runtime sees the same ids)."""
    ids = tokenizer(corpus.text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n, seq_len] from the start of the token stream."""
    if seq_len < 2:
        raise PutriError(f"--seq-len must be at least 2, got {seq_len}")
    n = ids.numel() // seq_len
    if max_windows is not None:
        if max_windows < 1:
            raise PutriError(f"--max-windows must be at least 1, got {max_windows}")
        n = min(n, max_windows)
    if n == 0:
        raise PutriError(f"the corpus has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def window_nll(logits_fn: LogitsFn, batch: torch.Tensor) -> torch.Tensor:
    """Summed NLL (float64) of tokens 1..T−1 of each window, given logits for the whole window."""
    logits = logits_fn(batch).float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logprobs.gather(-1, batch[:, 1:, None]).squeeze(-1)
    return nll.double().sum()


def perplexity(
    logits_fn: LogitsFn,
    ids: torch.Tensor,
    seq_len: int,
    max_windows: int | None = None,
    batch_size: int = 1,
    corpus: Corpus | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Mean NLL over all predicted tokens of ``ids`` cut into windows; ``logits_fn`` maps [B, T] → [B, T, V]."""
    wins = windows(ids, seq_len, max_windows)
    total = 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, len(wins), batch_size), desc="perplexity", unit="batch", disable=not progress):
            total += float(window_nll(logits_fn, wins[start : start + batch_size]))
    count = len(wins) * (seq_len - 1)
    mean = total / count
    return PerplexityResult(
        perplexity=math.exp(mean), mean_nll=mean, windows=len(wins), predicted_tokens=count, seq_len=seq_len,
        corpus_tokens=int(ids.numel()), data=corpus.name if corpus else "", data_source=corpus.source if corpus else "",
    )


def torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    def fn(batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, use_cache=False).logits

    return fn
