"""GPTQ onto the grid ONNX Runtime's 4-bit ``MatMulNBits`` kernel reads: symmetric blocks of 32 weights along the
input dimension, one fp32 scale per block, codes 0…15 around the implicit zero point 8 (no zero points stored, so
the kernel keeps its fast int8 path).

Round-to-nearest on that grid cost SmolLM2-135M +26% perplexity. GPTQ (Frantar et al., 2022) rounds the input
columns in turn and moves each column's rounding error onto the columns not yet rounded, weighted by the inverse
Gram matrix ``H = Σ x xᵀ`` of the layer's calibration inputs, so the layer's *output* error is what is minimised.
The math is :func:`gptq_quantize` (pure tensors); :func:`gptq_weights` streams calibration text through the model
and quantizes each block's linears while the block is open; :func:`pack_matmul_nbits` writes the kernel's layout.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ...model.blocks import BlockStore
from ...prune.obs import GramStats, gram_dtype
from ..linear_inputs import SHARED_INPUTS, observe_linear_inputs, sublayer

BITS = 4
LEVELS = 1 << BITS  # codes 0…15; weight = (code - zero point) · scale
MID = LEVELS // 2  # the zero point of the symmetric grid, implied when the node stores none
# Each block's range is shrunk by the factor of this grid that minimises its diag(H)-weighted rounding error.
SHRINKS = torch.linspace(1.0, 0.7, 16)


def _grid(w: torch.Tensor, shrink: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and (integer) zero points [rows, S] of blocks ``w`` [rows, block] for each shrink factor."""
    if symmetric:  # the largest-magnitude weight maps to code 0 (= -8): onnxruntime's rule, all 16 codes used
        extreme = w.gather(1, w.abs().argmax(dim=1, keepdim=True))
        scale = extreme * shrink[None] / -MID
        zero = torch.full_like(scale, MID)
    else:  # min/max including 0, an integer zero point
        low, high = w.min(dim=1, keepdim=True).values.clamp_max(0), w.max(dim=1, keepdim=True).values.clamp_min(0)
        scale = (high - low) * shrink[None] / (LEVELS - 1)
        zero = (-low * shrink[None] / torch.where(scale == 0, 1, scale)).round().clamp(0, LEVELS - 1)
    return torch.where(scale == 0, torch.ones_like(scale), scale), zero


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (w / scale + zero).round().clamp(0, LEVELS - 1)


