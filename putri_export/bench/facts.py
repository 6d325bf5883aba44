"""What the benchmark knows of an artifact without running it: KV heads per layer, head size, context,
bytes — read from the files (GGUF metadata, ``putri_onnx.json``, ``config.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PutriError

BACKENDS = ("llama.cpp", "onnxruntime", "torch")


# ---------------------------------------------------------------------------------------------
# Model facts read from the files (no runtime needed): widths, context, bytes


def model_facts(path: str | Path, backend: str) -> dict:
    """KV heads per layer, head_dim, context limit, vocab and weight bytes of an artifact."""
    path = Path(path)
    if backend == "llama.cpp":
        import gguf

        from ..runtime.llamacpp import check_gguf_file

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
        from ..runtime.ort import check_onnx_folder

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
