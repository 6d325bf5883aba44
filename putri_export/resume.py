"""One resume store for every long job (pruning, search, ``run``): progress that survives an interruption.

A folder holds ``state.json`` (the job's key and its progress, JSON: never pickle) and named groups of
tensors as safetensors beside it. Each write goes to a temporary name and is renamed, so a kill at any moment
leaves the previous state whole. The key is a hash of everything the job depends on (settings, model,
calibration): progress of another job is refused, not silently reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import save_tensors_atomic, write_atomic
from .errors import PutriError

if TYPE_CHECKING:
    import torch


def fingerprint(*parts) -> str:
    """A stable hash of JSON-able parts (anything else by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model) -> dict:
    """What identifies a model's weights cheaply: its config and the sum of every parameter."""
    return {"config": model.config.to_dict(),
            "weights": float(sum(p.detach().double().sum() for p in model.parameters()))}


class ResumeStore:
    """``folder`` None: progress in memory only (nothing to resume from)."""

    def __init__(self, folder: Path | None, key: str, resume: bool = False, what: str = "job",
                 state_file: str = "state.json"):
        self.folder = Path(folder) if folder is not None else None
        self.key, self.what = key, what
        self.progress: dict = {}
        self.resumed = False
        if self.folder is None:
            return
        self.file = self.folder / state_file
        if resume and self.file.is_file():
            saved = json.loads(self.file.read_text())
            if saved.get("key") != key:
                raise PutriError(f"{self.folder} holds the progress of another {what} (other settings, model or "
                                 "data); run without --resume to start over")
            self.progress, self.resumed = saved.get("progress", {}), True
        else:
            self.clear()
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, default=None):
        return self.progress.get(name, default)

    def save(self, tensors: dict[str, dict[str, torch.Tensor]] | None = None, **progress) -> None:
        """Record ``progress`` (merged into what is there) after writing the tensor groups it refers to."""
        self.progress.update(progress)
        if self.folder is None:
            return
        for name, group in (tensors or {}).items():
            save_tensors_atomic(self.folder / f"{name}.safetensors", group)
        write_atomic(self.file, json.dumps({"key": self.key, "progress": self.progress}))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.folder / f"{name}.safetensors"))

    def forget(self) -> None:
        """Drop the progress file only (a finished job whose folder lives on)."""
        self.progress, self.resumed = {}, False
        if self.folder is not None:
            self.file.unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget everything (the folder is removed)."""
        self.progress, self.resumed = {}, False
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder)
