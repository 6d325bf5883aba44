"""Týr-style global search of per-layer widths, then Putri pruning to them.

Entry point: :func:`search_and_prune` with :class:`SearchSettings`. Inside: ``space`` (configurations and
budget-keeping moves), ``supernet`` (stored Putri variants, pruning to given widths), ``fitness`` (KL to
dense), ``evolve`` (the coarse-to-fine evolutionary search), ``plots``, ``job`` (search, then prune).
"""

from .._lazy import lazy_exports
from .settings import SearchSettings

__getattr__ = lazy_exports(__name__, {"search_and_prune": ".job", "search": ".evolve", "plot_widths": ".plots",
                                      "plot_fitness": ".plots"})
__all__ = ["SearchSettings", "plot_fitness", "plot_widths", "search", "search_and_prune"]
