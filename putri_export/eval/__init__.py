"""Quality: perplexity on the same windows for PyTorch models and runtime artifacts."""

from .perplexity import LogitsFn, PerplexityResult, perplexity, runtime_logits_fn, torch_logits_fn

__all__ = ["LogitsFn", "PerplexityResult", "perplexity", "runtime_logits_fn", "torch_logits_fn"]
