"""The whole job in one command: prune → checkpoint → verified artifacts → quality → benchmark → report.

Entry point: :func:`run_pipeline` with a :class:`Recipe`."""

from .._lazy import lazy_exports
from .recipe import Recipe

__getattr__ = lazy_exports(__name__, {"run_pipeline": ".pipeline", "staging_folder": ".pipeline"})
__all__ = ["Recipe", "run_pipeline", "staging_folder"]
