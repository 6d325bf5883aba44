"""Non-finite values (NaN / ±Inf) stopped where they enter, with one line naming the tensor and its dtype.

A NaN in one weight, an overflow of fp16/bf16 activations or a Gram matrix that went to Inf otherwise surfaces
far away (a failed Cholesky, a perplexity of nan); these checks name the place and what to try.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import PutriError

HALF_PRECISION = (torch.float16, torch.bfloat16)


def count_nonfinite(tensor: torch.Tensor) -> int:
    return int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0


def check_finite(tensor: torch.Tensor, what: str, hint: str) -> None:
    """Raise naming ``what`` when ``tensor`` holds NaN or Inf (half precision: say that it is the usual cause)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = count_nonfinite(tensor)
        kinds = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
        if kinds == "NaN" and bool(torch.isinf(tensor).any()):
            kinds = "NaN and Inf"
        if tensor.dtype in HALF_PRECISION:
            hint = f"{tensor.dtype} overflow is the usual cause: run in float32; else {hint}"
        raise PutriError(f"{what} ({tensor.dtype}, shape {list(tensor.shape)}) holds {bad} non-finite values "
                         f"({kinds}); {hint}")


def check_weights(model: nn.Module, source: str, stored_dtype: Callable[[str], str | None] | None = None) -> None:
    """Every parameter and buffer of a freshly loaded model is finite (the first bad tensor is named, with the dtype
    the file stores it in when ``stored_dtype`` can tell: a bf16 checkpoint is loaded as float32)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if count_nonfinite(tensor.detach()):
            stored = stored_dtype(name) if stored_dtype else None
            check_finite(tensor.detach(), f"{source}: weight {name}" + (f", stored as {stored}" if stored else ""),
                         "the checkpoint is damaged (or overflowed when it was saved in half precision); re-export "
                         "or re-download it")
