"""Parity of an exported artifact with the PyTorch model it came from, on real text, in its own runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .errors import PutriError


class Runtime(Protocol):
    def tokenize(self, text: str) -> list[int]: ...
    def logits(self, tokens: list[int]) -> np.ndarray: ...
    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]: ...


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
    "onnx-fp32": Tolerance(1e-4, 0.001, True),
    "onnx-int8": Tolerance(None, 0.03, False),
    "onnx-int4": Tolerance(None, 0.20, False),  # measured: SmolLM2-135M Putri-0.5 +15.5% (HQQ, blocks of 32)
}


@dataclass
class ParityReport:
    artifact: str
    against: str
    artifact_type: str
    data: str
    tokens_compared: int
    max_abs_logit_diff: float
    max_abs_logit: float
    rel_logit_diff: float
    decode_steps: int
    decode_max_abs_logit_diff: float
    greedy_agreement: float  # fraction of greedy tokens equal (position by position)
    tokenization_docs: int
    tokenization_mismatches: int
    ppl_runtime: float
    ppl_torch: float
    ppl_rel_diff: float
    ppl_windows: int
    seq_len: int
    tolerance: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}

    def summary(self) -> str:
        lines = [
            f"{self.artifact} ({self.artifact_type}) vs {self.against} on {self.data}",
            f"  logits over {self.tokens_compared} tokens: max|Δ| {self.max_abs_logit_diff:.3g} "
            f"(max|logit| {self.max_abs_logit:.3g}, relative {self.rel_logit_diff:.3g})",
            f"  {self.decode_steps} cached greedy steps: max|Δ| {self.decode_max_abs_logit_diff:.3g}, "
            f"tokens equal {self.greedy_agreement:.0%}",
            f"  tokenization: {self.tokenization_docs - self.tokenization_mismatches}/{self.tokenization_docs} "
            "documents identical to HF",
            f"  perplexity ({self.ppl_windows} × {self.seq_len}): runtime {self.ppl_runtime:.4f} | torch "
            f"{self.ppl_torch:.4f} | Δ {self.ppl_rel_diff:+.3%}",
            "  PASS" if self.passed else "  FAIL: " + "; ".join(self.failures),
        ]
        return "\n".join(lines)


def compare(runtime: Runtime, model, tokenizer, artifact: str, against: str, artifact_type: str,
            data: str = "wikitext2", seq_len: int = 512, max_windows: int = 4, prompt_tokens: int = 256,
            new_tokens: int = 32, tokenization_docs: int = 64, progress: bool = True,
            sentencepiece_reference: bool = True) -> ParityReport:
    from .data import load_corpus
    from .evaluate import perplexity, tokenize_corpus, torch_logits_fn

    tol = TOLERANCES.get(artifact_type)
    if tol is None:
        raise PutriError(f"no parity tolerance defined for artifact type {artifact_type!r}")
    corpus = load_corpus(data)
    ids = tokenize_corpus(tokenizer, corpus)
    if ids.numel() < prompt_tokens + 1:
        raise PutriError(f"{data} has {ids.numel()} tokens, fewer than the {prompt_tokens} needed to compare")

    # Tokenization: the runtime must give the model's own tokenizer's ids for real documents.
    docs = corpus.documents[:tokenization_docs]
    reference = reference_tokenizer(Path(against) if sentencepiece_reference else None, tokenizer)
    mismatches = sum(runtime.tokenize(doc) != reference(doc) for doc in docs)

    # Full-sequence logits on real text.
    prompt = ids[:prompt_tokens]
    with torch.no_grad():
        ref = model(prompt[None], use_cache=False).logits[0].float().numpy()
    got = runtime.logits(prompt.tolist())
    max_diff = float(np.abs(got - ref).max())
    max_logit = float(np.abs(ref).max())

    # Cached greedy decoding, compared with a full forward over the runtime's own sequence
    # (so one early divergence does not hide how close the later steps are).
    gen, step_logits = runtime.greedy(prompt.tolist(), new_tokens)
    seq = torch.tensor(prompt.tolist() + gen)
    with torch.no_grad():
        full = model(seq[None], use_cache=False).logits[0, prompt_tokens - 1 : -1].float().numpy()
        torch_gen = model.generate(prompt[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=0)[0, prompt_tokens:].tolist()
    decode_diff = float(np.abs(step_logits - full).max())
    agreement = float(np.mean([a == b for a, b in zip(gen, torch_gen)]))

    def runtime_logits(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([runtime.logits(row.tolist()) for row in batch]))

    ppl_rt = perplexity(runtime_logits, ids, seq_len, max_windows, corpus=corpus, progress=progress)
    ppl_pt = perplexity(torch_logits_fn(model), ids, seq_len, max_windows, corpus=corpus, progress=progress)
    ppl_rel = ppl_rt.perplexity / ppl_pt.perplexity - 1

    failures = []
    if mismatches:
        failures.append(f"{mismatches}/{len(docs)} documents tokenize differently from HF")
    if tol.max_rel_logit_diff is not None and max_diff > tol.max_rel_logit_diff * max_logit:
        failures.append(f"max|Δlogit| {max_diff:.3g} > {tol.max_rel_logit_diff} × max|logit| {max_logit:.3g}")
    if tol.greedy_identical and gen != torch_gen:
        failures.append(f"greedy continuation differs ({agreement:.0%} of {new_tokens} tokens equal)")
    if abs(ppl_rel) > tol.max_ppl_rel_diff:
        failures.append(f"perplexity differs by {ppl_rel:+.2%} (allowed ±{tol.max_ppl_rel_diff:.1%})")
    return ParityReport(
        artifact=artifact, against=against, artifact_type=artifact_type, data=data,
        tokens_compared=prompt_tokens, max_abs_logit_diff=max_diff, max_abs_logit=max_logit,
        rel_logit_diff=max_diff / max_logit, decode_steps=new_tokens, decode_max_abs_logit_diff=decode_diff,
        greedy_agreement=agreement, tokenization_docs=len(docs), tokenization_mismatches=int(mismatches),
        ppl_runtime=ppl_rt.perplexity, ppl_torch=ppl_pt.perplexity, ppl_rel_diff=ppl_rel,
        ppl_windows=ppl_rt.windows, seq_len=seq_len, tolerance=asdict(tol), failures=failures,
    )


def reference_tokenizer(folder: Path | None, tokenizer) -> callable:
    """The tokenizer a runtime must reproduce: SentencePiece itself when the model ships ``tokenizer.model``.

    (HF's fast Metaspace pre-tokenizer drops SentencePiece's dummy-prefix space before text that already
    starts with a space — e.g. WikiText's " = Title = " lines — while SentencePiece and llama.cpp keep it.)
    Otherwise the HF tokenizer.
    """
    spm_file = Path(folder) / "tokenizer.model" if folder is not None else None
    if spm_file is not None and spm_file.is_file():
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
        return lambda text: processor.encode(text)
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def gguf_type_name(path: Path) -> str:
    """Our type name for a GGUF's ``general.file_type``."""
    import gguf

    from .export_gguf import GGUF_TYPES

    field_ = gguf.GGUFReader(path).fields.get("general.file_type")
    if field_ is None:
        raise PutriError(f"{path} has no general.file_type")
    value = int(field_.contents())
    for name, (_, file_type) in GGUF_TYPES.items():
        if int(file_type) == value:
            return name
    raise PutriError(f"{path}: file type {value} is not one putri-export writes")


def verify_gguf(path: Path, against: str | Path, data: str = "wikitext2", seq_len: int = 512,
                max_windows: int = 4, threads: int | None = None, progress: bool = True,
                loaded: tuple | None = None) -> ParityReport:
    """``loaded``: the (model, tokenizer) of ``against`` when the caller already holds them.
    llama.cpp runs in a child process (a crash there is a ``RuntimeCrashed`` error here)."""
    from .model import load_model
    from .runtime_llamacpp import check_gguf_file
    from .runtime_process import RuntimeProcess

    path = Path(path)
    check_gguf_file(path)  # before the PyTorch model is loaded
    type_name = gguf_type_name(path)
    with RuntimeProcess("llama.cpp", path, n_ctx=max(seq_len, 256 + 32), n_threads=threads) as runtime:
        model, tokenizer = loaded or load_model(against)
        return compare(runtime, model, tokenizer, str(path), str(against), type_name, data, seq_len, max_windows,
                       progress=progress)


def verify_onnx(folder: Path, against: str | Path, data: str = "wikitext2", seq_len: int = 512,
                max_windows: int = 4, threads: int | None = None, progress: bool = True,
                loaded: tuple | None = None) -> ParityReport:
    """``loaded``: the (model, tokenizer) of ``against`` when the caller already holds them.
    ONNX Runtime runs in a child process (a crash there is a ``RuntimeCrashed`` error here)."""
    from .model import load_model
    from .runtime_ort import check_onnx_folder
    from .runtime_process import RuntimeProcess

    quantization = check_onnx_folder(Path(folder))["quantization"]  # before the PyTorch model is loaded
    type_name = "onnx-fp32" if quantization == "none" else f"onnx-{quantization}"
    with RuntimeProcess("onnxruntime", folder, n_threads=threads) as runtime:
        model, tokenizer = loaded or load_model(against)
        # The ONNX folder ships the HF tokenizer files: HF is the reference there.
        return compare(runtime, model, tokenizer, str(folder), str(against), type_name, data, seq_len, max_windows,
                       progress=progress, sentencepiece_reference=False)


def verify_artifact(artifact: Path, against: str | Path, **kwargs) -> ParityReport:
    """GGUF file or ONNX folder, by what it is."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return verify_onnx(artifact, against, **kwargs)
    if artifact.suffix == ".gguf":
        return verify_gguf(artifact, against, **kwargs)
    raise PutriError(f"cannot verify {artifact}: expected a .gguf file or an exported ONNX folder")
