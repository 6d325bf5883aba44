"""Quality: perplexity on the same windows for PyTorch models and runtime artifacts."""

from .artifact import artifact_runtime, artifact_widths, evaluate_artifact
from .perplexity import (
    LogitsFn,
    NllFn,
    PerplexityResult,
    logits_nll_fn,
    nll_perplexity,
    perplexity,
    runtime_logits_fn,
    runtime_nll_fn,
    torch_logits_fn,
)

__all__ = ["LogitsFn", "NllFn", "PerplexityResult", "artifact_runtime", "artifact_widths", "evaluate_artifact",
           "logits_nll_fn", "nll_perplexity", "perplexity", "runtime_logits_fn", "runtime_nll_fn", "torch_logits_fn"]
