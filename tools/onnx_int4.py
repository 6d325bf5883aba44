"""Write an exported fp32 ONNX folder's weights in 4 bits with each rounding method of
``putri_export.export.onnx.quantize.INT4_METHODS`` (and in 8 bits), one folder per method, for comparing size,
perplexity and speed (``putri-export eval`` / ``bench`` on the folders).

    python tools/onnx_int4.py FP32_FOLDER OUT_PREFIX [METHOD ...]   # -> OUT_PREFIX-int4-METHOD/, OUT_PREFIX-int8/

The GPTQ methods need the PyTorch model and calibration text, not only the graph: write them with
``putri-export export onnx MODEL --quantize int4 [--int4-method gptq-sym]``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from putri_export.export.onnx.quantize import INT4_METHODS, quantize_weights
from putri_export.runtime.ort import LAYOUT_FILE, check_onnx_folder


def write_variant(src: Path, out: Path, bits: int, method: str) -> float:
    spec = check_onnx_folder(src)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.startswith(spec["model_file"]):
            shutil.copy2(f, tmp / f.name)
    t0 = time.perf_counter()
    quantize_weights(src / spec["model_file"], tmp / spec["model_file"], bits, method)
    seconds = time.perf_counter() - t0
    spec["quantization"] = f"int{bits}"
    spec["int4_method"] = method if bits == 4 else None
    (tmp / LAYOUT_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return seconds


def main(argv: list[str]) -> None:
    src, prefix = Path(argv[0]), argv[1]
    for method in argv[2:] or ["int8", *(m for m in INT4_METHODS if not m.startswith("gptq"))]:
        if method.startswith("gptq"):
            raise SystemExit(f"{method}: GPTQ needs the PyTorch model; use putri-export export onnx --quantize int4")
        bits, name = (8, "int8") if method == "int8" else (4, f"int4-{method}")
        out = Path(f"{prefix}-{name}")
        if out.is_dir():
            print(f"{out}: exists")
            continue
        seconds = write_variant(src, out, bits, method)
        size = sum(f.stat().st_size for f in out.glob("model.onnx*"))
        print(f"{out}: {size:,} bytes, quantized in {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
