"""GGUF export: run by llama.cpp (llama-cpp-python) and compared with the PyTorch model on real text."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import gguf
import numpy as np
import pytest
import torch

from putri_export.errors import PutriError
from putri_export.export import ParityCheck, verify_artifact
from putri_export.export.gguf import permute_for_rope, write_gguf
from putri_export.model import load_model, save_checkpoint, slice_randomly

# (KV heads per layer, FFN width per layer) for stories260K (4 KV heads, FFN 172, 5 layers).
SHAPES = {
    "dense": None,
    # layer 0 without attention, layer 2 without FFN, layer 3 with one KV head
    "mixed": ([0, 2, 3, 1, 4], [100, 50, 0, 172, 31]),
    # last layer with attention but no FFN (llama.cpp's graph would crash), a fully empty layer
    "last_no_ffn": ([1, 0, 4, 2, 3], [172, 0, 64, 96, 0]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, stories_dir):
    """name -> (HF folder, {type: gguf path})."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for name, shape in SHAPES.items():
        model, tok = load_model(stories_dir)
        if shape:
            slice_randomly(model, *shape, seed=11)
        folder = save_checkpoint(model, tok, root / name, source_dir=stories_dir)
        files = {}
        for type_name in ("f32", "f16", "q8_0", "q4_0"):
            files[type_name] = root / f"{name}-{type_name}.gguf"
            write_gguf(model, stories_dir, files[type_name], type_name, progress=False)
        out[name] = (folder, files)
    return out


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("data", ["tinystories", "wikitext2"])
def test_f32_logits_and_greedy_match(exported, name, data):
    folder, files = exported[name]
    report = verify_artifact(files["f32"], folder, ParityCheck(data=data, max_windows=2), progress=False)
    assert report.tokens_compared >= 256
    assert report.max_abs_logit_diff <= 1e-3 * report.max_abs_logit, report.summary()
    assert report.decode_steps == 32 and report.greedy_agreement == 1.0, report.summary()
    assert report.decode_max_abs_logit_diff <= 1e-3 * report.max_abs_logit
    assert report.tokenization_mismatches == 0
    assert report.passed, report.summary()


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("type_name, allowed", [("f16", 0.01), ("q8_0", 0.02)])
def test_reduced_precision_perplexity(exported, name, type_name, allowed):
    folder, files = exported[name]
    report = verify_artifact(files[type_name], folder, ParityCheck(data="tinystories", max_windows=4), progress=False)
    assert abs(report.ppl_rel_diff) <= allowed, report.summary()
    assert report.passed


def test_4bit_runs_and_is_reported(exported):
    folder, files = exported["dense"]
    report = verify_artifact(files["q4_0"], folder, ParityCheck(data="tinystories", max_windows=4), progress=False)
    assert report.artifact_type == "q4_0"
    assert abs(report.ppl_rel_diff) <= report.tolerance["max_ppl_rel_diff"], report.summary()


def test_per_layer_widths_written_as_arrays(exported):
    _, files = exported["mixed"]
    reader = gguf.GGUFReader(files["f32"])
    assert reader.fields["general.architecture"].contents() == "deci"
    assert reader.fields["deci.attention.head_count_kv"].contents() == [0, 2, 3, 1, 4]
    # layer 0: linear-attention placeholder (heads > 0, kv 0); layer 2: placeholder FFN of 32.
    assert reader.fields["deci.attention.head_count"].contents() == [8, 4, 6, 2, 8]
    assert reader.fields["deci.feed_forward_length"].contents() == [100, 50, 32, 172, 31]
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight" not in names and "blk.0.attn_output.weight" in names
    assert "blk.3.attn_k.weight" in names


def test_a_mismatched_model_fails_verification(exported):
    _, files = exported["mixed"]
    dense_folder, _ = exported["dense"]
    report = verify_artifact(files["f32"], dense_folder, ParityCheck(data="tinystories", max_windows=1), progress=False)
    assert not report.passed and any("logit" in f for f in report.failures)


def test_hf_tokenizer_agrees_except_sentencepiece_leading_space(exported, stories):
    """The GGUF tokenizes like SentencePiece; HF's fast tokenizer agrees except on a leading space."""
    from putri_export.data import load_corpus
    from putri_export.runtime.process import RuntimeProcess

    _, files = exported["dense"]
    tokenizer = stories[1]
    space = tokenizer.convert_tokens_to_ids("▁")
    with RuntimeProcess("llama.cpp", files["f32"], n_ctx=64) as runtime:
        for corpus in ("tinystories", "wikitext2"):
            docs = load_corpus(corpus).documents[:200]
            for doc in docs:
                hf = tokenizer(doc, add_special_tokens=False)["input_ids"]
                if doc.startswith(" "):  # SentencePiece adds its dummy prefix "▁"; HF's Metaspace does not
                    assert runtime.tokenize(doc) == [space] + hf, doc[:80]
                else:
                    assert runtime.tokenize(doc) == hf, doc[:80]


