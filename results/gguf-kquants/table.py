"""The table of results/gguf-kquants/README.md from run.sh's JSON files: python results/gguf-kquants/table.py OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TYPES = ("f16", "q4_k_m", "q5_k_m", "q6_k", "iq4_xs")


def main(folder: Path) -> None:
    print("| model | type | importance matrix | bytes | ÷ f16 | WikiText-2 (llama.cpp) | vs PyTorch fp32 | TinyStories "
          "(llama.cpp) | vs f16 | verification |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for model in ("dense", "pruned"):
        f16_bytes = f16_ts = None
        for type_name in TYPES:
            for weighed in ("none", "calib"):
                name = f"{model}-{type_name}-{weighed}"
                verify = folder / f"{name}.verify.json"
                if not verify.exists():
                    continue
                parity = json.loads(verify.read_text())
                gguf = folder / f"{name}.gguf"
                size = gguf.stat().st_size if gguf.exists() else None
                ts_file = folder / f"{name}.tinystories.json"
                ts = json.loads(ts_file.read_text())["perplexity"] if ts_file.exists() else None
                if type_name == "f16":
                    f16_bytes, f16_ts = size, ts
                cells = [model, type_name, "yes" if weighed == "calib" else "no",
                         f"{size:,}" if size else "–", f"{size / f16_bytes:.3f}" if size and f16_bytes else "–",
                         f"{parity['ppl_runtime']:.3f}", f"{parity['ppl_rel_diff']:+.2%}",
                         f"{ts:.3f}" if ts else "–", f"{ts / f16_ts - 1:+.1%}" if ts and f16_ts else "–",
                         "PASS" if parity["passed"] else "FAIL (not written)"]
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
