"""Streaming (model/blocks.py): pruning one block at a time equals pruning the whole model in memory, the sharded
checkpoint it writes round-trips, streamed evaluation equals the in-memory one, and an interrupted streamed run
resumes to the same model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_one_clear_error, cli

from putri_export.compute import ComputeSettings
from putri_export.data import load_calibration, windows
from putri_export.errors import PutriError
from putri_export.eval import perplexity, torch_logits_fn
from putri_export.eval.perplexity import streamed_perplexity
from putri_export.model import load_model
from putri_export.model.blocks import INDEX_FILE, open_model, save_streamed_checkpoint
from putri_export.prune import PruneSettings, prune_model
from putri_export.prune.stream import BlockRunner

SETTINGS = PruneSettings(sparsity=0.5, attn_scoring="local")
IN_MEMORY = ComputeSettings(device="cpu", streaming="off")
STREAMED = ComputeSettings(device="cpu", streaming="on")


@pytest.fixture(scope="module")
def calib(stories):
    return load_calibration(stories[1], "tinystories:train", 8, 128)


@pytest.fixture(scope="module")
def in_memory(stories_dir, calib):
    model, _, _, blocks = open_model(stories_dir, IN_MEMORY)
    assert blocks is None
    return model, prune_model(model, calib, SETTINGS, progress=False)


@pytest.fixture(scope="module")
def streamed(stories_dir, calib, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streamed")
    model, _, _, blocks = open_model(stories_dir, STREAMED, work=tmp / "blocks")
    assert blocks is not None
    assert all(p.is_meta for p in model.model.layers.parameters())  # no block weight read yet
    report = prune_model(model, calib, SETTINGS, progress=False, blocks=blocks)
    out = save_streamed_checkpoint(model, blocks, tmp / "pruned", extra_files={"pruning_report.json": "{}"})
    return report, out


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_streamed_pruning_gives_the_widths_and_logits_of_in_memory_pruning(in_memory, streamed, calib):
    model, report = in_memory
    streamed_report, out = streamed
    assert streamed_report["streamed"] and not report["streamed"]
    assert streamed_report["widths"] == report["widths"]
    assert streamed_report["details"]["attention"] == report["details"]["attention"]
    assert report["sparsity_blocks"] == pytest.approx(0.5, abs=0.01)
    reloaded, _ = load_model(out)
    assert torch.equal(_logits(reloaded, calib.ids[:2]), _logits(model, calib.ids[:2]))


def test_sharded_checkpoint_round_trips_with_and_without_the_package(streamed, in_memory, calib):
    from transformers import AutoModelForCausalLM

    _, out = streamed
    index = json.loads((out / INDEX_FILE).read_text())
    layers = len(in_memory[0].model.layers)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == layers + 1 and all((out / s).is_file() for s in shards)
    assert {n for n, s in index["weight_map"].items() if s == shards[0]} == {
        f"model.layers.0.{k}" for k in in_memory[0].model.layers[0].state_dict()}
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_putri_llama.")
    assert config["num_key_value_heads_per_layer"] == [w["kv_heads"] for w in in_memory[1]["widths"]]
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert torch.equal(_logits(plain, calib.ids[:2]), _logits(in_memory[0], calib.ids[:2]))
    assert (out / "pruning_report.json").is_file() and (out / "tokenizer.model").is_file()


def test_streamed_perplexity_equals_in_memory_perplexity(stories_dir, tinystories_ids):
    model, _, _, blocks = open_model(stories_dir, STREAMED)
    assert blocks is not None and blocks.work is None  # read-only: evaluation writes nothing
    streamed = streamed_perplexity(BlockRunner(model, 4, blocks), tinystories_ids, 128, max_windows=6,
                                   chunk_tokens=256, progress=False)  # 3 chunks of 2 windows
    whole, _ = load_model(stories_dir)
    reference = perplexity(torch_logits_fn(whole), tinystories_ids, 128, max_windows=6, progress=False)
    assert streamed.windows == reference.windows == len(windows(tinystories_ids, 128, 6))
    assert streamed.perplexity == pytest.approx(reference.perplexity, rel=1e-5)


def test_an_interrupted_streamed_run_resumes_to_the_same_model(stories_dir, calib, in_memory, tmp_path):
    state = tmp_path / "state"

    def interrupted_open(blocks, stop_at: int):
        original = blocks.open

        def open_block(l):
            if l == stop_at:
                raise KeyboardInterrupt
            return original(l)

        blocks.open = open_block

    model, _, _, blocks = open_model(stories_dir, STREAMED, work=tmp_path / "blocks")
    interrupted_open(blocks, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        prune_model(model, calib, SETTINGS, state_dir=state, progress=False, blocks=blocks)
    model, _, _, blocks = open_model(stories_dir, STREAMED, work=tmp_path / "blocks")
    report = prune_model(model, calib, SETTINGS, state_dir=state, resume=True, progress=False, blocks=blocks)
    assert report["resumed"] and report["widths"] == in_memory[1]["widths"]
    out = save_streamed_checkpoint(model, blocks, tmp_path / "out")
    reloaded, _ = load_model(out)
    assert torch.equal(_logits(reloaded, calib.ids[:2]), _logits(in_memory[0], calib.ids[:2]))


def test_loss_scoring_and_other_methods_refuse_a_streamed_model(stories_dir, calib, tmp_path):
    model, _, _, blocks = open_model(stories_dir, STREAMED, work=tmp_path / "blocks")
    for settings in (PruneSettings(sparsity=0.5, attn_scoring="loss"), PruneSettings(sparsity=0.5, method="2ssp")):
        with pytest.raises(PutriError, match="--streaming off"):
            prune_model(model, calib, settings, progress=False, blocks=blocks)

    # options that run a dense copy beside the pruned blocks: one wording, naming the option and what to do instead
    for settings, option, instead in ((PruneSettings(sparsity=0.5, method="putri-dense-fit"), "--fit-target dense",
                                       "--method putri"),
                                      (PruneSettings(sparsity=0.5, reconstruct_epochs=2), "--reconstruct-epochs",
                                       "no reconstruction")):
        with pytest.raises(PutriError, match="a streamed model does not hold") as err:
            prune_model(model, calib, settings, progress=False, blocks=blocks)
        assert option in str(err.value) and instead in str(err.value) and "--streaming off" in str(err.value)


def test_prune_cli_streams_in_bfloat16_and_writes_a_bfloat16_checkpoint(stories_dir, tmp_path, calib):
    out = tmp_path / "bf16"
    proc = cli("prune", str(stories_dir), "--sparsity", "0.5", "--calib", "tinystories:train", "--calib-samples",
               "8", "--calib-len", "128", "--out", str(out), "--dtype", "bfloat16", "--streaming", "on",
               "--device", "cpu", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bfloat16, streamed" in proc.stdout
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["streamed"] and report["dtype"] == "bfloat16" and report["details"]["attention_scoring"] == "local"
    model, _ = load_model(out, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert not (tmp_path / "state.blocks").exists()  # the work folder is gone once the checkpoint is written
    fp32, _ = load_model(out)
    assert torch.isfinite(_logits(fp32, calib.ids[:2])).all()


@pytest.mark.parametrize(("flags", "needles"), [
    (("--device", "cuda"), ("--device cuda", "no CUDA GPU", "--device cpu")),
    (("--device", "tpu"), ("unknown device 'tpu'", "accepted: auto, cpu, cuda, cuda:N, mps")),
    (("--streaming", "on", "--attn-scoring", "loss"), ("putri with loss scoring revisits blocks", "--streaming off")),
])
def test_bad_device_and_streaming_choices_are_one_clear_error(stories_dir, tmp_path, flags, needles):
    if flags[:2] == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    out = tmp_path / "out"
    proc = cli("prune", str(stories_dir), "--sparsity", "0.5", "--calib", "tinystories:train", "--calib-samples",
               "2", "--calib-len", "64", "--out", str(out), "--state-dir", str(tmp_path / "state"), *flags)
    assert_one_clear_error(proc, *needles)
    assert not out.exists()


def test_a_streamed_reference_decodes_and_scores_like_the_model_in_memory(stories_dir, tinystories_ids):
    # Verification's PyTorch side for a streamed model: greedy by full forwards, logits block by block.
    from putri_export.export.verify import Reference

    model, tokenizer, _, blocks = open_model(stories_dir, STREAMED)
    whole, _ = load_model(stories_dir)
    streamed, in_memory = Reference(model, tokenizer, stories_dir, blocks), Reference(whole, tokenizer, stories_dir)
    prompt = tinystories_ids[:48]
    assert streamed.greedy(prompt, 24) == in_memory.greedy(prompt, 24)
    torch.testing.assert_close(streamed.logits(prompt[None]), in_memory.logits(prompt[None]), rtol=1e-5, atol=1e-5)
