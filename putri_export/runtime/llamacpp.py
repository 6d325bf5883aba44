"""A GGUF file run by llama.cpp through llama-cpp-python: logits, greedy decoding, tokenization.

Every ``llama_cpp.Llama`` this package creates comes from :func:`open_llama` (a test checks it), so the
CPU setting below is applied once, everywhere: verification, evaluation, the benchmark worker, ``serve``.

Why the setting exists: ggml's CPU backend offers "extra buffer types" that re-lay weights for faster
kernels (``CPU_REPACK``; ``AMX`` on Intel CPUs with Advanced Matrix Extensions when llama.cpp was built with
it, which a native build on such a CPU is). Its AMX matrix multiply crashes the process (SIGSEGV in
``ggml_backend_amx_mul_mat``) on every quantized GGUF (llama.cpp issue 20824). Turning extra buffer types
off (``llama_model_params.use_extra_bufts = false``; llama.cpp's own tools: ``--no-repack``) avoids it. We
turn them off only where the AMX buffer type is present, so other CPUs keep weight repacking.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import PutriError

EXTRA_BUFTS_ENV = "PUTRI_LLAMA_EXTRA_BUFTS"  # auto (default) | on | off


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


# ---------------------------------------------------------------------------------------------
# The CPU-safe load setting


def cpu_extra_buffer_types() -> list[str] | None:
    """Names of the extra buffer types ggml's CPU device offers in this process (e.g. ``["AMX",
    "CPU_REPACK"]``), asked from ggml itself; None when this llama.cpp build does not answer."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib = Path(llama_cpp.__file__).parent / "lib"
    try:
        ggml = ctypes.CDLL(str(next(lib.glob("libggml.so*"), lib / "libggml.so")))
        base = ctypes.CDLL(str(next(lib.glob("libggml-base.so*"), lib / "libggml-base.so")))
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        base.ggml_backend_buft_name.restype = ctypes.c_char_p
        base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):  # another platform's library names, or an older ggml
        return None
    device = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not device:
        return None
    address = base.ggml_backend_reg_get_proc_address(base.ggml_backend_dev_backend_reg(device),
                                                     b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return []
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(device)
    names, i = [], 0
    while bufts and bufts[i]:
        names.append(base.ggml_backend_buft_name(bufts[i]).decode())
        i += 1
    return names


def cpu_has_amx() -> bool:
    """Linux's CPU flags say AMX (Intel Sapphire Rapids and later)."""
    from ..compute import cpu_flags

    return "amx_int8" in cpu_flags()


@functools.cache
def use_extra_buffer_types() -> bool:
    """Whether llama.cpp may use its extra CPU buffer types here: not where the AMX one is offered
    (or, when ggml cannot be asked, on a CPU with AMX). ``PUTRI_LLAMA_EXTRA_BUFTS=on|off`` decides instead."""
    setting = os.environ.get(EXTRA_BUFTS_ENV, "auto").strip().lower()
    if setting in ("off", "0", "false", "no"):
        return False
    if setting in ("on", "1", "true", "yes"):
        return True
    if setting != "auto":
        raise PutriError(f"{EXTRA_BUFTS_ENV}={setting!r}: use auto, on or off")
    names = cpu_extra_buffer_types()
    return "AMX" not in names if names is not None else not cpu_has_amx()


@contextmanager
def safe_model_params() -> Iterator[None]:
    """While active, every llama.cpp model llama-cpp-python loads gets :func:`use_extra_buffer_types`.

    ``use_extra_bufts`` is a field of llama.cpp's model parameters but not a keyword of ``llama_cpp.Llama``,
    which fills its parameters from ``llama_model_default_params()``; that call is wrapped here.
    """
    from llama_cpp import llama_cpp as api

    default = api.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = use_extra_buffer_types()
        return p

    api.llama_model_default_params = params
    try:
        yield
    finally:
        api.llama_model_default_params = default


def open_llama(path: str | Path, **kwargs):
    """``llama_cpp.Llama(model_path=path, **kwargs)`` with the CPU-safe buffer setting; the file is checked first."""
    check_gguf_file(Path(path))
    try:
        from llama_cpp import Llama
    except ImportError:
        raise PutriError("llama-cpp-python is not installed: pip install 'putri-export[llama]'") from None
    with safe_model_params():
        try:
            return Llama(model_path=str(path), **kwargs)
        except Exception as e:
            raise PutriError(f"llama.cpp could not load {path}: {e}") from None


def serve(argv: list[str]) -> None:
    """llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server ARGV``) with the same setting."""
    import runpy
    import sys

    with safe_model_params():
        sys.argv = ["llama_cpp.server", *argv]
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


# ---------------------------------------------------------------------------------------------


class LlamaCppModel:
    """Full-sequence logits (``logits_all``) and greedy decoding with llama.cpp's own KV cache."""

    def __init__(self, path: str | Path, n_ctx: int = 1024, n_threads: int | None = None, f32_kv_cache: bool = True):
        from llama_cpp import GGML_TYPE_F32

        kv_type = GGML_TYPE_F32 if f32_kv_cache else None  # the default F16 cache adds ~5e-3 to logits
        threads = n_threads or os.cpu_count() or 1
        self.llm = open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                              n_threads=threads, n_threads_batch=threads, type_k=kv_type, type_v=kv_type,
                              verbose=False, seed=0)
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


if __name__ == "__main__":  # `putri-export serve` hands its process to this
    import sys

    serve(sys.argv[1:])
