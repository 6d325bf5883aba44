"""The fp32 rounding floor of a model's logits: PyTorch fp32 vs PyTorch fp64 on the parity check's prompt.

An exported fp32 artifact is held to max|Δlogit| ≤ 1e-4 × max|logit| against PyTorch fp32; this measures how far
PyTorch's own fp32 logits are from exact (fp64) arithmetic on the same tokens, to tell an exporter's error from the
floor every fp32 implementation shares.

Usage: python tools/fp32_floor.py MODEL_DIR [--json FILE]   (holds the model in fp32 and fp64: 12 bytes a parameter)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from putri_export.data import load_corpus, tokenize_corpus
from putri_export.export.checks import ParityCheck
from putri_export.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check = ParityCheck()
    model, tokenizer = load_model(args.model)
    ids = tokenize_corpus(tokenizer, load_corpus(check.data))[: check.prompt_tokens]
    with torch.no_grad():
        fp32 = model(ids[None]).logits[0].double()
        fp64 = model.double()(ids[None]).logits[0]
    diff, peak = (fp32 - fp64).abs().max().item(), fp64.abs().max().item()
    result = {"model": args.model, "data": check.data, "tokens": len(ids), "max_abs_fp32_vs_fp64": diff,
              "max_abs_logit": peak, "relative": diff / peak}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
