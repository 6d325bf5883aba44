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


def _working_copy(hessian: torch.Tensor, flip: bool = False, rows: int = 1024) -> torch.Tensor:
    """An fp64 copy of the symmetric H (of ``P H P`` with ``flip``) in column-major order, filled ``rows`` rows at
    a time: LAPACK factors a column-major matrix in place, so no second full-size temporary ever exists (a row-major
    one is copied first: 512 MB more for an 8192-wide FFN). H may be stored in fp32."""
    n = hessian.shape[0]
    buffer = torch.empty(n, n, dtype=torch.float64, device=hessian.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        if flip:
            buffer[n - r1:n - r0] = hessian[r0:r1].flip(0, 1)
        else:
            buffer[r0:r1] = hessian[r0:r1]
    return buffer.mT  # H is symmetric: the transpose of the rows written is the matrix itself


def _cholesky_with_retry(hessian: torch.Tensor, damping: float, flip: bool = False) -> tuple[torch.Tensor, float]:
    """Cholesky factor of the damped H (of ``P H P``, P the reversal, with ``flip``), raising the damping tenfold
    until it factors. The factor is computed in place in the one working copy of H."""
    lam = damping
    mean_diag = torch.diagonal(hessian).double().mean()
    for _ in range(12):
        a = _working_copy(hessian, flip)
        if lam > 0 and mean_diag > 0:
            a.diagonal().add_(lam * mean_diag)
        info = torch.empty((), dtype=torch.int32, device=a.device)
        torch.linalg.cholesky_ex(a, out=(a, info))  # in place: the copy becomes the factor
        if int(info) == 0:
            return a, lam
        del a
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

    Only diag(U) is needed, and it takes one Cholesky factor and no inverse: with P the reversal permutation and
    ``P H P = M M^T``, ``U = P M^-1 P`` is upper triangular with ``U^T U = H^-1``, so ``U[j, j] = 1 / M[n-1-j, n-1-j]``
    (one n x n fp64 workspace instead of three: what bounds the memory of an 8192-wide FFN).
    """
    w = weight.double()
    energy = output_energy(w, hessian) / max(tokens, 1)
    factor, lam = _cholesky_with_retry(hessian, damping, flip=True)
    u_diag = 1.0 / torch.diagonal(factor).flip(0)
    del factor
    return (energy @ w.pow(2)) / u_diag.pow(2), lam


def output_energy(weight: torch.Tensor, hessian: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """``(W H W^T)[r, r]`` for every output r (fp64), ``rows`` rows of W at a time, in H's storage dtype."""
    out = torch.empty(weight.shape[0], dtype=torch.float64, device=weight.device)
    for r0 in range(0, weight.shape[0], rows):
        w = weight[r0:r0 + rows].to(hessian.dtype)
        out[r0:r0 + rows] = ((w @ hessian) * w).sum(dim=1, dtype=torch.float64)
    return out


def least_squares_columns(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor,
                          damping: float = 0.0) -> torch.Tensor:
    """New weights for the kept input channels that best reproduce the dense output.

    Minimises ``sum ||W z - W' z_K||^2`` over the calibration tokens:
    ``W'^T = H[K, K]^-1 H[K, :] W^T``. Exact when the removed channels are linear combinations of
    kept ones. Falls back to a least-squares solve when H[K, K] is singular.
    """
    keep = keep.to(hessian.device)
    rows = hessian.index_select(0, keep).double()  # H[K, :] (H may be stored in fp32; the solve is fp64)
    rhs = rows @ weight.double().T
    h_kk = rows.index_select(1, keep)
    del rows
    return _solve_kept(h_kk, rhs, damping).T.to(weight.dtype).contiguous()


def _solve_kept(h_kk: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """``H[K, K]^-1 rhs`` (fp64): Cholesky in one working copy, a least-squares solve when H[K, K] is singular."""
    h_kk = damped(h_kk, damping) if damping > 0 else h_kk
    factor = _working_copy(h_kk)
    info = torch.empty((), dtype=torch.int32, device=h_kk.device)
    torch.linalg.cholesky_ex(factor, out=(factor, info))
    if int(info) == 0:
        del h_kk
        return torch.cholesky_solve(rhs, factor)
    del factor
    return torch.linalg.lstsq(h_kk, rhs, driver="gelsd" if h_kk.device.type == "cpu" else None).solution


def least_squares_to_target(hessian: torch.Tensor, cross: torch.Tensor, keep: torch.Tensor,
                            damping: float = 0.0) -> torch.Tensor:
    """New weights for the kept input channels K that best reproduce a *given* target output ``t`` (not the
    layer's own output): minimises ``sum ||t - W' z_K||^2``, ``W'^T = H[K, K]^-1 C[K, :]`` with ``C = sum z^T t``.
    Fitting the dense model's output from the pruned stream lets a layer absorb the error of the blocks before it."""
    keep = keep.to(hessian.device)
    h_kk = hessian.index_select(0, keep).index_select(1, keep).double()
    return _solve_kept(h_kk, cross.index_select(0, keep).double(), damping).T.contiguous()


def iterative_obs_selection(weight: torch.Tensor, hessian: torch.Tensor, tokens: int, keep_count: int,
                            rounds: int = 16, damping: float = 1e-2) -> torch.Tensor:
    """The ``keep_count`` input channels to keep, removed in ``rounds`` equal steps (Týr's local pruner): each step
    re-scores the remaining channels by OBS with the weights least-squares-updated for the channels already gone,
    so a channel whose work was taken over by another is judged after the update, not before."""
    n = weight.shape[1]
    keep = torch.arange(n, device=hessian.device)
    w = weight.double()
    to_remove = n - keep_count
    for r in range(rounds):
        step = to_remove * (r + 1) // rounds - to_remove * r // rounds
        if step <= 0:
            continue
        h = hessian.index_select(0, keep).index_select(1, keep)
        current = least_squares_columns(w, hessian, keep) if keep.numel() < n else w
        scores, _ = obs_scores(current, h, tokens, damping)
        kept = torch.sort(torch.topk(scores, keep.numel() - step).indices).values
        keep = keep[kept]
    return keep


def gram_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype a Gram matrix is stored and accumulated in: fp64 for fp32 models; fp32 for half-precision ones,
    whose inputs carry 8-11 bits (an 8192-wide FFN's H is then 256 MB instead of 512). Factorizations and solves
    are fp64 either way."""
    return torch.float64 if weight_dtype == torch.float32 else torch.float32


def gram(z: torch.Tensor, out: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """``z^T z`` of rows ``z`` [N, d], accumulated in ``out``'s dtype (a new fp64 matrix when not given), in row
    chunks so the converted copy never exceeds ``chunk`` rows."""
    h = out if out is not None else torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
    for start in range(0, z.shape[0], chunk):
        part = z[start:start + chunk].to(h.dtype)
        h.addmm_(part.T, part)
    return h


class GramStats:
    """``H = sum z^T z`` of a linear layer's input rows and their count, in :func:`gram_dtype` of the weights."""

    def __init__(self, width: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        self.hessian = torch.zeros(width, width, dtype=dtype, device=device)
        self.tokens = 0

    def add_batch(self, z: torch.Tensor) -> None:
        z = z.reshape(-1, z.shape[-1])
        if self.hessian.device != z.device:  # kept where the layer runs
            self.hessian = self.hessian.to(z.device)
        gram(z, out=self.hessian)
        self.tokens += z.shape[0]


class LinearPruner(GramStats):
    """One accumulator per linear layer (SparseGPT's shape): ``add_batch`` is fed the layer's input rows by a
    hook and accumulates ``H = sum z^T z`` (fp64); ``prune`` keeps the best input channels by OBS x output
    energy and returns their least-squares-updated columns; ``free`` drops H.
    """

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach()
        # On the weight's device: a block pruned on a GPU accumulates its statistics there.
        super().__init__(self.weight.shape[1], gram_dtype(self.weight.dtype), self.weight.device)
        self.cross: torch.Tensor | None = None  # sum z^T t when fitted to a target output t

    def add_batch(self, z: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Input rows ``z``; ``target``: the output rows the layer should produce from them (dense-target fit)."""
        z = z.reshape(-1, z.shape[-1])
        super().add_batch(z)
        if target is not None:
            t = target.reshape(-1, target.shape[-1]).double()
            if self.cross is None:
                self.cross = torch.zeros(z.shape[1], t.shape[1], dtype=torch.float64, device=z.device)
            self.cross.addmm_(z.double().T, t)

    def prune(self, keep_count: int, damping: float = 1e-2, update: bool = True, update_damping: float = 0.0,
              rounds: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Kept channel indices (sorted), their new columns, and what was done. ``rounds`` > 1: iterative OBS."""
        self.check()
        used = damping
        if not keep_count:
            keep = torch.zeros(0, dtype=torch.long)
        elif rounds > 1:
            keep = iterative_obs_selection(self.weight, self.hessian, self.tokens, keep_count, rounds, damping)
        else:
            scores, used = obs_scores(self.weight, self.hessian, self.tokens, damping)
            keep = torch.sort(torch.topk(scores, keep_count).indices).values
        columns = self.refit(keep, update_damping) if update and keep_count else self.weight[:, keep].clone()
        return keep, columns, {"damping": used, "tokens": self.tokens}

    def refit(self, keep: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """Least-squares columns for the given kept channels (e.g. the channels of the kept head groups): to the
        target outputs when they were given, else to the layer's own outputs."""
        self.check()
        if self.cross is not None:
            return least_squares_to_target(self.hessian, self.cross, keep, damping).to(self.weight.dtype)
        return least_squares_columns(self.weight, self.hessian, keep, damping)

    def check(self) -> None:
        """The statistics are finite before any solve (an Inf/NaN input row poisons the whole Gram matrix)."""
        check_finite(self.weight, "the layer's weight", "the checkpoint is damaged")
        check_finite(self.hessian, f"the input Gram matrix over {self.tokens} calibration tokens",
                     "an input row overflowed: check the weights of the blocks before this layer")

    def free(self) -> None:
        self.hessian = self.cross = None


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


def group_removal_curve(weight: torch.Tensor, hessian: torch.Tensor, groups: Sequence[torch.Tensor],
                        damping: float = 1e-6) -> tuple[list[int], list[float]]:
    """Order in which to drop input-channel groups of ``y = W z`` (e.g. KV-head groups at o_proj), and the output
    error left after each drop.

    Greedy and nested: each step drops the remaining group whose removal leaves the smallest output error after
    the least-squares refit of the others (``refit_error``). Keeping the first ``k`` groups of the reversed order
    is the local choice for any ``k``; ``errors[k]`` is the error with the first ``k`` groups of the order gone
    (``errors[0] = 0``). One factorization per step: with ``S = H[K, K]^-1`` and the refit ``G = S H[K, :] W^T``,
    dropping group g from K adds ``tr(G_g^T S_gg^-1 G_g)`` to the error (the group form of OBS).
    """
    w = weight.double()
    h = hessian.double()
    total = float(output_energy(w, h).sum())
    remaining = list(range(len(groups)))
    order, errors = [], [0.0]
    while remaining:
        keep = torch.cat([groups[i] for i in remaining])
        m = h[keep] @ w.T
        factor, _ = _cholesky_with_retry(h[keep][:, keep], damping)
        inverse = torch.cholesky_inverse(factor)
        refit = inverse @ m
        error = total - float((m * refit).sum())
        starts = torch.cumsum(torch.tensor([0] + [len(groups[i]) for i in remaining]), 0).tolist()
        trials = {}
        for pos, g in enumerate(remaining):
            idx = slice(starts[pos], starts[pos + 1])
            g_rows = refit[idx]
            trials[g] = error + float((g_rows * torch.linalg.solve(inverse[idx, idx], g_rows)).sum())
        best = min(remaining, key=lambda g: (trials[g], g))
        order.append(best)
        errors.append(max(trials[best], 0.0))
        remaining.remove(best)
    return order, errors


def group_removal_order(weight: torch.Tensor, hessian: torch.Tensor, groups: Sequence[torch.Tensor],
                        damping: float = 1e-6) -> list[int]:
    """The order of :func:`group_removal_curve`."""
    return group_removal_curve(weight, hessian, groups, damping)[0]


def allocate_removals(curves: dict[int, list[float]], count: int) -> dict[int, int]:
    """How many groups each layer drops so that ``count`` groups go in all: greedy by the smallest next increase of
    each layer's (normalized) error curve, ties to the earlier layer. ``curves[l][k]``: error with k groups gone."""
    taken = dict.fromkeys(curves, 0)
    for _ in range(count):
        open_layers = [l for l in curves if taken[l] + 1 < len(curves[l])]
        if not open_layers:
            break
        l = min(open_layers, key=lambda l: (curves[l][taken[l] + 1] - curves[l][taken[l]], l))
        taken[l] += 1
    return taken
