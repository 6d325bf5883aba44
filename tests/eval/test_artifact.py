"""``eval`` and ``info`` on an exported artifact, in its own runtime and without the source model: the same
perplexity as the export's parity check measured on the same windows, and the widths the artifact holds."""

from __future__ import annotations

import json
import re

import pytest
from helpers import family_checkpoint, run_cli

from putri_export.export import ParityCheck, export_verified
from putri_export.model import load_model, save_checkpoint, slice_randomly

CHECK = ParityCheck(data="tinystories", seq_len=128, max_windows=3, prompt_tokens=64, new_tokens=4,
                    tokenization_docs=8)


@pytest.fixture(scope="module")
def exported(stories_dir, tmp_path_factory):
    """A pruned Qwen2-shaped model with a byte-level BPE tokenizer (llama.cpp's tokenization equals HF's), out to
    GGUF and ONNX int8, each with the perplexity its verification measured."""
    root = tmp_path_factory.mktemp("artifacts")
    model, tokenizer = load_model(family_checkpoint("qwen2.5-0.5b", stories_dir, root / "dense", qwen_tokenizer=True))
    slice_randomly(model, [2, 0, 1, 2], [608, 100, 0, 33], seed=0)
    folder = save_checkpoint(model, tokenizer, root / "pruned", source_dir=root / "dense")
    out = {}
    for fmt, variant, name in (("gguf", "q8_0", "m.gguf"), ("onnx", "int8", "m-onnx-int8")):
        result = export_verified(model, tokenizer, folder, root / name, fmt, variant, check=CHECK, threads=1,
                                 progress=False)
        assert result.written, result.parity.failures
        out[fmt] = (root / name, result.parity.ppl_runtime, model.config)
    return out


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_eval_of_an_artifact_equals_what_verify_measured(exported, fmt):
    path, verified_ppl, _ = exported[fmt]
    proc = run_cli("eval", str(path), "--data", CHECK.data, "--seq-len", str(CHECK.seq_len), "--max-windows",
                   str(CHECK.max_windows), "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ppl = float(re.search(r"perplexity ([0-9.]+)", proc.stdout).group(1))
    # eval scores each token in the runtime's child (float32 log-softmax in numpy), verify in the parent (torch): the
    # same windows and logits, so the same perplexity up to float32 rounding (this random slice's is ~8e8)
    assert ppl == pytest.approx(verified_ppl, rel=1e-5)


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_info_of_an_artifact_lists_its_widths(exported, fmt):
    path, _, config = exported[fmt]
    info = json.loads(run_cli("info", str(path), "--json").stdout)
    # As written: deci has no attention-free layer 0 issue here (layer 0 attends) but gives layer 2 (attention,
    # no FFN) its placeholder FFN of 32 neurons.
    expected_ffn = list(config.intermediate_size_per_layer)
    if fmt == "gguf":
        assert info["arch"] == "deci"
        expected_ffn[2] = 32
    assert info["heads"] == list(config.num_attention_heads_per_layer)
    assert info["kv_heads"] == list(config.num_key_value_heads_per_layer)
    assert info["ffn"] == expected_ffn
    text = run_cli("info", str(path)).stdout
    assert "widths as written" in text and len(text.strip().splitlines()) == 2 + config.num_hidden_layers
