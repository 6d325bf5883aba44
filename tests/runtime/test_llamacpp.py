"""llama.cpp through one door: every load applies the CPU-safe buffer setting (AMX), and the setting reaches
llama.cpp. Loads happen in child processes, never in the test process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from putri_export.errors import PutriError
from putri_export.export.gguf import write_gguf
from putri_export.runtime import llamacpp as runtime_llamacpp
from putri_export.runtime.process import child_environment

REPO = Path(__file__).resolve().parents[2]
# What creates a llama.cpp model or server without open_llama / serve: the class itself, or its server module.
DIRECT_LOAD = re.compile(r"(?<![\w.])Llama\(|llama_cpp\.Llama\b|from llama_cpp import[^\n]*\bLlama\b|llama_cpp\.server")


def test_every_llama_cpp_load_goes_through_open_llama():
    """Package, tools, tests, deploy scripts, README and the run report's text: only runtime/llamacpp.py
    creates llama_cpp.Llama objects or starts llama-cpp-python's server."""
    door = REPO / "putri_export" / "runtime" / "llamacpp.py"
    files = [p for folder in ("putri_export", "tools", "tests", "deploy") for p in (REPO / folder).rglob("*")
             if p.suffix in (".py", ".sh") and p != door and p != Path(__file__)] + [REPO / "README.md"]
    offenders = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
                 for n, line in enumerate(p.read_text().splitlines(), 1) if DIRECT_LOAD.search(line)]
    assert offenders == []
    assert "Llama(model_path" in door.read_text() and "safe_model_params" in door.read_text()
    # The test process never opens llama.cpp itself: a runtime abort must not end pytest.
    in_process = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "tests").rglob("*.py") if p != Path(__file__)
                  for n, line in enumerate(p.read_text().splitlines(), 1) if "LlamaCppModel(" in line]
    assert in_process == []


@pytest.mark.parametrize("offered, amx_flag, expected", [
    (["AMX", "CPU_REPACK"], False, False),  # ggml offers its AMX buffer type: the crash path, off
    (["CPU_REPACK"], True, True),  # a CPU with AMX but a build without it: repacking stays
    (["CPU_REPACK"], False, True),
    ([], False, True),
    (None, True, False),  # ggml could not be asked: decided by the CPU flag
    (None, False, True),
])
def test_extra_buffer_types_are_off_exactly_where_amx_is_offered(monkeypatch, offered, amx_flag, expected):
    monkeypatch.delenv(runtime_llamacpp.EXTRA_BUFTS_ENV, raising=False)
    monkeypatch.setattr(runtime_llamacpp, "cpu_extra_buffer_types", lambda: offered)
    monkeypatch.setattr(runtime_llamacpp, "cpu_has_amx", lambda: amx_flag)
    runtime_llamacpp.use_extra_buffer_types.cache_clear()
    try:
        assert runtime_llamacpp.use_extra_buffer_types() is expected
        for value, forced in (("off", False), ("on", True)):
            monkeypatch.setenv(runtime_llamacpp.EXTRA_BUFTS_ENV, value)
            runtime_llamacpp.use_extra_buffer_types.cache_clear()
            assert runtime_llamacpp.use_extra_buffer_types() is forced
        monkeypatch.setenv(runtime_llamacpp.EXTRA_BUFTS_ENV, "maybe")
        runtime_llamacpp.use_extra_buffer_types.cache_clear()
        with pytest.raises(PutriError, match="use auto, on or off"):
            runtime_llamacpp.use_extra_buffer_types()
    finally:
        runtime_llamacpp.use_extra_buffer_types.cache_clear()


LOAD_AND_REPORT = """
import sys
from putri_export.runtime.llamacpp import cpu_extra_buffer_types, open_llama, use_extra_buffer_types
llm = open_llama(sys.argv[1], n_ctx=64, verbose=True)
print("setting", llm.model_params.use_extra_bufts, use_extra_buffer_types(), cpu_extra_buffer_types(), flush=True)
llm.close()
"""


def _load_log(path: Path, setting: str) -> tuple[str, str]:
    env = dict(child_environment(), **{runtime_llamacpp.EXTRA_BUFTS_ENV: setting})
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_REPORT, str(path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def test_the_setting_reaches_llama_cpp(stories, stories_dir, tmp_path):
    """A Q4_0 file (a type ggml repacks on x86 and ARM): with extra buffer types on, llama.cpp's load log shows
    an extra-buffer model buffer; with them off, none; 'auto' follows what this CPU's ggml offers."""
    path = tmp_path / "m-q4_0.gguf"
    with torch.no_grad():
        write_gguf(stories[0], stories_dir, path, "q4_0", progress=False)
    extra = re.compile(r"(CPU_REPACK|AMX) model buffer size")
    out, log = _load_log(path, "off")
    assert out.startswith("setting False False") and not extra.search(log)
    out, log = _load_log(path, "on")
    assert out.startswith("setting True True") and extra.search(log), log[-3000:]
    out, log = _load_log(path, "auto")
    offered = eval(out.split(" ", 3)[3])  # the list ggml reported in that process
    assert isinstance(offered, list), "this llama.cpp build must answer which buffer types it offers"
    assert out.startswith(f"setting {'AMX' not in offered}")
    assert bool(extra.search(log)) == ("AMX" not in offered)
