"""Structured pruning to a physically smaller per-layer-width model.

Entry point: :func:`prune_model` with :class:`PruneSettings` (methods: putri, 2ssp, shortgpt, flap).
Inside: ``stream`` (the block runner every method uses), ``obs`` (Putri's closed-form math), ``scores`` (the
baselines' statistics), ``budget`` (the attention/FFN split), ``stages`` (what Putri and 2SSP share),
``methods/`` (one module per method), ``job`` (settings check, resume store, report).
"""

from .._lazy import lazy_exports
from .settings import METHOD_NAMES, PruneSettings, check_sparsity

__getattr__ = lazy_exports(__name__, {"prune_model": ".job", "PruneContext": ".context"})
__all__ = ["METHOD_NAMES", "PruneContext", "PruneSettings", "check_sparsity", "prune_model"]
