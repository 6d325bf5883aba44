"""The settings of a search (the CLI's ``search`` flags are these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import PutriError
from ..options import option
from ..prune.settings import ReconstructionSettings, check_sparsity

START_NAMES = ("auto", "greedy", "uniform")


@dataclass
class SearchSettings(ReconstructionSettings):
    """Every setting of ``putri-export search`` (the CLI's flags are these fields; block reconstruction's, applied
    after the final pruning, are inherited)."""

    sparsity: float = option(0.5, "fraction of block parameters to remove, [0, 1)")
    alpha: float = option(1.5, "attention/FFN budget split of the uniform start (with --no-trade the search keeps "
                          "it)")
    start: str = option("auto", "where the search starts: 'greedy' (Putri's greedy head allocation: the paper "
                        "preset is run on a copy first, one `prune --method putri` more), 'uniform' (the alpha split "
                        "spread evenly), 'auto' (greedy for a model held in memory, uniform for a streamed one) or "
                        "the widths of a pruned checkpoint (its folder, pruning_report.json or widths.json). "
                        "SmolLM2-135M 0.5 from greedy: 0.79x/0.86x the paper preset's perplexities (results/search)")
    trade: bool = option(True, "let half the offspring move parameters between attention and FFN (never above "
                         "the budget); off: each kind keeps its total")
    iterations: int = option(3, "coarse-to-fine iterations (the step halves each time)")
    step: float = option(0.125, "first level spacing, fraction of a sub-layer")
    levels: int = option(9, "levels per sub-layer (centre ± levels // 2 steps)")
    generations: int = option(20, "generations per iteration")
    offspring: int = option(16, "offspring per generation")
    stage_samples: tuple[int, ...] = option((2, 4), "calibration windows scoring each selection stage (spread over "
                                            "the set: 2 windows already see both halves, e.g. both default corpora)")
    stage_keep: tuple[int, ...] = option((4, 1), "survivors of each selection stage (ends with 1)")
    max_shifts: int = option(4, "level shifts per mutation (uniform in 1..max-shifts)")
    top_k: int = option(256, "dense next-token probabilities kept for the KL")
    propagation: str = option("expectation", "what feeds the next block while building the supernet",
                              choices=("expectation", "centre"))
    damping: float = option(1e-2, "relative Hessian damping for OBS scores")
    batch_size: int = option(8, "calibration samples per forward")
    seed: int = option(0, "random seed of the mutations")
    align: int = option(1, "kept FFN widths in multiples of N (levels, moves and the budget repair), the target "
                        "still met")

    def check(self, calib_samples: int) -> None:
        check_sparsity(self.sparsity)
        if self.iterations < 1 or self.generations < 0 or self.offspring < 1 or self.max_shifts < 1:
            raise PutriError("iterations, offspring and max-shifts must be >= 1, generations >= 0")
        if not 0 < self.step <= 1 or self.levels < 2:
            raise PutriError(f"step must be in (0, 1] and levels >= 2, got {self.step} and {self.levels}")
        if len(self.stage_samples) != len(self.stage_keep) or not self.stage_samples:
            raise PutriError("stage-samples and stage-keep need one entry per selection stage")
        if self.stage_keep[-1] != 1 or any(k < 1 for k in self.stage_keep):
            raise PutriError(f"stage-keep must be >= 1 and end with 1, got {list(self.stage_keep)}")
        if max(self.stage_samples) > calib_samples or min(self.stage_samples) < 1:
            raise PutriError(f"stage-samples {list(self.stage_samples)} must lie in 1..{calib_samples} "
                             "(the calibration windows)")
        if self.propagation not in ("expectation", "centre"):
            raise PutriError(f"propagation must be expectation or centre, got {self.propagation!r}")
        if self.align < 1:
            raise PutriError(f"align must be >= 1, got {self.align}")
        if self.top_k < 1:
            raise PutriError("top-k must be >= 1")
        if self.start not in START_NAMES and not Path(self.start).exists():
            raise PutriError(f"--start {self.start!r}: no such file or folder (accepted: {', '.join(START_NAMES)}, a "
                             "pruned checkpoint folder, or its widths.json / pruning_report.json)")
        self.check_reconstruction()
