"""Pruning methods behind one interface: ``prune(ctx: PruneContext) -> dict`` prunes ``ctx.model`` in place
(physically smaller layers) and returns what it did for the report. Adding a method = one module here and
one entry in :data:`METHODS`."""

from collections.abc import Callable

from ..context import PruneContext
from ..settings import METHOD_NAMES
from . import flap, putri, shortgpt, twossp

METHODS: dict[str, Callable[[PruneContext], dict]] = {
    "putri": putri.prune, "putri-dense-fit": putri.prune, "2ssp": twossp.prune, "shortgpt": shortgpt.prune,
    "flap": flap.prune}
assert tuple(METHODS) == METHOD_NAMES

__all__ = ["METHODS"]
