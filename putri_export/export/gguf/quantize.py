"""llama.cpp's own quantizer (``llama_model_quantize``) on an f32 GGUF we wrote, in a child process.

K-quants and i-quants are llama.cpp's formats: its quantizer chooses each tensor's type (the ``_M`` recipes keep
some ``attn_v`` / ``ffn_down`` tensors wider), falls back per tensor where a row is not a multiple of the
256-value super-block (Q4_K → Q5_0, Q6_K → Q8_0; not a multiple of 32 → F16), and weighs the rounding error of
each input column by the importance matrix when one is given. It runs in a child process because llama.cpp
aborts its process on a failed assertion: the caller gets one line, never a dead process.

Child: ``python -m putri_export.export.gguf.quantize SRC DST FTYPE THREADS [IMATRIX.safetensors]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ...errors import PutriError
from ..formats import LLAMA_CPP_TYPES


def quantize_gguf(src: Path, dst: Path, type_name: str, imatrix: dict[str, np.ndarray] | None = None,
                  threads: int | None = None) -> None:
    """Quantize the GGUF ``src`` to llama.cpp type ``type_name`` at ``dst`` (``imatrix``: GGUF tensor name →
    mean of x² per input column)."""
    from safetensors.numpy import save_file

    from ...runtime.process import child_environment, crash_message

    if type_name not in LLAMA_CPP_TYPES:
        raise PutriError(f"{type_name!r} is not a llama.cpp quantizer type: choose one of {', '.join(LLAMA_CPP_TYPES)}")
    with tempfile.TemporaryDirectory(prefix="putri-imatrix-") as tmp:
        args = [str(src), str(dst), str(int(LLAMA_CPP_TYPES[type_name])), str(threads or 0)]
        if imatrix:
            path = Path(tmp) / "imatrix.safetensors"
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in imatrix.items()}, str(path))
            args.append(str(path))
        proc = subprocess.run([sys.executable, "-m", __name__, *args], capture_output=True, text=True,
                              env=child_environment())
    if proc.returncode != 0 or not Path(dst).is_file():
        raise PutriError(crash_message("llama.cpp's quantizer", src, f"quantizing to {type_name}",
                                       proc.returncode, proc.stdout + proc.stderr))


def _quantize_in_this_process(src: str, dst: str, ftype: int, threads: int, imatrix_file: str | None) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    keep = []  # the arrays the C side reads must outlive the call
    if imatrix_file is not None:
        from safetensors.numpy import load_file

        values = load_file(imatrix_file)
        entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()  # NULL name ends the list
        for entry, (name, data) in zip(entries, values.items()):
            data = np.ascontiguousarray(data, dtype=np.float32)
            keep += [name.encode(), data]
            entry.name, entry.size = keep[-2], data.size
            entry.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = entries
    return llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))


def main() -> None:
    src, dst, ftype, threads, *rest = sys.argv[1:]
    sys.exit(_quantize_in_this_process(src, dst, int(ftype), int(threads), rest[0] if rest else None))


if __name__ == "__main__":
    main()
