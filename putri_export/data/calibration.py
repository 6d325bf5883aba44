"""Calibration sets: the first windows of one or more corpora, with where they came from."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from ..errors import PutriError
from .corpus import load_corpus, parse_weighted_specs
from .tokens import tokenize_corpus


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

    def spread(self, count: int) -> list[int]:
        """``count`` window indices spread evenly over the set (its corpora are concatenated in order, so the first
        windows are all from the first corpus), ordered so that every prefix is spread too: the first two are from
        both halves, the first four from all quarters (van der Corput order)."""
        n = self.ids.shape[0]
        count = min(count, n)

        def radical_inverse(i: int) -> float:
            x, base = 0.0, 0.5
            while i:
                x, i, base = x + base * (i & 1), i >> 1, base / 2
            return x

        return [round(i * n / count) for i in sorted(range(count), key=radical_inverse)]

    def provenance(self) -> dict:
        n, t = self.ids.shape
        return {"samples": n, "seq_len": t, "tokens": n * t, "sources": [asdict(s) for s in self.sources]}


def window_shares(samples: int, weights: list[int]) -> list[int]:
    """``samples`` split in proportion to ``weights`` (largest remainder; ties to the earlier spec), summing to
    ``samples``."""
    total = sum(weights)
    exact = [samples * w / total for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: samples - sum(shares)]:
        shares[i] += 1
    return shares


def load_calibration(tokenizer, specs: str | list[str], samples: int, seq_len: int) -> Calibration:
    """The first ``samples`` non-overlapping ``seq_len``-token windows, split across corpora — evenly, or in
    proportion to ``SPEC*N`` shares.

    ``specs`` is one data spec or a comma-separated list (e.g. ``wikitext2:valid,tinystories:train`` or
    ``tinystories:train-2mib*2,wikitext2:valid-raw``). Windows are taken in order from the start of each corpus
    (no shuffling, as the reference), so the tail of a calibration corpus stays unseen.
    """
    weighted = parse_weighted_specs(specs)
    if not weighted:
        raise PutriError("no calibration data given (--calib)")
    if samples < 1 or seq_len < 2:
        raise PutriError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples} x {seq_len}")
    shares = window_shares(samples, [w for _, w in weighted])
    chunks, sources = [], []
    for (name, _), share in zip(weighted, shares):
        if share == 0:
            continue
        corpus = load_corpus(name)
        ids = tokenize_corpus(tokenizer, corpus)
        have = ids.numel() // seq_len
        if have < share:
            raise PutriError(
                f"calibration corpus {name!r} ({corpus.source}) has {ids.numel()} tokens: {have} windows of "
                f"{seq_len}, but {share} are needed (its share of {samples} samples); "
                f"lower --calib-samples or --calib-len, or give more text")
        chunks.append(ids[: share * seq_len].view(share, seq_len))
        sources.append(CalibrationSource(name, corpus.source, hashlib.sha256(corpus.text.encode()).hexdigest(),
                                         ids.numel(), share))
    return Calibration(torch.cat(chunks), sources)
