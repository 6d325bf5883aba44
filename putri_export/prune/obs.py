"""Putri's closed-form math: OBS scores of input channels, least-squares updates, refit errors.

Plain tensors in, tensors out; streaming and surgery live elsewhere (``stream.py``, ``model.surgery``).
Notation (see docs): a linear layer ``y = W z`` (W: d_out x n_in), calibration Gram matrix
``H = sum z^T z`` over all tokens (n_in x n_in), accumulated in fp64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PutriError
from ..finite import check_finite


def damped(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """``H + damping * mean(diag H) * I`` (a relative ridge; 0 keeps H as is)."""
    h = hessian.clone()
    mean_diag = torch.diagonal(h).mean()
    if damping > 0 and mean_diag > 0:
        h.diagonal().add_(damping * mean_diag)
    return h


def _cholesky_with_retry(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """Cholesky factor of the damped H, raising the damping tenfold until it factors."""
    lam = damping
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(damped(hessian, lam))
        if int(info) == 0:
            return factor, lam
        lam = max(lam * 10, 1e-8)
    diag = hessian.diagonal()
    raise PutriError(f"a layer's input Gram matrix ({hessian.shape[0]} channels) does not factor even with relative "
                     f"damping {lam / 10:g}: its inputs are all zero or span too wide a range (diagonal "
                     f"{float(diag.min()):.3g} … {float(diag.max()):.3g}); check the weights of the blocks before it "
                     "(e.g. a huge or damaged tensor) or the calibration text")


def obs_scores(weight: torch.Tensor, hessian: torch.Tensor, tokens: int, damping: float = 1e-2
               ) -> tuple[torch.Tensor, float]:
    """OBS saliency of each input channel, weighted by output-channel energy.

    ``U = chol_upper(H^-1)``, ``S[r, j] = W[r, j]^2 / U[j, j]^2``, ``score_j = sum_r e_r S[r, j]`` with
    ``e_r = mean(y_r^2) = (W H W^T)[r, r] / tokens``. Returns the scores and the damping used.
    """
    w = weight.double()
    h = hessian.double()
    factor, lam = _cholesky_with_retry(h, damping)
    h_inv = torch.cholesky_inverse(factor)
    upper = torch.linalg.cholesky(h_inv, upper=True)
    energy = ((w @ h) * w).sum(dim=1) / max(tokens, 1)
    saliency = w.pow(2) / torch.diagonal(upper).pow(2)
    return energy @ saliency, lam


def least_squares_columns(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor,
                          damping: float = 0.0) -> torch.Tensor:
    """New weights for the kept input channels that best reproduce the dense output.

    Minimises ``sum ||W z - W' z_K||^2`` over the calibration tokens:
    ``W'^T = H[K, K]^-1 H[K, :] W^T``. Exact when the removed channels are linear combinations of
    kept ones. Falls back to a least-squares solve when H[K, K] is singular.
    """
    w = weight.double()
    h = hessian.double()
    h_kk = damped(h[keep][:, keep], damping)
    rhs = h[keep] @ w.T
    factor, info = torch.linalg.cholesky_ex(h_kk)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:
        solution = torch.linalg.lstsq(h_kk, rhs, driver="gelsd").solution
    return solution.T.to(weight.dtype).contiguous()


def gram(z: torch.Tensor, out: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """``z^T z`` of rows ``z`` [N, d], accumulated in fp64 (added to ``out`` when given), in row chunks so
    the fp64 copy never exceeds ``chunk`` rows."""
    h = out if out is not None else torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
    for start in range(0, z.shape[0], chunk):
        part = z[start:start + chunk].double()
        h.addmm_(part.T, part)
    return h


class LinearPruner:
    """One accumulator per linear layer (SparseGPT's shape): ``add_batch`` is fed the layer's input rows by a
    hook and accumulates ``H = sum z^T z`` (fp64); ``prune`` keeps the best input channels by OBS x output
    energy and returns their least-squares-updated columns; ``free`` drops H.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach()
        width = self.weight.shape[1]
        self.hessian = torch.zeros(width, width, dtype=torch.float64)
        self.tokens = 0

    def add_batch(self, z: torch.Tensor) -> None:
        z = z.reshape(-1, z.shape[-1])
        gram(z, out=self.hessian)
        self.tokens += z.shape[0]

    def prune(self, keep_count: int, damping: float = 1e-2, update: bool = True,
              update_damping: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Kept channel indices (sorted), their new columns, and what was done."""
        self.check()
        scores, used = obs_scores(self.weight, self.hessian, self.tokens, damping)
        keep = (torch.sort(torch.topk(scores, keep_count).indices).values if keep_count
                else torch.zeros(0, dtype=torch.long))
        if update and keep_count:
            columns = least_squares_columns(self.weight, self.hessian, keep, update_damping)
        else:
            columns = self.weight[:, keep].clone()
        return keep, columns, {"damping": used, "tokens": self.tokens}

    def refit(self, keep: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """Least-squares columns for the given kept channels (e.g. the channels of the kept head groups)."""
        self.check()
        return least_squares_columns(self.weight, self.hessian, keep, damping)

    def check(self) -> None:
        """The statistics are finite before any solve (an Inf/NaN input row poisons the whole Gram matrix)."""
        check_finite(self.weight, "the layer's weight", "the checkpoint is damaged")
        check_finite(self.hessian, f"the input Gram matrix over {self.tokens} calibration tokens",
                     "an input row overflowed: check the weights of the blocks before this layer")

    def free(self) -> None:
        self.hessian = None


def refit_error(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damping: float = 1e-6) -> float:
    """Output error ``sum ||W z - W' z_K||^2`` left after the least-squares refit of the kept channels K:
    ``tr(W H W^T) - tr(M^T H[K,K]^-1 M)`` with ``M = H[K, :] W^T``."""
    w = weight.double()
    h = hessian.double()
    total = float(((w @ h) * w).sum())
    if keep.numel() == 0:
        return total
    m = h[keep] @ w.T
    factor, _ = _cholesky_with_retry(h[keep][:, keep], damping)
    return total - float((m * torch.cholesky_solve(m, factor)).sum())


def group_removal_order(weight: torch.Tensor, hessian: torch.Tensor, groups: Sequence[torch.Tensor],
                        damping: float = 1e-6) -> list[int]:
    """Order in which to drop input-channel groups of ``y = W z`` (e.g. KV-head groups at o_proj).

    Greedy and nested: each step drops the remaining group whose removal leaves the smallest
    output error after the least-squares refit of the others (``refit_error``). Keeping the
    first ``k`` groups of the reversed order is the local choice for any ``k``.
    """
    remaining = list(range(len(groups)))
    order = []
    while remaining:
        def error_without(g):
            kept = [groups[i] for i in remaining if i != g]
            keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
            return refit_error(weight, hessian, keep, damping)

        best = min(remaining, key=lambda g: (error_without(g), g))
        order.append(best)
        remaining.remove(best)
    return order