def test_rope_permutation_is_an_interleave():
    # One head of dim 4: HF rows (r0, r1 | r2, r3) rotate pairs (r0, r2), (r1, r3); llama.cpp wants them adjacent.
    w = torch.arange(8.0).reshape(4, 2)
    assert permute_for_rope(w, 1)[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]


def test_failed_write_leaves_nothing(stories, stories_dir, tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    out = tmp_path / "m.gguf"
    with pytest.raises(OSError):
        write_gguf(stories[0], stories_dir, out, "f16", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_gguf_is_a_clear_error(exported, tmp_path):
    folder, files = exported["dense"]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(files["f16"].read_bytes()[:100_000])
    with pytest.raises(PutriError, match="truncated|not a readable GGUF"):
        verify_artifact(bad, folder, progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "putri_export.cli", *args], capture_output=True, text=True, env=env)


def test_cli_export_verifies_and_refuses_to_overwrite(exported, tmp_path):
    folder, _ = exported["mixed"]
    out = tmp_path / "m.gguf"
    proc = _cli("export", "gguf", str(folder), "--out", str(out), "--type", "f32", "--verify-data", "tinystories",
                "--verify-windows", "1", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and json.loads((tmp_path / "r.json").read_text())["passed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    again = _cli("export", "gguf", str(folder), "--out", str(out), "--no-verify")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    verify = _cli("verify", str(out), "--against", str(exported["dense"][0]), "--data", "tinystories",
                  "--max-windows", "1")
    assert verify.returncode == 1 and "FAIL" in verify.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_one_chat_completion(exported):
    _, files = exported["dense"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "putri_export.cli", "serve", str(files["f16"]), "--port", str(port),
                             "--n-ctx", "256"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 8,
                           "temperature": 0}).encode()
        deadline, answer = time.time() + 90, None
        while time.time() < deadline and answer is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                answer = json.load(urllib.request.urlopen(req, timeout=30))
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-2000:]
                time.sleep(0.5)
        assert answer is not None, "server did not answer"
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_smollm2_f16_parity_and_tokenizer(tmp_path):
    from putri_export.model.assets import ensure_builtin_model

    folder = ensure_builtin_model("smollm2-135m")
    model, _ = load_model(folder)
    out = tmp_path / "smol.gguf"
    write_gguf(model, folder, out, "f16", progress=False)
    reader = gguf.GGUFReader(out)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "tokenizer.chat_template" in reader.fields
    report = verify_artifact(out, folder, ParityCheck(data="wikitext2", max_windows=2), progress=False)
    assert report.tokenization_mismatches == 0
    assert abs(report.ppl_rel_diff) <= 0.01, report.summary()


