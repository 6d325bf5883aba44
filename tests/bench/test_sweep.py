"""The deploy benchmark harness at tiny sizes: every backend, valid outputs, clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import assert_one_clear_error, run_cli

from putri_export.bench import kv_bytes_per_token, merge, model_facts, run_sweep
from putri_export.export.gguf import write_gguf
from putri_export.export.onnx import write_onnx
from putri_export.model import load_model, save_checkpoint, slice_randomly

# Dense stories260K and a pruned-shape copy (layer 0 without attention, one layer without FFN).
SLICE = ([0, 2, 3, 1, 4], [100, 50, 0, 172, 31])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, stories_dir):
    root = tmp_path_factory.mktemp("bench")
    out = {"torch": [], "onnxruntime": [], "llama.cpp": []}
    for name, shape in (("dense", None), ("sliced", SLICE)):
        model, tok = load_model(stories_dir)
        if shape:
            slice_randomly(model, *shape, seed=3)
        folder = save_checkpoint(model, tok, root / name, source_dir=stories_dir)
        with torch.no_grad():
            write_gguf(model, folder, root / f"{name}.gguf", "f16")
        write_onnx(model, folder, root / f"{name}-onnx")
        out["torch"].append(str(folder))
        out["onnxruntime"].append(str(root / f"{name}-onnx"))
        out["llama.cpp"].append(str(root / f"{name}.gguf"))
    return out


def test_kv_bytes_per_token_follows_per_layer_heads():
    assert kv_bytes_per_token([0, 2, 3], head_dim=8, dtype_bytes=2) == 2 * (0 + 2 + 3) * 8 * 2


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "llama.cpp"])
def test_every_backend_writes_json_csv_markdown_png(artifacts, tmp_path, backend):
    out = tmp_path / backend
    report = run_sweep(artifacts[backend], backend, threads=1, prompt_tokens=16, gen_tokens=4, depths=[0, 32],
                       repeats=2, out=out, device_label="ci", progress=False)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["device_label"] == "ci" and len(saved["results"]) == 4
    for r in saved["results"]:
        assert r["decode_tps"]["n"] == 2 and r["decode_tps"]["median"] > 0 and r["prefill_tps"]["median"] > 0
        assert r["ttft_s"]["median"] > 0 and r["peak_rss_mb"] > 0 and r["load_s"] > 0
        if backend != "llama.cpp":  # the formula is cross-checked against the runtime's own cache tensors
            assert r["kv_formula_matches_runtime"], r
    dense, sliced = saved["models"]
    assert sliced["kv_bytes_per_token"] < dense["kv_bytes_per_token"]
    assert [c["depth"] for c in saved["comparison"]] == [0, 32]
    assert all(c["bytes_ratio_limit"] > 1 for c in saved["comparison"])
    for c in saved["comparison"]:  # weights + the KV cache read per decoded token (mean length 16 + 2 + depth)
        cached = c["depth"] + 16 + 2
        assert c["depth_bytes_limit"] == pytest.approx(
            (dense["weight_bytes"] + dense["kv_bytes_per_token"] * cached)
            / (sliced["weight_bytes"] + sliced["kv_bytes_per_token"] * cached))
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["backend"] == backend
    assert (out / "bench.png").stat().st_size > 1000
    table = (out / "bench.md").read_text()
    assert "bytes-ratio limit" in table and "depth-aware limit" in table
    merged = merge([out / "bench.json", out / "bench.json"], tmp_path / "merged.md")
    assert merged.read_text().count("## Benchmark:") == 2
    assert report["results"] == saved["results"]


def test_model_facts_agree_across_formats(artifacts):
    facts = [model_facts(artifacts[b][1], b) for b in ("torch", "onnxruntime", "llama.cpp")]
    assert all(f["kv_heads"] == SLICE[0] for f in facts)
    assert {f["head_dim"] for f in facts} == {8}


def test_unknown_backend(artifacts, tmp_path):
    proc = run_cli("bench", artifacts["torch"][0], "--backend", "tensorrt", "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, "unknown backend 'tensorrt'", "llama.cpp, onnxruntime, torch")


def test_depth_beyond_context(artifacts, tmp_path):
    proc = run_cli("bench", artifacts["onnxruntime"][0], "--backend", "onnxruntime", "--depths", "0,1024",
                   "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, "exceeds the context", "512")


def test_wrong_artifact_for_backend(artifacts, tmp_path):
    proc = run_cli("bench", artifacts["torch"][0], "--backend", "llama.cpp", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("bench", artifacts["llama.cpp"][0], "--backend", "torch", "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, "no config.json")


def test_bad_depths(artifacts, tmp_path):
    proc = run_cli("bench", artifacts["torch"][0], "--backend", "torch", "--depths", "0,abc",
                   "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, "--depths takes comma-separated integers")
