"""A benchmark-only install (deploy/: no torch, no transformers) runs ``putri-export bench``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from putri_export.export.gguf import write_gguf
from putri_export.export.onnx import write_onnx

# Makes torch, transformers and datasets unimportable in the child, as on a device without them.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'datasets'):
            raise ImportError(f'{name} is not installed here')
sys.meta_path.insert(0, Block())
sys.argv = ['putri-export', *sys.argv[1:]]
from putri_export.cli import main
code = main()
assert 'torch' not in sys.modules and 'transformers' not in sys.modules
sys.exit(code)
"""


@pytest.mark.parametrize("backend", ["llama.cpp", "onnxruntime"])
def test_bench_runs_without_torch_or_transformers(stories, stories_dir, tmp_path, backend):
    path = tmp_path / ("m.gguf" if backend == "llama.cpp" else "onnx")
    if backend == "llama.cpp":
        with torch.no_grad():
            write_gguf(stories[0], stories_dir, path, "q8_0", progress=False)
    else:
        write_onnx(stories[0], stories_dir, path)
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-c", BLOCK, "bench", str(path), "--backend", backend, "--threads", "1",
                           "--prompt-tokens", "8", "--gen-tokens", "4", "--depths", "0", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["results"][0]["decode_tps"]["median"] > 0
