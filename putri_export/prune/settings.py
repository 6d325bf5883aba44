"""The settings of a pruning run (the CLI's ``prune`` flags are these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PutriError
from ..options import option

METHOD_NAMES = ("putri", "2ssp", "shortgpt", "flap")
ATTN_SCORINGS = ("auto", "loss", "local")
# auto scores attention locally on CPU from this many block parameters up (loss-based trials cost
# rounds x candidates x remaining depth forward passes).
LOCAL_SCORING_FROM_PARAMS = 500_000_000


def check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0):
        raise PutriError(f"sparsity must be in [0, 1) (a fraction of the block parameters), got {sparsity}")


@dataclass
class PruneSettings:
    """Every setting of ``putri-export prune`` (the CLI's flags are these fields)."""

    method: str = option("putri", "pruning method", choices=METHOD_NAMES)
    sparsity: float = option(0.5, "fraction of block parameters to remove, [0, 1)")
    alpha: float = option(1.5, "attention/FFN budget split (2SSP/Putri): n_attn = round(L * s^((P_ffn/P_attn)/alpha))")
    damping: float = option(1e-2, "relative Hessian damping for OBS scores")
    update: bool = option(True, "least-squares update of the kept down_proj columns (Putri)")
    update_damping: float = option(0.0, "relative ridge in the least-squares updates")
    # Default on: measured better on held-out text (results/pruning/refit_study_0.50.json).
    o_refit: bool = option(True, "least-squares refit of the kept o_proj columns after head removal (Putri)")
    attn_scoring: str = option(
        "auto", "how KV-head groups are chosen (Putri): loss = greedy rounds scored by calibration loss (the paper's); "
        "local = each group's o_proj output error after the least-squares refit, relative to the stream, allocated "
        "globally (cost independent of depth); auto = local when streaming or on CPU from "
        f"{LOCAL_SCORING_FROM_PARAMS / 1e9:g}B block parameters, else loss", choices=ATTN_SCORINGS)
    attn_samples: int = option(2, "calibration samples scoring attention removals")
    attn_len: int = option(256, "their first tokens")
    batch_size: int = option(8, "calibration samples per forward")
    align: int = option(1, "kept FFN widths rounded to multiples of N (Putri, 2SSP), the target still met: 32 lets "
                        "Q8_0/Q4_x quantize every ffn_down row, 256 the K-quants")

    def check(self) -> None:
        if self.method not in METHOD_NAMES:
            raise PutriError(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        check_sparsity(self.sparsity)
        if self.attn_samples < 1 or self.attn_len < 2 or self.batch_size < 1:
            raise PutriError("attn-samples and batch-size must be >= 1 and attn-len >= 2")
        if self.damping < 0 or self.update_damping < 0:
            raise PutriError("damping must be >= 0")
        if self.align < 1:
            raise PutriError(f"align must be >= 1, got {self.align}")
        if self.align > 1 and self.method not in ("putri", "2ssp"):
            raise PutriError(f"--align applies to the putri and 2ssp budgets; {self.method} chooses its own widths")
        if self.attn_scoring not in ATTN_SCORINGS:
            raise PutriError(f"unknown attn-scoring {self.attn_scoring!r}; choose one of {', '.join(ATTN_SCORINGS)}")

    def scoring(self, device_type: str, block_params: int, streamed: bool) -> str:
        """The attention scoring ``auto`` stands for on this run."""
        if self.attn_scoring != "auto":
            return self.attn_scoring
        return "local" if streamed or (device_type == "cpu" and block_params >= LOCAL_SCORING_FROM_PARAMS) else "loss"
