"""Pruning pipelines on the real stories260K: every method, reload, generate, resume, errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import assert_one_clear_error, cli, fresh_stories, run_cli

from putri_export.cli import main
from putri_export.data import load_calibration
from putri_export.errors import PutriError
from putri_export.model import load_model, param_counts
from putri_export.prune import PruneSettings, prune_model
from putri_export.prune.budget import split_budget
from putri_export.prune.stages import SliceEvaluator

CALIB = "tinystories:train"
SAMPLES, LENGTH = 8, 128


@pytest.fixture(scope="module")
def calib(stories):
    return load_calibration(stories[1], CALIB, SAMPLES, LENGTH)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_budget_split_follows_the_formula(stories):
    model = stories[0]
    b = split_budget(model, 0.5)
    # stories260K: P_attn 12,352, P_ffn 33,088, L 5: n_attn = round(5 * 0.5 ** (33088 / 12352 / 1.5)) = 1.
    assert (b.attn_layer_params, b.ffn_layer_params, b.n_attn, b.groups_per_layer) == (12352, 33088, 1, 4)
    r_ffn = (0.5 * 227200 - 12352) / (5 * 33088)
    assert b.ffn_keep == [round(172 * (1 - r_ffn))] * 5
    assert split_budget(model, 0.0).n_attn == 0 and split_budget(model, 0.0).ffn_keep == [172] * 5


def test_aligned_widths_are_multiples_and_never_exceed_the_unaligned_total():
    from putri_export.prune.budget import aligned_widths

    ideal = [100.4, 100.4, 100.4, 30.0]
    kept = aligned_widths(ideal, [172, 172, 172, 40], 32)
    assert all(k % 32 == 0 for k in kept) and sum(kept) <= sum(ideal) and sum(ideal) - sum(kept) < 32
    assert kept == [96, 96, 96, 32]  # 288 after rounding down; the spare 43.2 buys one 32 for the layer that lost 30
    assert aligned_widths([172.0, 172.0], [172, 172], 32) == [160, 160]  # rounded down under the full width
    assert aligned_widths([5.0, 7.0], [10, 10], 1) == [5, 7]


def test_putri_with_align_keeps_multiples_and_meets_the_target(stories_dir, calib):
    model = fresh_stories(stories_dir)
    report = prune_model(model, calib, PruneSettings(sparsity=0.5, align=32), progress=False)
    widths = model.config.intermediate_size_per_layer
    assert all(w % 32 == 0 for w in widths), widths
    # the target is met, short of it by less than one aligned chunk of FFN neurons (3 × hidden parameters each)
    assert report["sparsity_blocks"] >= 0.5
    assert (report["sparsity_blocks"] - 0.5) * report["dense_params_blocks"] < 32 * 3 * model.config.hidden_size


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_out_of_range(stories, bad):
    with pytest.raises(PutriError, match=r"sparsity must be in \[0, 1\)"):
        split_budget(stories[0], bad)


def test_infeasible_budget_is_refused(stories):
    # A huge alpha sends nearly every attention layer even at 10%: more than the whole target.
    with pytest.raises(PutriError, match="more than the whole target"):
        split_budget(stories[0], 0.1, alpha=100.0)


@pytest.mark.parametrize("method", ["putri", "putri-dense-fit", "2ssp", "shortgpt", "flap"])
def test_zero_sparsity_changes_nothing(stories_dir, calib, method):
    model = fresh_stories(stories_dir)
    before = _logits(model, calib.ids[:2])
    report = prune_model(model, calib, PruneSettings(method=method, sparsity=0.0), progress=False)
    assert report["params_blocks"] == report["dense_params_blocks"]
    torch.testing.assert_close(_logits(model, calib.ids[:2]), before, rtol=0, atol=1e-6)


# Achieved block sparsity must be the target within the method's granularity.
TOLERANCE = {"putri": 0.01, "putri-dense-fit": 0.01, "2ssp": 0.01, "flap": 0.01,
             "shortgpt": 0.1 + 1e-9}  # ShortGPT: half a block of 5


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
@pytest.mark.parametrize("method", ["putri", "putri-dense-fit", "2ssp", "shortgpt", "flap"])
def test_every_method_prunes_saves_reloads_and_generates(stories_dir, stories, calib, tmp_path, method, sparsity):
    out = tmp_path / f"{method}-{sparsity}"
    code = main(["prune", str(stories_dir), "--method", method, "--sparsity", str(sparsity), "--calib", CALIB,
                 "--calib-samples", str(SAMPLES), "--calib-len", str(LENGTH), "--out", str(out),
                 "--state-dir", str(tmp_path / "state")])
    assert code == 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["method"] == method and report["calibration"]["tokens"] == SAMPLES * LENGTH
    assert abs(report["sparsity_blocks"] - sparsity) <= TOLERANCE[method]
    assert not (tmp_path / "state").exists()  # cleaned after success
    model, tokenizer = load_model(out)
    counts = param_counts(model)
    assert counts.blocks == report["params_blocks"] < report["dense_params_blocks"]
    assert [w["ffn"] for w in report["widths"]] == model.config.intermediate_size_per_layer
    prompt = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + 12
    ids = calib.ids[:1]
    assert torch.isfinite(_logits(model, ids)).all()


@pytest.mark.parametrize("method", ["2ssp", "shortgpt", "flap"])
def test_dense_statistics_cache_gives_the_same_model(stories_dir, calib, method):
    cache: dict = {}
    prune_model(fresh_stories(stories_dir), calib, PruneSettings(method=method, sparsity=0.3), progress=False,
                dense_cache=cache)
    assert cache
    fresh, cached = fresh_stories(stories_dir), fresh_stories(stories_dir)
    prune_model(fresh, calib, PruneSettings(method=method, sparsity=0.6), progress=False)
    prune_model(cached, calib, PruneSettings(method=method, sparsity=0.6), progress=False, dense_cache=cache)
    assert fresh.config.to_dict() == cached.config.to_dict()
    for (name, a), (_, b) in zip(fresh.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name


def test_putri_beats_unpruned_slicing_on_held_out_text(stories_dir, calib, tinystories_ids):
    """The least-squares update must help: same kept neurons, with vs without update."""
    from putri_export.eval import perplexity, torch_logits_fn

    results = {}
    for update in (True, False):
        model = fresh_stories(stories_dir)
        prune_model(model, calib, PruneSettings(sparsity=0.3, update=update), progress=False)
        results[update] = perplexity(torch_logits_fn(model), tinystories_ids, 256, max_windows=8).perplexity
    assert results[True] < results[False]


def test_dense_fit_preset_beats_the_paper_preset_on_held_out_text(stories_dir, stories, tinystories_ids):
    """putri-dense-fit (dense-target least squares, OBS rounds, final FFN refit, whole-window head scoring) against
    putri (the paper's algorithm), same budget and calibration (64 × 256: the dense-target fit needs more tokens
    than the other tests' 8 × 128, on which it overfits), perplexity on held-out TinyStories validation.
    Measured: putri 32.96, 16 OBS rounds 29.71, putri-dense-fit 28.44."""
    from putri_export.eval import perplexity, torch_logits_fn

    calib = load_calibration(stories[1], CALIB, 64, 256)
    results = {}
    for name, settings in {"putri": PruneSettings(sparsity=0.5),
                           "rounds": PruneSettings(sparsity=0.5, obs_rounds=16),
                           "putri-dense-fit": PruneSettings(method="putri-dense-fit", sparsity=0.5)}.items():
        model = fresh_stories(stories_dir)
        report = prune_model(model, calib, settings, progress=False)
        results[name] = perplexity(torch_logits_fn(model), tinystories_ids, 256, max_windows=32).perplexity
        if name == "putri-dense-fit":
            assert report["details"]["preset"] == {"obs_rounds": 16, "fit_target": "dense", "final_refit": True,
                                                   "attn_len": 512}
            refits = [e for e in report["details"]["attention"] if e["refit"]]
            assert refits and all(e["fit_target"] == "dense" for e in refits)
            assert len(report["details"]["final_refit"]) == 5
    assert results["putri-dense-fit"] < 0.95 * results["putri"] and results["rounds"] < results["putri"], results


def test_block_reconstruction_lowers_each_blocks_error_and_the_perplexity(stories_dir, stories, tinystories_ids):
    """Measured (64 × 256 calibration, 32 held-out windows): putri-dense-fit 28.44; + 8 epochs of block
    reconstruction at lr 1e-3, 8 windows per step: 16.62. The same passes in steps of 2 windows reach a lower mean
    block error and perplexity."""
    from putri_export.eval import perplexity, torch_logits_fn
    from putri_export.prune.stages import mean_block_errors

    calib = load_calibration(stories[1], CALIB, 64, 256)
    results, errors = {}, {}
    for epochs, batch in ((0, 8), (4, 8), (4, 2)):
        model = fresh_stories(stories_dir)
        report = prune_model(model, calib, PruneSettings(method="putri-dense-fit", sparsity=0.5,
                                                         reconstruct_epochs=epochs, reconstruct_lr=1e-3,
                                                         reconstruct_batch=batch), progress=False)
        results[epochs, batch] = perplexity(torch_logits_fn(model), tinystories_ids, 256, max_windows=32).perplexity
        log = report["details"]["reconstruction"]
        assert len(log) == (5 if epochs else 0)
        assert all(e["relative_error_after"] < e["relative_error_before"] for e in log)
        if epochs:
            errors[batch] = mean_block_errors(log)["after"]
    assert results[4, 8] < 0.9 * results[0, 8], results
    assert errors[2] < errors[8] and results[4, 2] < results[4, 8], (errors, results)


def test_block_reconstruction_trains_on_its_own_text_when_one_is_named(stories_dir, stories, calib):
    """``--reconstruct-calib`` / ``--reconstruct-samples``: the pruning reads its calibration as before, the
    reconstruction reads the named windows (recorded in the report), and they change what it learns."""
    settings = {"sparsity": 0.5, "reconstruct_epochs": 1}
    named = {"reconstruct_calib": "tinystories:train-2mib", "reconstruct_samples": 2 * SAMPLES}
    text = PruneSettings(**settings, **named).load_reconstruction_text(stories[1], CALIB, SAMPLES, LENGTH)
    assert text.ids.shape == (2 * SAMPLES, LENGTH)  # the 2 MiB head starts where tinystories:train does: 8 more
    assert PruneSettings(**settings).load_reconstruction_text(stories[1], CALIB, SAMPLES, LENGTH) is None
    models, reports = [], []
    for extra, loaded in (({}, None), (named, text)):
        model = fresh_stories(stories_dir)
        reports.append(prune_model(model, calib, PruneSettings(**settings, **extra), progress=False,
                                   reconstruct_calib=loaded))
        models.append(model)
    assert "reconstruction_calibration" not in reports[0]
    assert reports[1]["reconstruction_calibration"] == text.provenance()
    assert reports[0]["widths"] == reports[1]["widths"]  # the same pruning
    for report in reports:
        log = report["details"]["reconstruction"]
        assert len(log) == 5 and all(e["relative_error_after"] < e["relative_error_before"] for e in log)
    ids = calib.ids[:2]
    assert not torch.allclose(_logits(models[0], ids), _logits(models[1], ids))
    with pytest.raises(PutriError, match="pass it loaded as reconstruct_calib"):
        prune_model(fresh_stories(stories_dir), calib, PruneSettings(**settings, **named), progress=False)


@pytest.mark.parametrize("settings, needle", [
    ({"reconstruct_calib": "tinystories:train-2mib"}, "give --reconstruct-epochs N"),
    ({"reconstruct_samples": 128}, "give --reconstruct-epochs N"),
    ({"reconstruct_epochs": 2, "reconstruct_samples": 0}, "reconstruct-samples must be >= 1"),
    ({"reconstruct_epochs": 2, "reconstruct_calib": "tinystories:train*0"}, "accepted: SPEC or SPEC*N"),
    ({"method": "2ssp", "reconstruct_epochs": 2}, "a stage of the Putri methods"),
    ({"reconstruct_epochs": -1}, "reconstruct-epochs must be >= 0, got -1"),
    ({"reconstruct_epochs": 2, "reconstruct_lr": 0.0}, "reconstruct-lr must be > 0, got 0.0"),
    ({"reconstruct_epochs": 2, "reconstruct_batch": 0}, "reconstruct-batch must be >= 1, got 0"),
])
def test_malformed_reconstruction_settings_are_refused(settings, needle):
    from putri_export.search import SearchSettings

    with pytest.raises(PutriError, match=re.escape(needle)):
        PruneSettings(sparsity=0.5, **settings).check()
    if "method" not in settings:
        with pytest.raises(PutriError, match=re.escape(needle)):
            SearchSettings(sparsity=0.5, **settings).check(64)


def test_a_final_refit_needs_the_dense_target():
    with pytest.raises(PutriError, match="needs --fit-target dense"):
        PruneSettings(final_refit=True).check()
    PruneSettings(method="putri-dense-fit").check()
    with pytest.raises(PutriError, match="needs --fit-target dense"):
        PruneSettings(method="putri-dense-fit", fit_target="local").check()


def test_flap_bias_survives_save_and_reload(stories_dir, calib, tmp_path):
    model = fresh_stories(stories_dir)
    report = prune_model(model, calib, PruneSettings(method="flap", sparsity=0.5), progress=False)
    biases = [layer.mlp.down_proj.bias for layer in model.model.layers if layer.mlp is not None]
    assert biases and any(b.abs().max() > 0 for b in biases)
    assert report["details"]["slice_loss_as_saved"] >= 0
    from putri_export.model import save_checkpoint

    save_checkpoint(model, load_model(stories_dir)[1], tmp_path / "flap")
    reloaded, _ = load_model(tmp_path / "flap")
    assert reloaded.config.output_projection_bias
    assert torch.equal(_logits(model, calib.ids[:2]), _logits(reloaded, calib.ids[:2]))


def test_flap_model_exports_with_its_biases(stories_dir, calib, tmp_path):
    from putri_export.export import ParityCheck, verify_artifact
    from putri_export.export.gguf import write_gguf
    from putri_export.export.onnx import write_onnx
    from putri_export.model import save_checkpoint

    model = fresh_stories(stories_dir)
    prune_model(model, calib, PruneSettings(method="flap", sparsity=0.5), progress=False)
    folder = save_checkpoint(model, load_model(stories_dir)[1], tmp_path / "flap", source_dir=stories_dir)
    with torch.no_grad():
        write_gguf(model, folder, tmp_path / "flap.gguf", "f32")
    write_onnx(model, folder, tmp_path / "flap-onnx")
    check = ParityCheck(data="tinystories", max_windows=2)
    for artifact in (tmp_path / "flap.gguf", tmp_path / "flap-onnx"):
        report = verify_artifact(artifact, folder, check, progress=False)
        assert report.passed and report.max_abs_logit_diff <= 1e-4 * report.max_abs_logit, report.summary()


def test_interrupted_putri_resumes_to_the_same_model(stories_dir, calib, tmp_path, monkeypatch):
    settings = PruneSettings(sparsity=0.8)
    reference = fresh_stories(stories_dir)
    prune_model(reference, calib, settings, progress=False)

    calls = {"n": 0}
    original = SliceEvaluator.remove

    def interrupt_second_round(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, items)

    state = tmp_path / "state"
    monkeypatch.setattr(SliceEvaluator, "remove", interrupt_second_round)
    with pytest.raises(KeyboardInterrupt):
        prune_model(fresh_stories(stories_dir), calib, settings, state_dir=state, progress=False)
    meta = json.loads((state / "state.json").read_text())["progress"]
    assert meta["ffn_done"] == 5 and len(meta["attn_rounds"]) == 1
    monkeypatch.setattr(SliceEvaluator, "remove", original)

    resumed = fresh_stories(stories_dir)
    report = prune_model(resumed, calib, settings, state_dir=state, resume=True, progress=False)
    assert report["resumed"] and not state.exists()
    assert resumed.config.to_dict() == reference.config.to_dict()
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_state_from_other_settings_is_refused(stories_dir, calib, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"key": "something else", "progress": {"ffn_done": 2}}))
    with pytest.raises(PutriError, match="other settings"):
        prune_model(fresh_stories(stories_dir), calib, PruneSettings(sparsity=0.3), state_dir=state,
                    resume=True, progress=False)


def test_ctrl_c_leaves_no_output_directory(stories_dir, tmp_path, monkeypatch, capsys):
    import putri_export.prune.methods.putri as putri_method

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(putri_method, "remove_head_groups", interrupted)
    out = tmp_path / "out"
    code = main(["prune", str(stories_dir), "--sparsity", "0.5", "--calib", CALIB, "--calib-samples", "4",
                 "--calib-len", "64", "--out", str(out), "--state-dir", str(tmp_path / "state")])
    assert code == 130
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "state" / "state.json").is_file()


@pytest.mark.parametrize("args, needles", [
    (["--sparsity", "1.0"], ["sparsity must be in [0, 1)"]),
    (["--sparsity", "-0.2"], ["sparsity must be in [0, 1)"]),
    (["--sparsity", "0.1", "--alpha", "100"], ["more than the whole target"]),
    (["--sparsity", "0.05", "--method", "shortgpt"], ["ShortGPT removes whole blocks"]),
    (["--sparsity", "0.5", "--calib-samples", "100000"], ["tinystories:train", "windows", "needed"]),
    (["--sparsity", "0.5", "--method", "magnitude"], ["invalid choice"]),
    (["--sparsity", "0.3", "--method", "flap", "--align", "32"], ["--align", "flap"]),
    (["--sparsity", "0.3", "--align", "0"], ["align must be >= 1"]),
])
def test_bad_prune_arguments(stories_dir, tmp_path, args, needles):
    proc = cli("prune", str(stories_dir), "--calib", CALIB, "--calib-len", "64", "--calib-samples", "4",
               "--out", str(tmp_path / "o"), *args)
    if "invalid choice" in needles:  # argparse's own message (exit 2, usage + one error line)
        assert proc.returncode == 2 and "invalid choice" in proc.stderr
    else:
        assert_one_clear_error(proc, *needles)
    assert not (tmp_path / "o").exists()


def test_empty_calibration_text(stories_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = run_cli("prune", str(stories_dir), "--sparsity", "0.3", "--calib", str(empty), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error" in proc.stderr
