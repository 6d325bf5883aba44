"""The teacher's outputs on the training windows, computed once per shard of windows and kept in the resume store,
so that epochs and resumed sessions reuse them instead of running the dense model again."""

from __future__ import annotations

import contextlib
import time

import torch

from ..resume import ResumeStore
from .distill import teacher_topk


def autocast_context(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``autocast="bf16"``; nothing for ``"none"``."""
    if autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class TeacherCache:
    """Top-k log-probabilities (and, with ``hidden``, last hidden states) of ``teacher`` for each shard of ``ids``
    (its forward under ``autocast``).

    ``shards``: lists of window indices into ``ids``; shard ``j`` is computed the first time it is asked for (then
    saved in ``store`` as ``teacher-{name}``), so a run that stops early never pays for windows it did not train on.
    """

    def __init__(self, teacher: torch.nn.Module, ids: torch.Tensor, top_k: int, hidden: bool, store: ResumeStore,
                 batch_size: int = 4, autocast: str = "none"):
        self.teacher, self.ids, self.top_k, self.hidden = teacher, ids, top_k, hidden
        self.store, self.batch_size, self.autocast = store, batch_size, autocast
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.seconds = 0.0

    def get(self, name: str, windows: list[int]) -> dict[str, torch.Tensor]:
        """``logp`` (n, T, k) fp32, ``ids`` (n, T, k) int32 and, with hidden states, ``hidden`` (n, T, d) fp16 for
        the windows of shard ``name``, in the order given."""
        if name in self.memory:
            return self.memory[name]
        if self.store.folder is not None and name in self.store.get("teacher_shards", []):
            shard = self.store.tensors(f"teacher-{name}")
        else:
            shard = self._compute(windows)
            self.store.save(tensors={f"teacher-{name}": shard},
                            teacher_shards=[*self.store.get("teacher_shards", []), name])
        self.memory[name] = shard
        return shard

    @torch.no_grad()
    def _compute(self, windows: list[int]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        parts: dict[str, list[torch.Tensor]] = {"logp": [], "ids": [], "hidden": []}
        device = self.teacher.get_input_embeddings().weight.device
        for batch in torch.tensor(windows).split(self.batch_size):
            with autocast_context(device, self.autocast):
                out = self.teacher(input_ids=self.ids[batch].to(device), use_cache=False,
                                   output_hidden_states=self.hidden)
            logp, top = teacher_topk(out.logits, self.top_k)
            parts["logp"].append(logp.cpu())
            parts["ids"].append(top.cpu())
            if self.hidden:
                parts["hidden"].append(out.hidden_states[-1].to(torch.float16).cpu())
        self.seconds += time.perf_counter() - start
        return {k: torch.cat(v) for k, v in parts.items() if v}
