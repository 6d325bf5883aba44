"""The one resume store: progress and tensors survive, other jobs' progress is refused, writes are atomic."""

from __future__ import annotations

import json

import pytest
import torch

from putri_export.errors import PutriError
from putri_export.resume import ResumeStore, fingerprint


def test_progress_and_tensors_come_back_only_for_the_same_job(tmp_path):
    folder = tmp_path / "state"
    store = ResumeStore(folder, fingerprint({"a": 1}), what="job")
    assert not store.resumed and store.get("done", 0) == 0
    store.save({"hidden": {"x": torch.arange(6.0).view(2, 3)}}, done=3, log=[1, 2])
    assert sorted(p.name for p in folder.iterdir()) == ["hidden.safetensors", "state.json"]  # no temporary left
    again = ResumeStore(folder, fingerprint({"a": 1}), resume=True)
    assert again.resumed and again.get("done") == 3 and again.get("log") == [1, 2]
    assert torch.equal(again.tensors("hidden")["x"], torch.arange(6.0).view(2, 3))
    with pytest.raises(PutriError, match="holds the progress of another job"):
        ResumeStore(folder, fingerprint({"a": 2}), resume=True, what="job")
    fresh = ResumeStore(folder, fingerprint({"a": 1}), resume=False)  # not resuming: start over
    assert not fresh.resumed and not any(folder.iterdir())
    fresh.save(done=1)
    fresh.forget()
    assert not (folder / "state.json").exists() and folder.is_dir()
    fresh.clear()
    assert not folder.exists()


def test_a_kill_during_a_write_leaves_the_previous_state(tmp_path, monkeypatch):
    folder = tmp_path / "state"
    store = ResumeStore(folder, "k")
    store.save(done=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(done=2)
    monkeypatch.undo()
    assert json.loads((folder / "state.json").read_text())["progress"] == {"done": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["state.json"]


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1}) != fingerprint({"a": [2, 1]})