def block_grid(w: torch.Tensor, importance: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale and zero point per row of ``w`` [rows, block]: of the shrunk grids, the one minimising
    ``Σ importance · (w - dequantized)²``."""
    scale, zero = _grid(w, SHRINKS.to(w), symmetric)  # [rows, S]
    deq = (_round(w[:, None], scale[..., None], zero[..., None]) - zero[..., None]) * scale[..., None]
    best = ((deq - w[:, None]).pow(2) * importance.to(w)).sum(-1).argmin(dim=1, keepdim=True)
    return scale.gather(1, best).squeeze(1), zero.gather(1, best).squeeze(1)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, block: int = 32, symmetric: bool = False,
                  act_order: bool = True, damping: float = 0.01,
                  lazy: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes [out, in] (uint8, 0…15), scales and zero points [out, ceil(in / block)] of ``weight``
    [out, in] such that ``(codes - zero) * scale`` (per block of ``block`` inputs) approximates ``weight``'s
    outputs on inputs with Gram matrix ``hessian`` [in, in]. Each block's grid is chosen when GPTQ reaches the
    block, from the error-updated weights (the blocks tile the lazy batches: ``lazy`` is a multiple of ``block``).
    ``symmetric``: zero point 8 everywhere (the node then stores none). ``act_order``: the columns are rounded
    in decreasing order of their input energy ``diag(H)`` (GPTQ's "act-order"); the blocks' grids are then fixed
    first, from the original weights, since the kernel's blocks are runs of consecutive inputs."""
    assert lazy % block == 0
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diagonal(h) == 0  # an input that is always zero: any weight does; make H invertible there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    importance = torch.diagonal(h).clone()
    h.diagonal().add_(damping * importance.mean())
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    scales = torch.zeros(rows, (cols + block - 1) // block, dtype=torch.float32)
    zeros = torch.zeros_like(scales)
    order = torch.arange(cols)
    if act_order:
        for b in range(scales.shape[1]):
            part = slice(b * block, (b + 1) * block)
            scales[:, b], zeros[:, b] = block_grid(w[:, part], importance[part].float(), symmetric)
        order = torch.argsort(importance, descending=True, stable=True)
        w, h = w[:, order], h[order][:, order]
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(inverse, upper=True).to(torch.float32)  # the rows GPTQ propagates errors along

    for i1 in range(0, cols, lazy):
        i2 = min(i1 + lazy, cols)
        w1, err1, u1 = w[:, i1:i2].clone(), torch.zeros(rows, i2 - i1), u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(order[i1 + i])
            if act_order:
                scale, zero = scales[:, col // block], zeros[:, col // block]
            elif col % block == 0:
                end = min(i + block, i2 - i1)
                scale, zero = block_grid(w1[:, i:end], importance[col:col + end - i].float(), symmetric)
                scales[:, col // block], zeros[:, col // block] = scale, zero
            q = _round(w1[:, i], scale, zero)
            codes[:, col] = q.to(torch.uint8)
            e = (w1[:, i] - (q - zero) * scale) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None]
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes, scales, zeros.to(torch.uint8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, block: int = 32) -> torch.Tensor:
    """``(codes - zero) * scale`` per block: the weight the kernel multiplies by."""
    cols = codes.shape[1]
    return ((codes.float() - zeros.float().repeat_interleave(block, dim=1)[:, :cols])
            * scales.repeat_interleave(block, dim=1)[:, :cols])


def _nibbles(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis, low nibble first (an odd count padded with 0)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return np.ascontiguousarray(values[..., 0::2] | (values[..., 1::2] << 4))


def pack_matmul_nbits(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                      block: int = 32) -> tuple[np.ndarray, ...]:
    """``MatMulNBits`` inputs for ``codes`` [N, K] (0…15), ``scales`` and ``zeros`` [N, K/block]: B (uint8
    [N, K/block, block/2], low nibble first; the last block padded with its zero point), scales (fp32
    [N, K/block]) and, unless ``zeros`` is None (the symmetric grid), the zero points (uint8 [N, ⌈K/block/2⌉])."""
    rows, cols = codes.shape
    n_blocks = scales.shape[1]
    pad = (zeros if zeros is not None else torch.full_like(scales, MID, dtype=torch.uint8)).numpy()
    stored = np.repeat(pad, block, axis=1).astype(np.uint8)  # padding: the zero point, a weight of 0
    stored[:, :cols] = codes.numpy()
    packed = _nibbles(stored).reshape(rows, n_blocks, block // 2)
    out = (packed, np.ascontiguousarray(scales.numpy().astype(np.float32)))
    return out if zeros is None else out + (_nibbles(zeros.numpy().astype(np.uint8)),)


def fingerprint(weight_kn: np.ndarray) -> str:
    """The identity of a MatMul weight as the graph stores it ([in, out] fp32): how a quantized node finds the
    codes computed for its PyTorch linear (the exporter names folded weights ``val_N``)."""
    return hashlib.sha1(np.ascontiguousarray(weight_kn, dtype=np.float32).tobytes()).hexdigest()


def gptq_weights(model: nn.Module, ids: torch.Tensor, blocks: BlockStore | None = None, batch_size: int = 8,
                 symmetric: bool = False, damping: float = 0.01, block: int = 32,
                 progress: bool = True) -> dict[str, tuple]:
    """GPTQ codes for every linear of every block of ``model`` (not the output projection, which int4 keeps in 8
    bits), from calibration token windows ``ids``: ``fingerprint(Wᵀ)`` → ``(B, scales[, zero points])`` in
    MatMulNBits layout.
    Each block is quantized while it is open and its Gram matrices are dropped after."""
    out: dict[str, tuple] = {}
    bar = tqdm(total=sum(1 for _ in model.model.layers), desc="GPTQ int4", unit="block", disable=not progress)

    def quantize_block(l: int, layer: nn.Module, stats: dict[str, GramStats]) -> None:
        for key, acc in stats.items():
            for name in SHARED_INPUTS[key.removeprefix(f"model.layers.{l}.")]:
                module = sublayer(layer, name)
                if module is None:
                    continue
                weight = module.weight.detach()
                codes, scales, zeros = gptq_quantize(weight.cpu(), acc.hessian.cpu(), block, symmetric, damping)
                out[fingerprint(weight.float().cpu().numpy().T)] = pack_matmul_nbits(
                    codes, scales, None if symmetric else zeros, block)
        stats.clear()
        bar.update()

    dtype = gram_dtype(next(model.parameters()).dtype)
    observe_linear_inputs(model, ids, lambda width: GramStats(width, dtype), blocks, batch_size,
                          on_block=quantize_block, desc="GPTQ calibration", progress=False)
    bar.close()
    return out