@pytest.mark.parametrize("name", ["mixed", "last_no_ffn"])
def test_a_streamed_export_writes_the_same_tensors_and_verifies_against_a_streamed_reference(exported, name,
                                                                                                tmp_path):
    # Declared from the meta skeleton, then written block by block: every tensor (placeholders included) must be
    # byte-identical to the in-memory export, and the streamed PyTorch reference must pass the same parity check.
    from putri_export.compute import ComputeSettings
    from putri_export.model.blocks import open_model

    folder, files = exported[name]
    model, _, _, blocks = open_model(folder, ComputeSettings(device="cpu", streaming="on"))
    out = tmp_path / "streamed.gguf"
    report = write_gguf(model, folder, out, "q8_0", progress=False, blocks=blocks)
    assert all(p.is_meta for p in model.model.layers.parameters())  # every block closed again
    streamed, whole = gguf.GGUFReader(out), gguf.GGUFReader(files["q8_0"])
    assert [t.name for t in streamed.tensors] == [t.name for t in whole.tensors]
    for a, b in zip(streamed.tensors, whole.tensors):
        assert a.tensor_type == b.tensor_type and bytes(a.data) == bytes(b.data), a.name
    assert report.fallback_tensors == write_gguf(*load_model(folder)[:1], folder, tmp_path / "whole.gguf", "q8_0",
                                                 progress=False).fallback_tensors
    check = ParityCheck(data="tinystories", max_windows=2)
    streamed_ref = verify_artifact(out, folder, check, threads=1, progress=False, streaming="on")
    whole_ref = verify_artifact(out, folder, check, threads=1, progress=False, streaming="off")
    assert streamed_ref.passed and whole_ref.passed, streamed_ref.summary()
    assert streamed_ref.greedy_agreement == whole_ref.greedy_agreement  # the same reference tokens
    assert streamed_ref.ppl_torch == pytest.approx(whole_ref.ppl_torch, rel=1e-5)
    assert streamed_ref.max_abs_logit_diff == pytest.approx(whole_ref.max_abs_logit_diff, rel=1e-3, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# llama.cpp's quantizer: K-quants and i-quants, with an importance matrix


def test_q4_k_m_with_an_importance_matrix_verifies_and_the_matrix_changes_the_rounding(exported, tmp_path):
    # stories260K's rows (64, 172) are no multiple of the 256-value super-block: llama.cpp falls back per tensor,
    # and the report lists every tensor's final type.
    from putri_export.data import load_calibration
    from putri_export.export import export_verified
    from putri_export.export.gguf import importance_matrix, tensor_types

    folder, _ = exported["mixed"]
    model, tok = load_model(folder)
    calib = load_calibration(tok, "tinystories:train", 8, 256)
    imatrix = importance_matrix(model, calib.ids, progress=False)
    assert imatrix["model.layers.1.self_attn.q_proj"].shape == (64,)
    assert "model.layers.0.self_attn.q_proj" not in imatrix  # layer 0 has no attention
    assert imatrix["model.layers.0.mlp.down_proj"].shape == (100,) and (imatrix["lm_head"] > 0).all()
    check = ParityCheck(data="tinystories", max_windows=2)
    weighted = export_verified(model, tok, folder, tmp_path / "a.gguf", "gguf", "q4_k_m", check=check, threads=1,
                               progress=False, calibration=calib.ids)
    plain = export_verified(model, tok, folder, tmp_path / "b.gguf", "gguf", "q4_k_m", check=check, threads=1,
                            progress=False)
    assert weighted.written and plain.written, weighted.parity.summary()
    assert weighted.parity.artifact_type == "q4_k_m" and weighted.tensor_types == tensor_types(tmp_path / "a.gguf")
    assert weighted.tensor_types["blk.1.attn_q.weight"] == "Q5_0"  # 64-wide rows: Q4_K's fallback
    assert weighted.tensor_types["blk.0.ffn_down.weight"] == "F16"  # 100 is no multiple of 32
    a, b = gguf.GGUFReader(tmp_path / "a.gguf"), gguf.GGUFReader(tmp_path / "b.gguf")
    changed = {x.name for x, y in zip(a.tensors, b.tensors) if bytes(x.data) != bytes(y.data)}
    assert "blk.1.attn_q.weight" in changed and "blk.0.ffn_down.weight" not in changed  # F16 ignores the matrix


def test_k_quants_are_used_where_rows_hold_whole_super_blocks(stories_dir, tmp_path):
    from helpers import TOKENIZER_FILES
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    dense = tmp_path / "dense"
    AutoModelForCausalLM.from_config(config).save_pretrained(dense)
    for f in TOKENIZER_FILES:
        (dense / f).write_bytes((stories_dir / f).read_bytes())
    model, tok = load_model(dense)
    slice_randomly(model, [2, 1], [512, 320], seed=3)  # layer 1: FFN rows of 320 = 10 × 32, not 256
    report = write_gguf(model, dense, tmp_path / "m.gguf", "q4_k_m", progress=False, threads=1)
    types = report.tensor_types
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.ffn_gate.weight"] == "Q4_K"
    assert types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")  # the _M recipe widens some ffn_down
    assert types["blk.1.ffn_down.weight"] in ("Q5_0", "Q8_0")  # the fallbacks of Q4_K / Q6_K
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.file_type"].contents() == 15  # MOSTLY_Q4_K_M


def test_an_importance_matrix_needs_a_llama_cpp_type(exported, tmp_path):
    folder, files = exported["dense"]
    result = _cli("export", "gguf", str(folder), "--out", str(tmp_path / "x.gguf"), "--type", "q8_0",
                  "--imatrix-data", "tinystories:train")
    assert result.returncode != 0 and "q4_k_m" in result.stderr and not (tmp_path / "x.gguf").exists()


def test_a_streamed_model_gives_the_same_importance_matrix(exported):
    from putri_export.compute import ComputeSettings
    from putri_export.data import load_calibration
    from putri_export.export.gguf import importance_matrix
    from putri_export.model.blocks import open_model

    folder, _ = exported["last_no_ffn"]
    model, tok = load_model(folder)
    ids = load_calibration(tok, "tinystories:train", 4, 128).ids
    whole = importance_matrix(model, ids, progress=False)
    skeleton, _, _, blocks = open_model(folder, ComputeSettings(device="cpu", streaming="on"))
    streamed = importance_matrix(skeleton, ids, blocks, progress=False)
    assert whole.keys() == streamed.keys() and "model.layers.1.mlp.down_proj" not in whole  # layer 1: no FFN
    for name, values in whole.items():
        assert np.allclose(streamed[name], values, rtol=1e-5), name
