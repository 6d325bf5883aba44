"""Týr-style search: its units with known answers, and tiny end-to-end searches on stories260K."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import assert_one_clear_error, cli, fresh_stories, run_cli

from putri_export.data import load_calibration
from putri_export.errors import PutriError
from putri_export.model import Widths, load_model, param_counts
from putri_export.prune import PruneSettings, prune_model
from putri_export.prune.obs import group_removal_order, refit_error
from putri_export.search import SearchSettings, search, search_and_prune
from putri_export.search.fitness import FitnessEvaluator
from putri_export.search.space import (
    initial_config,
    level_grid,
    mutate,
    repair_budget,
    start_config,
    sublayers,
    trade,
)
from putri_export.search.start import greedy_widths, resolve_start
from putri_export.search.supernet import VariantBank, build_supernet, prune_to_widths

# start "uniform": these tests check the search itself (the greedy start has its own tests below)
TINY = SearchSettings(sparsity=0.5, iterations=2, generations=3, offspring=5, stage_samples=(2, 4),
                      stage_keep=(2, 1), top_k=64, start="uniform")


def assert_meets_the_budget(report: dict, dense_blocks: int, ffn, settings: SearchSettings = TINY) -> None:
    """Within half a neuron of the target, or below it by less than one last-iteration FFN level (what a trade
    between attention and FFN leaves; the supernet's weights are then used as they are)."""
    target = dense_blocks - round(settings.sparsity * dense_blocks)
    level = max(1, round(settings.step / 2 ** (settings.iterations - 1) * ffn.max_units)) * ffn.unit_params
    assert target - level < report["params_blocks"] <= target + ffn.unit_params / 2, (report["params_blocks"], target)


@pytest.fixture(scope="module")
def calib(stories):
    return load_calibration(stories[1], "tinystories:train", 8, 128)


# ---------------------------------------------------------------------------------------------
# Units


def test_level_grid_reaches_both_ends_and_keeps_the_step():
    assert level_grid(768, 192, 4, 1536) == list(range(0, 1537, 192))
    assert level_grid(100, 30, 2, 120) == [40, 70, 100, 120]  # 130 > max: max itself is a level
    assert level_grid(20, 30, 2, 120) == [0, 20, 50, 80]  # below 0: 0 is a level
    assert level_grid(2, 1, 4, 3) == [0, 1, 2, 3]


def test_refit_error_is_zero_when_kept_channels_span_the_removed_ones():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    z[:, 4:] = z[:, :2] @ torch.randn(2, 2, generator=gen, dtype=torch.float64)  # group 2 = mix of group 0
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    h = z.T @ z
    assert refit_error(w, h, torch.arange(4), damping=0) == pytest.approx(0, abs=1e-6)
    assert refit_error(w, h, torch.tensor([2, 3, 4, 5]), damping=0) == pytest.approx(0, abs=1e-6)  # 2 spans 0
    assert refit_error(w, h, torch.tensor([0, 1, 4, 5]), damping=0) > 1.0  # group 1 is independent
    assert refit_error(w, h, torch.zeros(0, dtype=torch.long)) == pytest.approx(float(((w @ h) * w).sum()))


def test_group_removal_order_drops_the_redundant_group_first_and_the_strongest_last():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(800, 6, generator=gen, dtype=torch.float64)
    z[:, 2:4] *= 10  # group 1 carries most of the output energy
    z[:, 4:] = z[:, :2] * 0.5  # group 2 duplicates group 0
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]
    order = group_removal_order(w, z.T @ z, groups)
    assert order[0] in (0, 2) and order[-1] == 1


def test_mutations_keep_each_kinds_total_and_stay_on_levels():
    rng = random.Random(0)
    kinds = ["attn", "ffn"] * 6
    levels = [[0, 1, 2, 3] if k == "attn" else [0, 48, 96, 144, 172] for k in kinds]
    config = tuple(2 if k == "attn" else 96 for k in kinds)
    for _ in range(300):
        child = mutate(config, levels, kinds, rng, 4)
        for kind in ("attn", "ffn"):
            total = sum(u for u, k in zip(config, kinds) if k == kind)
            assert sum(u for u, k in zip(child, kinds) if k == kind) == total
        assert all(u in lv for u, lv in zip(child, levels))
        config = child
    assert config != tuple(2 if k == "attn" else 96 for k in kinds)  # it does move


