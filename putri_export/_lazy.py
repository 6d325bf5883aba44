"""Lazy package exports: a subpackage names its entry points at the top, but the ones that import torch and
transformers load on first use, so the CLI's parser and torch-free (benchmark-only) installs stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` importing each of ``names`` (attribute → relative submodule) when first asked."""
    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
