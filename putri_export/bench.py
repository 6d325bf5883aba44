"""Deploy benchmark in the style of llama-bench: prefill (pp) and decode (tg) at context depths.

Every (model, backend, depth) configuration runs in a fresh child process (``bench_worker.py``) so its peak RSS and load time are its own. Inside: load, one
warm-up, then ``repeats`` times: reset the cache, fill ``depth`` context tokens (untimed), prefill
``prompt_tokens`` (time to first token = that prefill plus picking the first token), decode
``gen_tokens`` greedily one at a time. Token ids are a fixed pseudo-random sequence: speed does not
depend on the text, and no data set is needed on a device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .bench_worker import BenchConfig  # the worker file is import-light on purpose
from .errors import PutriError

BACKENDS = ("llama.cpp", "onnxruntime", "torch")


# ---------------------------------------------------------------------------------------------
# Model facts read from the files (no runtime needed): widths, context, bytes


def model_facts(path: str | Path, backend: str) -> dict:
    """KV heads per layer, head_dim, context limit, vocab and weight bytes of an artifact."""
    path = Path(path)
    if backend == "llama.cpp":
        import gguf

        from .runtime_llamacpp import check_gguf_file

        check_gguf_file(path)
        reader = gguf.GGUFReader(str(path))
        arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")

        def field(name):
            f = reader.fields.get(f"{arch}.{name}")
            if f is None:
                return None
            values = [f.parts[i].tolist()[0] for i in f.data]
            return values if len(values) > 1 else values[0]

        kv = field("attention.head_count_kv")
        layers = field("block_count")
        kv = kv if isinstance(kv, list) else [kv] * layers
        return {"kv_heads": kv, "head_dim": field("attention.key_length"), "context": field("context_length"),
                "weight_bytes": path.stat().st_size, "file_bytes": path.stat().st_size}
    if backend == "onnxruntime":
        from .runtime_ort import check_onnx_folder

        spec = check_onnx_folder(path)
        size = sum(f.stat().st_size for f in path.glob(spec["model_file"] + "*"))
        return {"kv_heads": spec["num_key_value_heads_per_layer"], "head_dim": spec["head_dim"],
                "context": spec.get("max_position_embeddings"), "weight_bytes": size, "file_bytes": size}
    if backend == "torch":
        config_file = path / "config.json"
        if not config_file.is_file():
            raise PutriError(f"torch backend needs an HF model folder; {path} has no config.json")
        c = json.loads(config_file.read_text())
        n = c["num_hidden_layers"]
        kv = c.get("num_key_value_heads_per_layer") or [c.get("num_key_value_heads") or c["num_attention_heads"]] * n
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return {"kv_heads": kv, "head_dim": c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                "context": c.get("max_position_embeddings"), "weight_bytes": size, "file_bytes": size}
    raise PutriError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


# KV cache element size each runtime uses by default (llama.cpp: F16 cache; ours: fp32).
KV_DTYPE_BYTES = {"llama.cpp": 2, "onnxruntime": 4, "torch": 4}


def kv_bytes_per_token(kv_heads: list[int], head_dim: int, dtype_bytes: int) -> int:
    """K and V of every layer's own KV-head count, for one token."""
    return sum(2 * k * head_dim * dtype_bytes for k in kv_heads)


def measure(cfg: BenchConfig, timeout: float | None = None) -> dict:
    """Run one configuration in a fresh child process and return its JSON result.

    The worker imports no torch/transformers for llama.cpp and ONNX Runtime, so its peak RSS is the runtime's
    own; a crash of the runtime there is a clear error here.
    """
    from .runtime_process import RuntimeCrashed, child_environment, crash_message

    env = dict(child_environment(), OMP_NUM_THREADS=str(cfg.threads))
    proc = subprocess.run([sys.executable, "-m", "putri_export.bench_worker", json.dumps(asdict(cfg))],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode < 0:
        raise RuntimeCrashed(crash_message(cfg.backend, cfg.model, f"benchmarking (depth {cfg.depth})",
                                       proc.returncode, proc.stderr))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PutriError(f"benchmark of {cfg.model} ({cfg.backend}, depth {cfg.depth}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
