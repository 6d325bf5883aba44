"""Helpers the tests share (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "putri_export.cli", *args], capture_output=True, text=True, env=env)


def assert_one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("putri-export: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def fresh_stories(stories_dir):
    """A private copy (tests that resize layers must not touch the session model)."""
    from putri_export.model import load_model

    return load_model(stories_dir)[0]


def tiny_recipe(stories_dir, **kw):
    """A ``run`` recipe small enough for the suite: stories260K, f32 GGUF and fp32 ONNX, one window each."""
    from putri_export.run import Recipe

    base = {"model": str(stories_dir), "sparsity": 0.5, "formats": ["gguf", "onnx"], "gguf_types": ["f32"],
            "onnx_quantize": ["none"], "calib": "tinystories:train", "calib_samples": 8, "calib_len": 128,
            "eval_windows": 2, "verify_windows": 1, "bench_depths": [0], "bench_repeats": 1, "prompt_tokens": 16,
            "gen_tokens": 8, "threads": 1}
    return Recipe(**{**base, **kw})
