"""One benchmark configuration, measured in this (fresh) process: ``python -m putri_export.bench.worker CONFIG``,
started by ``bench.sweep.measure``.

Imports only what the chosen runtime needs: llama.cpp and ONNX Runtime runs never load torch.
Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchConfig:
    backend: str
    model: str
    threads: int
    prompt_tokens: int
    gen_tokens: int
    depth: int
    repeats: int
    warmup: int = 1


# ---------------------------------------------------------------------------------------------
# Runners: reset / prefill / decode one token; the smallest surface each runtime needs


class _TorchRunner:
    def __init__(self, path: str, threads: int):
        import torch

        from putri_export.model import load_model

        torch.set_num_threads(threads)
        self.torch = torch
        self.model, _ = load_model(path)
        self.vocab = self.model.config.vocab_size
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)

    def run(self, tokens: list[int]) -> int:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([tokens]), cache=self.cache, use_cache=True)
        return int(out.logits[0, -1].argmax())

    def kv_bytes(self) -> int:
        total = 0
        for layer in self.cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
        return total


class _OrtRunner:
    """The exported session and its per-layer cache layout, without the tokenizer (no transformers import). An
    in-place cache is allocated for the whole run up front, as llama.cpp's is."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        from putri_export.runtime.ort import OrtModel

        self.model = OrtModel(path, n_threads=threads, tokenizer=False)
        self.vocab = self.model.spec.get("vocab_size")
        self.n_ctx = n_ctx
        self.reset()

    def reset(self) -> None:
        self.cache, self.past = self.model.new_cache(capacity=self.n_ctx), 0

    def run(self, tokens: list[int]) -> int:
        logits, self.cache = self.model.step(np.array([tokens]), self.cache, self.past)
        self.past += len(tokens)
        return int(logits[0, -1].argmax())

    def kv_bytes(self) -> int:
        if isinstance(self.cache, dict):
            return int(sum(v.nbytes for v in self.cache.values()))
        return self.cache.nbytes


class _LlamaCppRunner:
    def __init__(self, path: str, threads: int, n_ctx: int):
        from putri_export.runtime.llamacpp import open_llama

        self.llm = open_llama(path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                              n_threads_batch=threads, logits_all=False, verbose=False, seed=0)
        self.vocab = self.llm.n_vocab()

    def reset(self) -> None:
        self.llm.reset()

    def run(self, tokens: list[int]) -> int:
        self.llm.eval(tokens)
        # Last position's logits straight from the context (logits_all=False keeps no copy).
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))
        return int(logits.argmax())

    def kv_bytes(self) -> int | None:
        return None  # llama.cpp allocates the whole n_ctx cache up front; the formula stands alone


def _runner(cfg: BenchConfig):
    if cfg.backend == "torch":
        return _TorchRunner(cfg.model, cfg.threads)
    n_ctx = cfg.depth + cfg.prompt_tokens + cfg.gen_tokens
    if cfg.backend == "onnxruntime":
        return _OrtRunner(cfg.model, cfg.threads, n_ctx)
    return _LlamaCppRunner(cfg.model, cfg.threads, n_ctx + 8)


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec (ru_maxrss would carry over
    the forking parent's peak); elsewhere ru_maxrss (bytes on macOS, KiB on other systems)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values),
            "n": len(values)}


def run_worker(cfg: BenchConfig) -> dict:
    """One configuration, measured in this process."""
    start = time.perf_counter()
    runner = _runner(cfg)
    load_s = time.perf_counter() - start
    vocab = runner.vocab or 256
    rng = np.random.default_rng(0)
    ids = rng.integers(min(10, vocab - 1), vocab, size=cfg.depth + cfg.prompt_tokens).tolist()
    context, prompt = ids[: cfg.depth], ids[cfg.depth:]
    ttft, prefill, decode, kv_runtime = [], [], [], None
    for i in range(cfg.warmup + cfg.repeats):
        runner.reset()
        for s in range(0, cfg.depth, 512):
            runner.run(context[s: s + 512])
        t0 = time.perf_counter()
        token = runner.run(prompt)
        t1 = time.perf_counter()
        for _ in range(cfg.gen_tokens):
            token = runner.run([token])
        t2 = time.perf_counter()
        if i >= cfg.warmup:
            ttft.append(t1 - t0)
            prefill.append(cfg.prompt_tokens / (t1 - t0))
            decode.append(cfg.gen_tokens / (t2 - t1) if cfg.gen_tokens else 0.0)
            kv_runtime = runner.kv_bytes()
    tokens_in_cache = cfg.depth + cfg.prompt_tokens + cfg.gen_tokens
    return {
        "load_s": load_s,
        "ttft_s": _spread(ttft),
        "prefill_tps": _spread(prefill),
        "decode_tps": _spread(decode),
        "peak_rss_mb": peak_rss_mb(),
        "kv_runtime_bytes": kv_runtime,
        "kv_runtime_tokens": tokens_in_cache,
    }




if __name__ == "__main__":
    print(json.dumps(run_worker(BenchConfig(**json.loads(sys.argv[1])))))
