"""``putri-export run``: the whole job on stories260K, recipes, resume, refusal of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import assert_one_clear_error, cli, run_cli, tiny_recipe

from putri_export.data import RAW_CALIBRATION
from putri_export.errors import PutriError
from putri_export.run import Recipe, run_pipeline
from putri_export.run.recipe import DEFAULT_RECONSTRUCT_EPOCHS


def test_run_writes_verified_artifacts_and_a_report(stories_dir, tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "--recipe", str(_recipe_file(tmp_path, tiny_recipe(stories_dir))), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    names = sorted(a["path"] for a in report["artifacts"])
    assert names == ["artifacts/dense-f32.gguf", "artifacts/dense-onnx-none", "artifacts/pruned-f32.gguf",
                     "artifacts/pruned-onnx-none"]
    assert all(a["parity"]["passed"] for a in report["artifacts"])
    assert all((out / a["path"]).exists() for a in report["artifacts"])
    assert abs(report["prune"]["sparsity_blocks"] - 0.5) < 0.02
    # run's default route: the paper preset + reconstruction (on --calib: the recipe names its own)
    assert report["prune"]["reconstruct_epochs"] == DEFAULT_RECONSTRUCT_EPOCHS
    assert report["prune"]["reconstruct_calib"] is None
    assert len(json.loads((out / "model" / "pruning_report.json").read_text())["details"]["reconstruction"]) == 5
    # every artifact's perplexity equals its PyTorch model's (f32 paths) on the same windows
    quality = {(q["artifact"], q["which"]): q for q in report["quality"]}
    for which in ("dense", "pruned"):
        torch_ppl = quality[("torch fp32", which)]["tinystories"]
        assert quality[("ONNX fp32", which)]["tinystories"] == pytest.approx(torch_ppl, rel=1e-3)
        assert quality[("GGUF f32", which)]["tinystories"] == pytest.approx(torch_ppl, rel=5e-3)
    assert quality[("torch fp32", "pruned")]["tinystories"] > quality[("torch fp32", "dense")]["tinystories"]
    assert set(report["bench"]) == {"torch-fp32", "gguf-f32", "onnx-none"}
    md = (out / "report.md").read_text()
    for needle in (f"Method putri + block reconstruction ({DEFAULT_RECONSTRUCT_EPOCHS} epochs)", "## Quality",
                   "## Speed and memory",
                   "bytes-ratio limit", "putri-export serve artifacts/pruned-f32.gguf",
                   "d = 'artifacts/pruned-onnx-none'"):
        assert needle in md
    # the report's ONNX Runtime snippet runs as written, from the run folder, and decodes what the model does
    snippet = md.split("ONNX Runtime alone")[1].split("```python\n")[1].split("```")[0]
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from putri_export.model import load_model

    model, tok = load_model(out / "model")
    prompt = tok("Once upon a time", return_tensors="pt").input_ids
    expected = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert proc.stdout.strip() == tok.decode(expected[0, prompt.shape[1]:]).strip()
    assert (out / "widths.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "model" / "pruning_report.json").is_file()
    assert not list(tmp_path.glob(".run.running*"))  # the staging folder became --out


def test_run_recover_exports_the_recovered_model(stories_dir, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(stories_dir, formats=["onnx"], bench=False, reconstruct_epochs=1, reconstruct_lr=2e-3,
                         reconstruct_batch=4, recover=True,
                         recover_options={"data": "tinystories:train", "windows": 16, "seq_len": 128,
                                          "tokens": 16 * 128, "lr": 1e-3, "eval_windows": 2})
    report = run_pipeline(recipe, out)
    rec = report["prune"]["recovery"]
    assert rec["steps"] == 4 and rec["held_out_kl_after"] < rec["held_out_kl_before"]
    assert all(a["parity"]["passed"] for a in report["artifacts"])
    assert (out / "model" / "recovery_report.json").is_file()  # model/ is what was exported
    pruning = json.loads((out / "model-pruned" / "pruning_report.json").read_text())
    assert pruning["settings"]["reconstruct_epochs"] == 1 and pruning["details"]["reconstruction"]
    settings = pruning["settings"]  # run hands its reconstruction settings to prune
    assert (settings["reconstruct_lr"], settings["reconstruct_batch"]) == (2e-3, 4)
    assert "Recovered by distillation" in (out / "report.md").read_text()
    with pytest.raises(PutriError, match="unknown recover option"):
        tiny_recipe(stories_dir, recover=True, recover_options={"epochs": 3}).check()
    with pytest.raises(PutriError, match="evaluation split"):
        run_pipeline(tiny_recipe(stories_dir, recover=True, recover_options={"data": "wikitext2"}), tmp_path / "x")


def _recipe_file(tmp_path, recipe: Recipe, suffix: str = ".json"):
    from dataclasses import asdict

    path = tmp_path / f"recipe{suffix}"
    data = asdict(recipe)
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in data.items()}))
    return path


def test_recipes_read_json_and_yaml_and_flags_win(stories_dir, tmp_path):
    recipe = tiny_recipe(stories_dir)
    for suffix in (".json", ".yaml"):
        loaded = Recipe.from_file(_recipe_file(tmp_path, recipe, suffix), {"sparsity": 0.3})
        assert loaded.sparsity == 0.3 and loaded.gguf_types == ["f32"] and loaded.calib_len == 128
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sparsity": 0.5, "gguf_typ": ["q8_0"]}))
    with pytest.raises(PutriError, match="unknown key.*gguf_typ.*accepted"):
        Recipe.from_file(bad, {})


def test_interrupted_run_leaves_no_output_and_resumes_without_redoing_steps(stories_dir, tmp_path, monkeypatch):
    import putri_export.run.pipeline as pipeline

    out = tmp_path / "run"
    recipe = tiny_recipe(stories_dir, formats=["onnx"], bench=False)
    real_quality = pipeline._quality

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_quality", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, out)
    assert not out.exists()
    state = json.loads((tmp_path / ".run.running" / "run_state.json").read_text())
    assert {"prune", "export:dense-onnx-none", "export:pruned-onnx-none"} <= set(state["progress"])

    def must_not_run(*a, **k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(pipeline, "_quality", real_quality)
    monkeypatch.setattr(pipeline, "_prune", must_not_run)
    monkeypatch.setattr(pipeline, "_export", must_not_run)
    report = run_pipeline(recipe, out, resume=True)
    assert out.is_dir() and report["quality"]
    with pytest.raises(PutriError, match="holds the progress of another run"):
        (tmp_path / ".run.running").mkdir()
        (tmp_path / ".run.running" / "run_state.json").write_text(json.dumps({"key": "x", "progress": {}}))
        run_pipeline(recipe, out, overwrite=True, resume=True)


def test_run_reconstructs_by_default_unless_streamed_or_told():
    assert Recipe().reconstruction_epochs(streamed=False) == DEFAULT_RECONSTRUCT_EPOCHS > 0
    assert Recipe().reconstruction_epochs(streamed=True) == 0  # a streamed model holds no dense copy
    assert Recipe(reconstruct_epochs=0).reconstruction_epochs(streamed=False) == 0
    assert Recipe(reconstruct_epochs=3).reconstruction_epochs(streamed=True) == 3  # told: prune says if it cannot


def test_run_reconstructs_the_default_calibration_as_raw_text_and_other_text_as_given():
    """The default calibration's WikiText-2 is the tokenized split (literal <unk>): run's reconstruction reads the same
    corpora as raw text; a --calib or --reconstruct-calib of the user's is read as given, and a streamed model gets
    no text (no reconstruction)."""
    assert Recipe().run_reconstruction(streamed=False).reconstruct_calib == RAW_CALIBRATION
    assert Recipe(reconstruct_samples=128).run_reconstruction(streamed=False).reconstruct_calib == RAW_CALIBRATION
    assert Recipe(calib="c4").run_reconstruction(streamed=False).reconstruct_calib is None  # prune reads --calib
    assert Recipe(reconstruct_calib="c4").run_reconstruction(streamed=False).reconstruct_calib == "c4"
    streamed = Recipe().run_reconstruction(streamed=True)
    assert streamed.reconstruct_epochs == 0 and streamed.reconstruct_calib is None
    assert Recipe(reconstruct_epochs=0).run_reconstruction(streamed=False).reconstruct_calib is None


def test_run_search_starts_from_the_greedy_allocation_and_reconstructs(stories_dir, tmp_path):
    """``run --search --reconstruct-epochs``: the searched model's blocks are reconstructed (the route measured best on
    SmolLM2-135M, results/quality), and the search starts from the paper preset's widths."""
    from putri_export.run import pipeline

    search = {"iterations": 1, "generations": 1, "offspring": 4, "stage_samples": [2, 4], "stage_keep": [2, 1],
              "top_k": 64}
    recipe = tiny_recipe(stories_dir, search=True, reconstruct_epochs=1, search_options=search,
                         reconstruct_calib="tinystories:train-2mib", reconstruct_samples=12)
    out = tmp_path / "model"
    info = pipeline._prune(recipe, stories_dir, out)
    report = json.loads((out / "search_report.json").read_text())
    assert report["start"]["source"] == "greedy"
    assert len(report["reconstruction"]) == 5
    # the reconstruction read its own text; the search its calibration
    assert report["reconstruction_calibration"]["samples"] == 12 and report["calibration"]["samples"] == 8
    assert [s["corpus"] for s in report["reconstruction_calibration"]["sources"]] == ["tinystories:train-2mib"]
    assert report["final_kl"]["after_reconstruction"] < report["final_kl"]["kl"]
    assert abs(info["sparsity_blocks"] - 0.5) < 0.02 and (out / "model.safetensors").is_file()


