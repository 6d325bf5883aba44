"""Outputs appear whole or not at all: work under a hidden sibling name, rename at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def staging_path(out: Path, tag: str = "partial") -> Path:
    """A hidden sibling of ``out`` (same file system, so the final rename is atomic)."""
    out = Path(out)
    return out.with_name(f".{out.stem}.{tag}-{os.getpid()}{out.suffix}")


def commit(staged: Path, out: Path) -> None:
    """Move a finished ``staged`` file or folder to ``out``, replacing what was there."""
    if Path(out).exists():
        remove(Path(out))
    os.replace(staged, out)


@contextmanager
def staged(out: Path, make_dir: bool = False, tag: str = "partial") -> Iterator[Path]:
    """Yield a staging path beside ``out`` (an empty folder if ``make_dir``); it becomes ``out`` when the
    block finishes and is removed if the block raises."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(out, tag)
    remove(tmp)
    if make_dir:
        tmp.mkdir()
    try:
        yield tmp
        commit(tmp, out)
    except BaseException:
        remove(tmp)
        raise


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a whole file under a temporary name beside it, then rename: readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors_atomic(path: Path, tensors: dict) -> None:
    """A safetensors file written under a temporary name, then renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
