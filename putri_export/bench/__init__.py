"""The deploy benchmark: prefill/decode speed, time to first token, peak memory and KV bytes of artifacts in
their runtimes, dense against pruned in the same run. Entry points: :func:`run_sweep`, :func:`merge`."""

from .facts import BACKENDS, kv_bytes_per_token, model_facts
from .sweep import measure, merge, run_sweep
from .worker import BenchConfig

__all__ = ["BACKENDS", "BenchConfig", "kv_bytes_per_token", "measure", "merge", "model_facts", "run_sweep"]
