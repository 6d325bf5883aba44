"""Quality: perplexity on the same windows for PyTorch models and runtime artifacts."""

from .artifact import artifact_runtime, artifact_widths, evaluate_artifact
from .perplexity import LogitsFn, PerplexityResult, perplexity, runtime_logits_fn, torch_logits_fn

__all__ = ["LogitsFn", "PerplexityResult", "artifact_runtime", "artifact_widths", "evaluate_artifact", "perplexity",
           "runtime_logits_fn", "torch_logits_fn"]