def test_trades_move_parameters_between_attention_and_ffn_never_above_the_limit(stories):
    subs = sublayers(stories[0])
    config = initial_config(stories[0], subs, 0.5, 1.5)
    levels = [level_grid(u, 1 if s.kind == "attn" else max(1, s.max_units // 8), 4, s.max_units)
              for s, u in zip(subs, config)]
    limit = sum(s.params(u) for s, u in zip(subs, config))
    ffn_steps = [b - a for s, lv in zip(subs, levels) if s.kind == "ffn" for a, b in zip(lv, lv[1:])]
    rng = random.Random(0)
    attention_totals = set()
    for _ in range(200):
        child = trade(config, rng, levels, subs, limit)
        kept = sum(s.params(u) for s, u in zip(subs, child))
        assert all(u in lv for u, lv in zip(child, levels))
        assert kept <= limit
        if child != config:  # no FFN level left that would fit under the limit
            assert limit - kept < max(ffn_steps) * subs[1].unit_params + subs[1].norm_params
        attention_totals.add(sum(u for s, u in zip(subs, child) if s.kind == "attn"))
    assert len(attention_totals) > 1  # the split does move


def test_start_config_takes_the_given_widths_and_meets_the_budget(stories):
    model = stories[0]
    subs = sublayers(model)
    blocks = param_counts(model).blocks
    target = blocks - round(0.5 * blocks)
    dense = Widths.from_config(model.config)
    kv = [max(0, w.kv_heads - (l % 2) * w.kv_heads) for l, w in enumerate(dense)]  # odd layers lose attention
    given = dense.with_kv_and_ffn(kv, [w.ffn // 3 for w in dense])
    config = start_config(subs, given, target)
    assert list(config[0::2]) == kv
    assert abs(sum(s.params(u) for s, u in zip(subs, config)) - target) <= subs[1].unit_params / 2


def test_initial_config_and_repair_meet_the_budget_within_half_a_neuron(stories):
    model = stories[0]
    subs = sublayers(model)
    blocks = param_counts(model).blocks
    for sparsity in (0.1, 0.3, 0.5, 0.8):
        config = initial_config(model, subs, sparsity, 1.5)
        kept = sum(s.params(u) for s, u in zip(subs, config))
        assert abs(kept - (blocks - round(sparsity * blocks))) <= subs[1].unit_params / 2
        skewed = list(config)
        skewed[1], skewed[3] = 0, subs[3].max_units  # an emptied FFN loses its norm too
        repaired = repair_budget(subs, tuple(skewed), blocks - round(sparsity * blocks))
        assert abs(sum(s.params(u) for s, u in zip(subs, repaired)) - (blocks - round(sparsity * blocks))) \
            <= subs[1].unit_params / 2


def test_fitness_prefix_cache_matches_a_full_run_and_dense_scores_zero(stories_dir, calib, tmp_path):
    model = fresh_stories(stories_dir)
    subs = sublayers(model)
    dense = tuple(s.max_units for s in subs)
    config = initial_config(model, subs, 0.5, 1.5)
    levels = {(s.kind, s.layer): sorted({0, u, s.max_units, max(u - 1, 0)}) for s, u in zip(subs, config)}
    bank = VariantBank(model, tmp_path / "bank")
    build_supernet(model, calib.ids, levels, {(s.kind, s.layer): u for s, u in zip(subs, config)}, bank,
                   progress=False)
    fitness = FitnessEvaluator(model, calib.ids[:4], top_k=64)
    fitness.set_parent(dense, bank)
    assert fitness(dense, 4) == pytest.approx(0, abs=1e-6)
    child = list(config)
    child[5] = max(child[5] - 1, 0)  # differs from config first in layer 2's FFN
    child = tuple(child)
    fitness.set_parent(config, bank)
    via_prefix = fitness(child, 4)
    fitness.set_parent(child, bank)
    assert via_prefix == pytest.approx(fitness(child, 4), rel=1e-5)
    assert via_prefix > 0


# ---------------------------------------------------------------------------------------------
# Whole searches


def test_search_meets_the_budget_and_the_model_loads_and_generates(stories_dir, calib, tmp_path):
    model = fresh_stories(stories_dir)
    blocks = param_counts(model).blocks
    report, plots = search_and_prune(model, calib, TINY, tmp_path / "work", progress=False)
    assert_meets_the_budget(report, blocks, sublayers(fresh_stories(stories_dir))[1])
    its = report["iterations"]
    assert len(its) == 2 and all(len(it["generations"]) == 3 for it in its)
    assert its[0]["best_fitness"] <= its[0]["start_fitness"]  # the parent is always kept
    both = (report["final_kl"]["assembled_from_supernet"], report["final_kl"]["repruned_at_widths"])
    assert report["final_kl"]["kl"] == pytest.approx(min(k for k in both if k is not None), rel=1e-5)
    assert all(p.startswith(b"\x89PNG") for p in plots.values()) and len(plots) == 2
    assert not (tmp_path / "work").exists()  # the supernet is removed when done
    out = model.generate(calib.ids[:1, :8], max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 16)


def test_search_starts_from_a_pruned_checkpoints_widths_and_trades_within_the_budget(stories_dir, calib, tmp_path):
    model = fresh_stories(stories_dir)
    blocks = param_counts(model).blocks
    dense = Widths.from_config(model.config)
    kv = [w.kv_heads if l % 2 else 0 for l, w in enumerate(dense)]  # even layers lose their attention
    start = tmp_path / "pruned"
    start.mkdir()
    (start / "pruning_report.json").write_text(json.dumps({"widths": dense.with_kv_and_ffn(
        kv, dense.ffn).to_json()}))
    settings = SearchSettings(**{**TINY.__dict__, "start": str(start), "iterations": 1})
    report, _ = search_and_prune(model, calib, settings, tmp_path / "work", progress=False)
    assert report["start"]["config"][0::2] == kv
    assert report["start"]["config"] != report["start"]["uniform_config"]
    assert_meets_the_budget(report, blocks, sublayers(fresh_stories(stories_dir))[1], settings)
    assert report["iterations"][0]["best_fitness"] <= report["iterations"][0]["start_fitness"]


def test_search_starts_from_the_paper_presets_greedy_allocation_without_changing_the_model(stories_dir, calib,
                                                                                              tmp_path):
    greedy = prune_model(fresh_stories(stories_dir), calib, PruneSettings(method="putri", sparsity=0.5),
                         progress=False)
    model = fresh_stories(stories_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = SearchSettings(**{**TINY.__dict__, "start": "auto", "iterations": 1, "generations": 1})
    result = search(model, calib, settings, tmp_path / "work", progress=False)
    assert result.report["start"]["source"] == "greedy"
    assert result.report["start"]["config"][0::2] == [w["kv_heads"] for w in greedy["widths"]]
    assert result.report["start"]["config"] != result.report["start"]["uniform_config"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the greedy pass pruned a copy


def test_a_finished_greedy_start_is_not_pruned_again_on_resume(stories_dir, calib, tmp_path, monkeypatch):
    import putri_export.prune as prune_package

    model = fresh_stories(stories_dir)
    first = greedy_widths(model, calib, TINY, tmp_path / "greedy", progress=False)

    def no_second_prune(*args, **kwargs):
        raise AssertionError("the finished greedy pass ran again")

    monkeypatch.setattr(prune_package, "prune_model", no_second_prune)
    assert greedy_widths(model, calib, TINY, tmp_path / "greedy", resume=True).to_json() == first.to_json()
    with pytest.raises(AssertionError, match="ran again"):  # without --resume it starts over
        greedy_widths(model, calib, TINY, tmp_path / "greedy", progress=False)


def test_an_interrupted_greedy_start_resumes_its_prune(stories_dir, calib, tmp_path, monkeypatch):
    import putri_export.prune as prune_package

    model = fresh_stories(stories_dir)
    real_prune = prune_package.prune_model

    def interrupted(model, calib, settings, state_dir, **kwargs):
        Path(state_dir).mkdir(parents=True)
        (Path(state_dir) / "progress").write_text("kept")
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_package, "prune_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        greedy_widths(model, calib, TINY, tmp_path / "greedy", progress=False)
    seen = []

    def resumed(model, calib, settings, state_dir, **kwargs):
        seen.append((Path(state_dir) / "progress").is_file())
        return real_prune(model, calib, settings, **kwargs)

    monkeypatch.setattr(prune_package, "prune_model", resumed)
    greedy_widths(model, calib, TINY, tmp_path / "greedy", resume=True, progress=False)
    assert seen == [True]  # the interrupted prune's state was still there for it


def test_auto_start_is_greedy_in_memory_and_uniform_streamed():
    streamed = object()  # any block store
    assert resolve_start(SearchSettings(), None) == "greedy"
    assert resolve_start(SearchSettings(), streamed) == "uniform"
    assert resolve_start(SearchSettings(start="uniform"), None) == "uniform"
    with pytest.raises(PutriError, match="streamed model does not hold"):
        resolve_start(SearchSettings(start="greedy"), streamed)


def test_search_with_block_reconstruction_lowers_each_blocks_error_and_the_kl(stories_dir, calib, tmp_path):
    settings = SearchSettings(**{**TINY.__dict__, "iterations": 1, "generations": 1, "reconstruct_epochs": 2})
    model = fresh_stories(stories_dir)
    report, _ = search_and_prune(model, calib, settings, tmp_path / "work", progress=False)
    log = report["reconstruction"]
    assert len(log) == len(model.model.layers)
    assert all(e["relative_error_after"] < e["relative_error_before"] for e in log)
    assert report["final_kl"]["after_reconstruction"] < report["final_kl"]["kl"]
    assert not (tmp_path / "work").exists()


def test_search_resumes_from_the_last_finished_iteration(stories_dir, calib, tmp_path, monkeypatch):
    import putri_export.search.evolve as search_module

    full = search(fresh_stories(stories_dir), calib, TINY, tmp_path / "a", progress=False)
    real_evolve = search_module.evolve
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evolve(*args, **kwargs)

    monkeypatch.setattr(search_module, "evolve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(fresh_stories(stories_dir), calib, TINY, tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "state.json").read_text())["progress"]
    assert len(state["iterations"]) == 1
    monkeypatch.setattr(search_module, "evolve", real_evolve)
    resumed = search(fresh_stories(stories_dir), calib, TINY, tmp_path / "b", resume=True, progress=False)
    assert resumed.config == full.config
    other = SearchSettings(**{**TINY.__dict__, "seed": 5})
    with pytest.raises(PutriError, match="other settings"):
        search(fresh_stories(stories_dir), calib, other, tmp_path / "b", resume=True, progress=False)


def test_cli_search_then_prune_to_the_saved_widths(stories_dir, tmp_path):
    out = tmp_path / "searched"
    args = ["--calib", "tinystories:train", "--calib-samples", "8", "--calib-len", "128", "--iterations", "1",
            "--generations", "2", "--offspring", "4", "--stage-samples", "2,4", "--stage-keep", "2,1",
            "--work-dir", str(tmp_path / "work")]
    result = run_cli("search", str(stories_dir), "--sparsity", "0.3", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    for name in ("search_report.json", "widths.json", "search_widths.png", "search_fitness.png", "model.safetensors"):
        assert (out / name).is_file()
    again = tmp_path / "given"
    result = run_cli("search", str(stories_dir), "--widths", str(out / "widths.json"), "--out", str(again), *args)
    assert result.returncode == 0, result.stderr
    model, _ = load_model(again)
    dense = Widths.from_config(load_model(stories_dir)[0].config)
    assert Widths.read(out / "widths.json", dense) == Widths.from_config(model.config)
    report = json.loads((again / "search_report.json").read_text())
    assert report["method"] == "putri (given widths)"


def test_bad_search_arguments_give_clear_errors(stories_dir, tmp_path):
    wrong_layers = tmp_path / "three.json"
    wrong_layers.write_text(json.dumps([{"kv_heads": 1, "ffn": 10}] * 3))
    too_wide = tmp_path / "wide.json"
    too_wide.write_text(json.dumps([{"kv_heads": 9, "ffn": 10}] * 5))
    not_json = tmp_path / "bad.json"
    not_json.write_text("{")
    base = [str(stories_dir), "--calib", "tinystories:train", "--calib-samples", "8", "--calib-len", "128"]
    cases = [
        (["--sparsity", "1.0"], "sparsity"),
        ([], "--sparsity"),
        (["--sparsity", "0.5", "--stage-keep", "2,2"], "end with 1"),
        (["--sparsity", "0.5", "--stage-samples", "1,40"], "calibration windows"),
        (["--widths", str(wrong_layers)], "5 layers"),
        (["--widths", str(too_wide)], "can only shrink"),
        (["--widths", str(not_json)], "not valid JSON"),
        (["--widths", str(tmp_path / "missing.json")], "not found"),
        (["--sparsity", "0.5", "--start", str(tmp_path / "nowhere")], "no such file or folder"),
        (["--sparsity", "0.5", "--start", str(tmp_path)], "no widths.json"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        result = cli("search", *base, *extra, "--out", str(out))
        assert_one_clear_error(result, message)
        assert not out.exists()


def test_prune_to_widths_rejects_growth_and_keeps_shapes(stories_dir, calib):
    model = fresh_stories(stories_dir)
    c = model.config
    kv = [c.num_key_value_heads_per_layer[0]] + [1] * (c.num_hidden_layers - 1)
    ffn = [0] + [50] * (c.num_hidden_layers - 1)
    dense = Widths.from_config(c)
    prune_to_widths(model, calib.ids, dense.with_kv_and_ffn(kv, ffn), progress=False)
    assert model.config.num_key_value_heads_per_layer == kv and model.config.intermediate_size_per_layer == ffn
    with pytest.raises(PutriError, match="can only shrink"):
        prune_to_widths(model, calib.ids, dense.with_kv_and_ffn(kv, [60] * c.num_hidden_layers), progress=False)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen3-0.6b"])
def test_search_on_qwen_families_meets_the_budget(name, stories_dir, tmp_path):
    """The supernet's variants keep Qwen2's sliced biases and Qwen3's q/k norms (a missing one stays on the meta
    device and the fitness cannot run); the budget counts them."""
    from helpers import family_checkpoint

    model, tokenizer = load_model(family_checkpoint(name, stories_dir, tmp_path / "dense"))
    calib = load_calibration(tokenizer, "tinystories:train", 4, 64)
    blocks = param_counts(model).blocks
    report, _ = search_and_prune(model, calib, TINY, tmp_path / "work", progress=False)
    assert_meets_the_budget(report, blocks, sublayers(load_model(tmp_path / "dense")[0])[1])
    assert report["params_blocks"] == param_counts(model).blocks
    assert model.generate(calib.ids[:1, :8], max_new_tokens=4, do_sample=False).shape == (1, 12)


def test_streamed_search_gives_the_in_memory_widths_kl_and_logits(stories_dir, calib, tmp_path):
    """The search reads a streamed model's blocks in turn (supernet, fitness, assembling) and writes only its
    pruned blocks: same searched widths, same KL and the same pruned model as the search held in memory."""
    from putri_export.compute import ComputeSettings
    from putri_export.model.blocks import open_model, save_streamed_checkpoint

    settings = SearchSettings(**{**TINY.__dict__, "iterations": 1})
    model = fresh_stories(stories_dir)
    report, _ = search_and_prune(model, calib, settings, tmp_path / "a", progress=False)
    skeleton, _, _, blocks = open_model(stories_dir, ComputeSettings(device="cpu", streaming="on"),
                                        work=tmp_path / "blocks")
    streamed, _ = search_and_prune(skeleton, calib, settings, tmp_path / "b", progress=False, blocks=blocks)
    assert streamed["widths"] == report["widths"]
    assert streamed["iterations"][-1]["best"] == report["iterations"][-1]["best"]
    assert streamed["final_kl"]["chosen"] == report["final_kl"]["chosen"]
    assert streamed["final_kl"]["kl"] == pytest.approx(report["final_kl"]["kl"], rel=1e-5)
    assert all(p.is_meta for p in skeleton.model.layers.parameters())  # no block stayed in memory
    out = save_streamed_checkpoint(skeleton, blocks, tmp_path / "pruned")
    reloaded, _ = load_model(out)
    with torch.no_grad():
        expected, got = model(calib.ids[:2]).logits, reloaded(calib.ids[:2]).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())


def test_a_bfloat16_streamed_search_meets_the_budget(stories_dir, calib, tmp_path):
    """Captured sub-layer inputs are fp32 while a bf16 model's weights are not: the supernet's expected outputs are
    computed in fp32 and fed back in the model's dtype."""
    from putri_export.compute import ComputeSettings
    from putri_export.model.blocks import open_model

    settings = SearchSettings(**{**TINY.__dict__, "iterations": 1, "generations": 1})
    skeleton, _, _, blocks = open_model(stories_dir, ComputeSettings(device="cpu", dtype="bfloat16", streaming="on"),
                                        work=tmp_path / "blocks")
    dense = param_counts(skeleton).blocks
    report, _ = search_and_prune(skeleton, calib, settings, tmp_path / "work", progress=False, blocks=blocks)
    assert_meets_the_budget(report, dense, sublayers(fresh_stories(stories_dir))[1], settings)
    assert report["final_kl"]["kl"] < report["iterations"][0]["start_fitness"] * 1.5


def test_search_with_align_keeps_ffn_widths_on_multiples_and_meets_the_target(stories_dir, calib, tmp_path):
    settings = SearchSettings(**{**TINY.__dict__, "iterations": 1, "generations": 2, "align": 32})
    model = fresh_stories(stories_dir)
    dense = param_counts(model).blocks
    report, _ = search_and_prune(model, calib, settings, tmp_path / "work", progress=False)
    widths = model.config.intermediate_size_per_layer
    assert all(w % 32 == 0 or w == 172 for w in widths), widths  # a dense FFN keeps its own width
    target_kept = dense - round(0.5 * dense)
    assert 0 <= target_kept - report["params_blocks"] < 32 * 3 * model.config.hidden_size
