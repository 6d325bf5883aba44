"""Parity of an exported artifact with the PyTorch model it came from, on real text, in its own runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import PutriError
from .checks import TOLERANCES, ParityCheck


class Runtime(Protocol):
    def tokenize(self, text: str) -> list[int]: ...
    def logits(self, tokens: list[int]) -> np.ndarray: ...
    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]: ...


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


@dataclass
class Reference:
    """The PyTorch side of a check: the model, its tokenizer, the folder it came from, and (a streamed model) its
    block store: then every forward streams the blocks one at a time (memory: one block), greedy decoding is one
    full forward per new token (no cache), and perplexity scores every window in one pass over the blocks."""

    model: torch.nn.Module
    tokenizer: object
    folder: Path
    blocks: object | None = None  # model.blocks.BlockStore

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] (fp32, CPU) of token windows ``ids`` [B, T]."""
        if self.blocks is None:
            device = self.model.model.embed_tokens.weight.device
            with torch.no_grad():
                return self.model(ids.to(device), use_cache=False).logits.float().cpu()
        from ..prune.stream import BlockRunner, sequential

        runner = BlockRunner(self.model, ids.shape[0], self.blocks)
        return runner.logits(sequential(runner, runner.embed(ids), progress=False)).cpu()

    def greedy(self, prompt: torch.Tensor, new_tokens: int) -> list[int]:
        if self.blocks is None:
            device = self.model.model.embed_tokens.weight.device
            with torch.no_grad():
                out = self.model.generate(prompt[None].to(device), max_new_tokens=new_tokens,
                                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            return out[0, len(prompt):].tolist()
        seq = prompt.tolist()
        for _ in range(new_tokens):
            seq.append(int(self.logits(torch.tensor([seq]))[0, -1].argmax()))
        return seq[len(prompt):]

    def perplexity(self, ids: torch.Tensor, check: ParityCheck, corpus, progress: bool):
        from ..eval.perplexity import model_perplexity

        return model_perplexity(self.model, ids, check.seq_len, check.max_windows, corpus=corpus, progress=progress,
                                blocks=self.blocks)

    def tokenizer_for(self, runtime_kind: str):
        """The tokenization a runtime must reproduce. llama.cpp: SentencePiece itself when the model ships
        ``tokenizer.model`` (HF's fast Metaspace pre-tokenizer drops SentencePiece's dummy-prefix space before
        text that already starts with a space, e.g. WikiText's " = Title = " lines; SentencePiece and llama.cpp
        keep it). Otherwise, and for ONNX folders (which ship the HF tokenizer files), the HF tokenizer."""
        spm_file = Path(self.folder) / "tokenizer.model"
        if runtime_kind == "llama.cpp" and spm_file.is_file():
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
            return lambda text: processor.encode(text)
        return lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _tokenization_mismatches(runtime: Runtime, encode, docs: list[str]) -> int:
    return sum(runtime.tokenize(doc) != encode(doc) for doc in docs)


def _prompt_logits(runtime: Runtime, reference: Reference, prompt: torch.Tensor) -> tuple[float, float]:
    """max|Δlogit| and max|logit| over one prompt evaluated from an empty cache."""
    ref = reference.logits(prompt[None])[0].numpy()
    got = runtime.logits(prompt.tolist())
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


def _greedy(runtime: Runtime, reference: Reference, prompt: torch.Tensor, new_tokens: int
            ) -> tuple[float, float, bool]:
    """Cached greedy decoding in the runtime vs PyTorch: the largest step-logit difference (against a full
    forward over the runtime's own sequence, so one early divergence does not hide how close the later steps
    are), the fraction of equal tokens, and whether the continuations are identical."""
    gen, step_logits = runtime.greedy(prompt.tolist(), new_tokens)
    seq = torch.tensor(prompt.tolist() + gen)
    full = reference.logits(seq[None])[0, len(prompt) - 1: -1].numpy()
    torch_gen = reference.greedy(prompt, new_tokens)
    agreement = float(np.mean([a == b for a, b in zip(gen, torch_gen)]))
    return float(np.abs(step_logits - full).max()), agreement, gen == torch_gen


def compare(runtime: Runtime, runtime_kind: str, reference: Reference, artifact: str, artifact_type: str,
            check: ParityCheck, progress: bool = True) -> ParityReport:
    """Run ``check`` on an artifact open in ``runtime`` against ``reference``; judge it by ``TOLERANCES``."""
    from ..data import load_corpus, tokenize_corpus
    from ..eval import perplexity, runtime_logits_fn

    tol = TOLERANCES.get(artifact_type)
    if tol is None:
        raise PutriError(f"no parity tolerance defined for artifact type {artifact_type!r}")
    corpus = load_corpus(check.data)
    ids = tokenize_corpus(reference.tokenizer, corpus)
    if ids.numel() < check.prompt_tokens + 1:
        raise PutriError(f"{check.data} has {ids.numel()} tokens, fewer than the {check.prompt_tokens} needed to "
                         "compare")
    docs = corpus.documents[: check.tokenization_docs]
    mismatches = _tokenization_mismatches(runtime, reference.tokenizer_for(runtime_kind), docs)
    prompt = ids[: check.prompt_tokens]
    max_diff, max_logit = _prompt_logits(runtime, reference, prompt)
    decode_diff, agreement, identical = _greedy(runtime, reference, prompt, check.new_tokens)
    ppl_rt = perplexity(runtime_logits_fn(runtime), ids, check.seq_len, check.max_windows, corpus=corpus,
                        progress=progress)
    ppl_pt = reference.perplexity(ids, check, corpus, progress)
    ppl_rel = ppl_rt.perplexity / ppl_pt.perplexity - 1

    failures = []
    if mismatches:
        failures.append(f"{mismatches}/{len(docs)} documents tokenize differently from HF")
    if tol.max_rel_logit_diff is not None and max_diff > tol.max_rel_logit_diff * max_logit:
        failures.append(f"max|Δlogit| {max_diff:.3g} > {tol.max_rel_logit_diff} × max|logit| {max_logit:.3g}")
    if tol.greedy_identical and not identical:
        failures.append(f"greedy continuation differs ({agreement:.0%} of {check.new_tokens} tokens equal)")
    if abs(ppl_rel) > tol.max_ppl_rel_diff:
        failures.append(f"perplexity differs by {ppl_rel:+.2%} (allowed ±{tol.max_ppl_rel_diff:.1%})")
    return ParityReport(
        artifact=artifact, against=str(reference.folder), artifact_type=artifact_type, data=check.data,
        tokens_compared=check.prompt_tokens, max_abs_logit_diff=max_diff, max_abs_logit=max_logit,
        rel_logit_diff=max_diff / max_logit, decode_steps=check.new_tokens, decode_max_abs_logit_diff=decode_diff,
        greedy_agreement=agreement, tokenization_docs=len(docs), tokenization_mismatches=int(mismatches),
        ppl_runtime=ppl_rt.perplexity, ppl_torch=ppl_pt.perplexity, ppl_rel_diff=ppl_rel,
        ppl_windows=ppl_rt.windows, seq_len=check.seq_len, tolerance=asdict(tol), failures=failures,
    )


def gguf_type_name(path: Path) -> str:
    """Our type name for a GGUF's ``general.file_type``."""
    import gguf

    from .formats import ALL_GGUF_TYPES, gguf_file_type

    field_ = gguf.GGUFReader(path).fields.get("general.file_type")
    if field_ is None:
        raise PutriError(f"{path} has no general.file_type")
    value = int(field_.contents())
    for name in ALL_GGUF_TYPES:
        if int(gguf_file_type(name)) == value:
            return name
    raise PutriError(f"{path}: file type {value} is not one putri-export writes")


def onnx_type_name(quantization: str) -> str:
    return "onnx-fp32" if quantization == "none" else f"onnx-{quantization}"


def verify_artifact(artifact: Path, against: str | Path, check: ParityCheck | None = None, threads: int | None = None,
                    progress: bool = True, loaded: tuple | None = None, streaming: str = "auto") -> ParityReport:
    """A GGUF file (llama.cpp) or an exported ONNX folder (ONNX Runtime) against the HF model it came from.

    The runtime runs in a child process (a crash there is a ``RuntimeCrashed`` error here); the artifact is
    checked before the PyTorch model is loaded. ``loaded``: (model, tokenizer, block store or None) of
    ``against`` when the caller already holds them. Otherwise ``against`` is
    opened in fp32 on the CPU per ``streaming`` (auto: streamed when it would take over 40% of free memory)."""
    from ..compute import ComputeSettings
    from ..model.blocks import open_model
    from ..runtime.llamacpp import check_gguf_file
    from ..runtime.ort import check_onnx_folder
    from ..runtime.process import RuntimeProcess

    artifact, check = Path(artifact), check or ParityCheck()
    if artifact.is_dir():
        kind, type_name = "onnxruntime", onnx_type_name(check_onnx_folder(artifact)["quantization"])
    elif artifact.suffix == ".gguf":
        check_gguf_file(artifact)
        kind, type_name = "llama.cpp", gguf_type_name(artifact)
    else:
        raise PutriError(f"cannot verify {artifact}: expected a .gguf file or an exported ONNX folder")
    n_ctx = max(check.seq_len, check.prompt_tokens + check.new_tokens)
    with RuntimeProcess(kind, artifact, n_ctx=n_ctx, n_threads=threads) as runtime:
        if loaded is None:
            model, tokenizer, _, blocks = open_model(against, ComputeSettings(device="cpu", streaming=streaming))
        else:
            model, tokenizer, blocks = loaded
        return compare(runtime, kind, Reference(model, tokenizer, Path(against), blocks), str(artifact), type_name,
                       check, progress=progress)