def test_run_refuses_bad_input_before_doing_work(stories_dir, tmp_path):
    exists = tmp_path / "exists"
    exists.mkdir()
    cases = [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--sparsity", "0.5", "--formats", "gguf,tflite"], "unknown format"),
        (["--sparsity", "0.5", "--gguf-types", "q3_k"], "unknown GGUF type"),
        (["--sparsity", "0.5", "--onnx-quantize", "fp8"], "unknown ONNX quantization"),
        (["--recipe", str(tmp_path / "missing.yaml")], "recipe not found"),
        (["--sparsity", "0.5", "--search", "--reconstruct-epochs", "-1"], "reconstruct-epochs must be >= 0"),
        (["--sparsity", "0.5", "--reconstruct-lr", "0"], "reconstruct-lr must be > 0, got 0.0"),
        (["--sparsity", "0.5", "--reconstruct-batch", "0"], "reconstruct-batch must be >= 1, got 0"),
        (["--sparsity", "0.5", "--recover", "--recover-minutes", "-1"], "max-minutes"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        result = cli("run", str(stories_dir), *extra, "--out", str(out))
        assert_one_clear_error(result, message)
        assert not out.exists()
    result = cli("run", str(stories_dir), "--sparsity", "0.5", "--out", str(exists))
    assert_one_clear_error(result, "exists; pass --overwrite")
