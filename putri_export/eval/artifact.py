"""An exported artifact measured in its own runtime without the model it came from: the perplexity protocol of
:mod:`.perplexity` on the runtime's own tokenization (llama.cpp's for a GGUF, the HF tokenizer files shipped in an
ONNX folder), and the per-layer widths the artifact holds."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import Corpus
from ..errors import PutriError
from .perplexity import PerplexityResult, nll_perplexity, runtime_nll_fn


def artifact_runtime(path: Path) -> str | None:
    """``llama.cpp`` for a .gguf file, ``onnxruntime`` for an exported ONNX folder, None for anything else."""
    from ..runtime.ort import LAYOUT_FILE

    path = Path(path)
    if path.suffix == ".gguf" and not path.is_dir():
        return "llama.cpp"
    if path.is_dir() and (path / LAYOUT_FILE).is_file():
        return "onnxruntime"
    return None


def evaluate_artifact(path: Path, corpus: Corpus, seq_len: int, max_windows: int | None, threads: int | None = None,
                      progress: bool = True) -> PerplexityResult:
    """Perplexity of a GGUF (llama.cpp) or an exported ONNX folder (ONNX Runtime), in a child process."""
    from ..runtime.llamacpp import check_gguf_file
    from ..runtime.ort import check_onnx_folder
    from ..runtime.process import RuntimeProcess

    kind = artifact_runtime(path)
    if kind is None:
        raise PutriError(f"{path} is not a runtime artifact (a .gguf file or an exported ONNX folder)")
    check_gguf_file(path) if kind == "llama.cpp" else check_onnx_folder(path)
    with RuntimeProcess(kind, Path(path), n_ctx=seq_len, n_threads=threads) as runtime:
        ids = torch.tensor(runtime.tokenize(corpus.text), dtype=torch.long)
        return nll_perplexity(runtime_nll_fn(runtime), ids, seq_len, max_windows, corpus=corpus, progress=progress)


def artifact_widths(path: Path) -> dict:
    """Per-layer query heads, KV heads and FFN widths as the artifact holds them (a GGUF's placeholders included)."""
    from ..runtime.llamacpp import check_gguf_file
    from ..runtime.ort import check_onnx_folder

    if artifact_runtime(path) == "onnxruntime":
        spec = check_onnx_folder(path)
        return {"format": "onnx", "model_type": spec.get("model_type", "?"), "quantization": spec["quantization"],
                "heads": spec["num_attention_heads_per_layer"], "kv_heads": spec["num_key_value_heads_per_layer"],
                "ffn": spec["intermediate_size_per_layer"], "head_dim": spec["head_dim"]}
    import gguf

    check_gguf_file(path)
    fields = gguf.GGUFReader(path).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    layers = int(fields[f"{arch}.block_count"].contents())

    def per_layer(key: str) -> list[int]:
        field = fields.get(f"{arch}.{key}")
        if field is None:
            raise PutriError(f"{path}: no {arch}.{key} in its header")
        value = field.contents()
        return [int(v) for v in value] if isinstance(value, list) else [int(value)] * layers

    return {"format": "gguf", "arch": arch, "heads": per_layer("attention.head_count"),
            "kv_heads": per_layer("attention.head_count_kv"), "ffn": per_layer("feed_forward_length")}
