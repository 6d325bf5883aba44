"""Outputs appear whole or not at all: work in a temporary sibling, rename at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; it replaces ``out`` on success and is removed on any error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield tmp
        if out.exists():
            remove(out)
        os.replace(tmp, out)
    except BaseException:
        remove(tmp)
        raise
