"""Scoring units of the baselines: 2SSP, ShortGPT and FLAP (plain tensors in and out).

- 2SSP: FFN neurons by the L2 norm of their activation over calibration tokens (no update);
  whole attention layers then go greedily by calibration perplexity (``putri.greedy_removal``).
- ShortGPT: whole blocks with the lowest block influence, 1 - cos(input, output).
- FLAP: fluctuation = variance of each input channel of o_proj / down_proj x squared weight
  column norm, standardised per layer and module, ranked globally; the removed channels' mean
  contribution becomes a bias on o_proj / down_proj.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ChannelStats:
    """Per-input-channel sum, sum of squares and count, fed by a hook (fp64)."""

    def __init__(self, width: int):
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.sum_sq = torch.zeros(width, dtype=torch.float64)
        self.tokens = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        if self.sum.device != x.device:  # kept where the layer runs (a GPU)
            self.sum, self.sum_sq = self.sum.to(x.device), self.sum_sq.to(x.device)
        self.sum += x.sum(0)
        self.sum_sq += x.pow(2).sum(0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)

    @property
    def mean_square(self) -> torch.Tensor:
        """E[x²] per channel (llama.cpp's importance matrix entry)."""
        return self.sum_sq / max(self.tokens, 1)

    @property
    def variance(self) -> torch.Tensor:
        # Population variance, as FLAP's running fluctuation estimate.
        return (self.sum_sq / max(self.tokens, 1) - self.mean.pow(2)).clamp_min(0)

    @property
    def l2_norm(self) -> torch.Tensor:
        return self.sum_sq.sqrt()


class BlockInfluence:
    """ShortGPT's block influence: 1 - mean cosine similarity of a block's input and output rows."""

    def __init__(self):
        self.total = 0.0
        self.tokens = 0

    def add_batch(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        a = x_in.reshape(-1, x_in.shape[-1]).double()
        b = x_out.reshape(-1, x_out.shape[-1]).double()
        self.total += torch.nn.functional.cosine_similarity(a, b, dim=-1).sum().item()
        self.tokens += a.shape[0]

    @property
    def value(self) -> float:
        return 1.0 - self.total / max(self.tokens, 1)


def fluctuation_scores(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's metric per input channel j: Var(x_j) * ||W[:, j]||^2."""
    return variance * weight.double().pow(2).sum(dim=0)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std within one layer's module; a single unit or constant scores map to 0."""
    if scores.numel() < 2:
        return torch.zeros_like(scores)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else torch.zeros_like(scores)


@dataclass(frozen=True)
class Unit:
    kind: str  # "attn" (one KV-head group) or "ffn" (one neuron)
    layer: int
    index: int
    cost: int  # parameters removed with it


def global_selection(units: list[Unit], scores: torch.Tensor, target: int) -> list[Unit]:
    """Remove the lowest-scored units, in order, until the removed parameters are closest to ``target``."""
    order = torch.argsort(scores, stable=True).tolist()
    removed, best_k, best_gap = 0, 0, abs(target)
    for k, i in enumerate(order, start=1):
        removed += units[i].cost
        gap = abs(target - removed)
        if gap < best_gap:
            best_k, best_gap = k, gap
        if removed > target:
            break
    return [units[i] for i in order[:best_k]]


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The removed channels' mean contribution to the output: ``W[:, removed] @ E[x_removed]``."""
    if removed.numel() == 0:
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return (weight.double()[:, removed] @ mean.to(weight.device)[removed]).to(weight.dtype)
