"""What a parity check runs and what it accepts per artifact type (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParityCheck:
    """What a parity check runs: the text, the perplexity windows, the compared prompt and decoding steps."""

    data: str = "wikitext2"
    seq_len: int = 512
    max_windows: int = 4
    prompt_tokens: int = 256
    new_tokens: int = 32
    tokenization_docs: int = 64


@dataclass
class Tolerance:
    max_rel_logit_diff: float | None  # max|Δlogit| / max|logit| over the compared tokens
    max_ppl_rel_diff: float  # |ppl_runtime / ppl_torch − 1|
    greedy_identical: bool


# Per artifact type. fp32 paths must match logits; reduced precision is judged by perplexity.
TOLERANCES = {
    "f32": Tolerance(1e-3, 0.005, True),
    "f16": Tolerance(None, 0.01, False),
    "q8_0": Tolerance(None, 0.02, False),
    "q5_0": Tolerance(None, 0.06, False),
    "q5_1": Tolerance(None, 0.06, False),
    "q4_0": Tolerance(None, 0.15, False),
    "q4_1": Tolerance(None, 0.15, False),
    # llama.cpp's quantizer (K-quants, i-quants), with or without an importance matrix
    "q6_k": Tolerance(None, 0.03, False),
    "q5_k_m": Tolerance(None, 0.06, False),
    "q5_k_s": Tolerance(None, 0.06, False),
    "q4_k_m": Tolerance(None, 0.12, False),
    "q4_k_s": Tolerance(None, 0.12, False),
    "iq4_xs": Tolerance(None, 0.12, False),
    "iq4_nl": Tolerance(None, 0.12, False),
    "q3_k_m": Tolerance(None, 0.35, False),
    "onnx-fp32": Tolerance(1e-4, 0.001, True),
    "onnx-int8": Tolerance(None, 0.03, False),
    # measured (GPTQ, blocks of 32, 4 × 512 WikiText-2): SmolLM2-135M dense +14.0%, Putri 0.5 +9.2%
    "onnx-int4": Tolerance(None, 0.20, False),
}
