"""Token streams: a corpus tokenized once, and non-overlapping windows cut from it."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import PutriError
from .corpus import Corpus


def tokenize_corpus(tokenizer: PreTrainedTokenizerBase, corpus: Corpus) -> torch.Tensor:
    """Token ids of the whole corpus, without special tokens (so every runtime sees the same ids)."""
    ids = tokenizer(corpus.text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None, source: str = "the corpus"
            ) -> torch.Tensor:
    """Non-overlapping windows [n, seq_len] from the start of the token stream (``source`` names it in errors)."""
    if seq_len < 2:
        raise PutriError(f"--seq-len must be at least 2, got {seq_len}")
    n = ids.numel() // seq_len
    if max_windows is not None:
        if max_windows < 1:
            raise PutriError(f"--max-windows must be at least 1, got {max_windows}")
        n = min(n, max_windows)
    if n == 0:
        raise PutriError(f"{source} has {ids.numel()} tokens, fewer than one window of {seq_len}; give more text or "
                         "a smaller --seq-len")
    return ids[: n * seq_len].view(n, seq_len)
