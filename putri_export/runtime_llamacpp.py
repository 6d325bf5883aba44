"""A GGUF file run by llama.cpp through llama-cpp-python: logits, greedy decoding, tokenization."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PutriError


def check_gguf_file(path: Path) -> None:
    """Fail with a clear message on a missing, truncated or foreign file before llama.cpp sees it."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise PutriError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as e:
        raise PutriError(f"{path} is not a readable GGUF file: truncated or corrupt ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]})") from None
    if end > path.stat().st_size:
        raise PutriError(f"{path} is truncated: tensor data ends at byte {end}, file has {path.stat().st_size}")


class LlamaCppModel:
    """Full-sequence logits (``logits_all``) and greedy decoding with llama.cpp's own KV cache."""

    def __init__(self, path: str | Path, n_ctx: int = 1024, n_threads: int | None = None, f32_kv_cache: bool = True):
        check_gguf_file(Path(path))
        try:
            from llama_cpp import GGML_TYPE_F32, Llama
        except ImportError:
            raise PutriError("llama-cpp-python is not installed: pip install 'putri-export[llama]'") from None
        kv_type = GGML_TYPE_F32 if f32_kv_cache else None  # the default F16 cache adds ~5e-3 to logits
        threads = n_threads or os.cpu_count() or 1
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                             n_threads=threads, n_threads_batch=threads, type_k=kv_type, type_v=kv_type,
                             verbose=False, seed=0)
        except Exception as e:
            raise PutriError(f"llama.cpp could not load {path}: {e}") from None
        self.n_ctx = n_ctx

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """[len(tokens), vocab] logits of one sequence, evaluated from an empty cache."""
        if len(tokens) > self.n_ctx:
            raise PutriError(f"{len(tokens)} tokens exceed the context of {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy continuation decoded one token at a time through the KV cache, with each step's logits."""
        self.llm.reset()
        self.llm.eval(list(prompt))
        out, steps = [], []
        for _ in range(new_tokens):
            last = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
            steps.append(last)
            token = int(last.argmax())
            out.append(token)
            self.llm.eval([token])
        return out, np.stack(steps)

    def close(self) -> None:
        self.llm.close()
