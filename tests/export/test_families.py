"""Qwen2 / Qwen3 pruned with every method → save → reload → GGUF and ONNX, each verified in its own runtime
(f32: max|Δlogit| within 1e-3 of max|logit| and identical greedy tokens), or refused with the reason."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILY_SHAPES, family_checkpoint

from putri_export.data import load_calibration
from putri_export.errors import PutriError
from putri_export.export import ParityCheck, export_verified
from putri_export.model import load_model, save_checkpoint
from putri_export.prune import PruneSettings, prune_model
from putri_export.prune.settings import METHOD_NAMES

CHECK = ParityCheck(data="tinystories", seq_len=128, max_windows=1, prompt_tokens=64, new_tokens=8,
                    tokenization_docs=8)
# ONNX is one graph builder for every family: once per shape — Qwen2's q/k/v biases (putri), Qwen3's q/k norms with
# FLAP's o_proj/down_proj biases, untied Qwen3 (putri).
ONNX_CASES = {("qwen2.5-0.5b", "putri"), ("qwen3-0.6b", "flap"), ("qwen3-8b", "putri")}
# Why a family/method pair has no GGUF: the reason the exporter must give.
NO_GGUF = {("qwen3-8b", m): "untied Qwen3" for m in METHOD_NAMES} | {("qwen3-0.6b", "flap"): "FLAP's compensation"}


@pytest.fixture(scope="module")
def checkpoints(stories_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: family_checkpoint(name, stories_dir, root / name) for name in FAMILY_SHAPES}


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("name", list(FAMILY_SHAPES))
def test_pruned_family_model_exports_with_parity(checkpoints, name, method, tmp_path):
    model, tokenizer = load_model(checkpoints[name])
    calib = load_calibration(tokenizer, "tinystories:train", 4, 64)
    prune_model(model, calib, PruneSettings(method=method, sparsity=0.5, attn_samples=1, attn_len=32),
                progress=False)
    folder = save_checkpoint(model, tokenizer, tmp_path / "pruned", source_dir=checkpoints[name])
    reloaded, tokenizer = load_model(folder)
    ids = torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)

    for fmt, variant in (("gguf", "f32"), ("onnx", "none"))[: 2 if (name, method) in ONNX_CASES else 1]:
        out = tmp_path / ("m.gguf" if fmt == "gguf" else "m-onnx")
        if fmt == "gguf" and (name, method) in NO_GGUF:
            with pytest.raises(PutriError, match=NO_GGUF[(name, method)]):
                export_verified(reloaded, tokenizer, folder, out, fmt, variant, check=CHECK, threads=1,
                                progress=False)
            assert not out.exists()
            continue
        result = export_verified(reloaded, tokenizer, folder, out, fmt, variant, check=CHECK, threads=1,
                                 progress=False)
        assert result.written and out.exists(), result.parity.failures
        parity = result.parity
        assert parity.max_abs_logit_diff <= 1e-3 * parity.max_abs_logit
        assert parity.greedy_agreement == 1.0


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen3-0.6b"])
def test_qwen_pre_tokenizer_is_reproduced_by_llama_cpp(name, stories_dir, tmp_path):
    """A byte-level BPE with Qwen's split regex goes out as llama.cpp's ``qwen2`` pre-tokenizer: the parity
    check tokenizes real documents with both and compares them, then the logits."""
    import gguf

    folder = family_checkpoint(name, stories_dir, tmp_path / "dense", qwen_tokenizer=True)
    model, tokenizer = load_model(folder)
    out = tmp_path / "m.gguf"
    result = export_verified(model, tokenizer, folder, out, "gguf", "f32", check=CHECK, threads=1, progress=False)
    assert result.written, result.parity.failures
    assert result.parity.tokenization_docs > 0 and result.parity.tokenization_mismatches == 0
    field = gguf.GGUFReader(out).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2"
    # Where Qwen's split differs from GPT-2's: one digit per token, punctuation glued to the next word,
    # case-insensitive contractions, newlines.
    from putri_export.runtime.process import RuntimeProcess

    text = '"Hello," she said. "I\'M 1234 years old\'S!"\n\n  (Tim) 3.14\tend'
    with RuntimeProcess("llama.cpp", out, n_ctx=64) as runtime:
        assert runtime.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
