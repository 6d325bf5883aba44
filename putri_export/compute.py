"""Where a job computes and in what precision: ``--device``, ``--dtype``, ``--streaming`` (prune, search, eval).

CPU and GPU run the same code; only the tensors' device and dtype differ. Weights and activations take
``--dtype``; statistics (Gram matrices, Cholesky factors, least-squares solves) stay in fp64 on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import PutriError
from .options import option

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
STREAMING = ("auto", "on", "off")
# Streaming is chosen when the weights would take more than this share of the device's free memory.
STREAM_ABOVE_FREE_SHARE = 0.4


@dataclass
class ComputeSettings:
    """The ``--device`` / ``--dtype`` / ``--streaming`` flags."""

    device: str = option("auto", "cpu, cuda, cuda:N or mps; auto: the best available")
    dtype: str = option("float32", "weights and activations (statistics stay fp64)", choices=DTYPES)
    streaming: str = option("auto", "read and write the model one block at a time (auto: when the weights would "
                            f"take over {STREAM_ABOVE_FREE_SHARE:.0%} of the device's free memory)", choices=STREAMING)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        import torch

        if self.dtype not in DTYPES:
            raise PutriError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        return getattr(torch, self.dtype)

    def use_streaming(self, weight_bytes: int) -> bool:
        """Whether to stream a model whose weights take ``weight_bytes`` in ``--dtype``."""
        if self.streaming not in STREAMING:
            raise PutriError(f"unknown streaming mode {self.streaming!r}; choose one of {', '.join(STREAMING)}")
        if self.streaming != "auto":
            return self.streaming == "on"
        return weight_bytes > STREAM_ABOVE_FREE_SHARE * free_memory(self.torch_device())


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (``/proc/cpuinfo``); empty where it does not."""
    from pathlib import Path

    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware: a CUDA GPU that supports it, or a CPU whose Linux
    flags say AVX512-BF16 or AMX-BF16. Elsewhere bf16 is emulated, slower than fp32."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def return_freed_memory() -> None:
    """Serve every allocation of 128 KiB and more from its own mapping (glibc ``mallopt``), so that freed block
    weights and statistics go back to the system. With glibc's default, the threshold grows to 32 MiB as large
    blocks are freed, and a streamed 1B-shape prune's resident memory crept up ~50 MB per block (1.1 → 2.5 GB
    peak); with it, resident memory stays flat between blocks. No effect where glibc is absent."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024)
    except (OSError, AttributeError):
        pass


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, else mps, else cpu; an explicit device must exist here."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PutriError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PutriError(f"--device {name}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PutriError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PutriError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PutriError(f"unsupported device {name!r}; accepted: auto, cpu, cuda, cuda:N, mps")
    return device


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (host RAM for cpu and mps)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings and peak-memory readings)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_device_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_memory_mb(device: torch.device) -> float | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None
