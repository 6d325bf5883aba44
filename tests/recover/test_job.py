"""Recovery by distillation on the real stories260K (trained weights), pruned by Putri: it must lower the
perplexity on the TinyStories validation text it never trains on, resume exactly, keep the widths, and refuse
evaluation text."""

import copy
import json

import pytest
import torch
from helpers import assert_one_clear_error, cli

from putri_export.data import load_calibration
from putri_export.errors import PutriError
from putri_export.eval.perplexity import model_perplexity
from putri_export.model import Widths, load_model
from putri_export.prune import PruneSettings, prune_model
from putri_export.recover import RecoverSettings, recover_model
from putri_export.recover import job as recover_job

# fp32 whatever the CPU (autocast auto would pick bf16 on some): the same numbers on every CI machine.
SMALL = {"data": "tinystories:train", "windows": 64, "seq_len": 128, "tokens": 64 * 128, "batch_windows": 4,
         "lr": 1e-3, "shard_windows": 8, "eval_windows": 4, "save_every": 2, "autocast": "none"}


@pytest.fixture(scope="module")
def pruned(stories, stories_dir):
    model = load_model(stories_dir)[0]
    calib = load_calibration(stories[1], "tinystories:train", 32, 256)
    prune_model(model, calib, PruneSettings(sparsity=0.5), progress=False)
    return model


def _ppl(model, ids):
    return model_perplexity(model, ids, 256, 16, 8).perplexity


def test_recovery_lowers_held_out_perplexity_and_keeps_widths(stories, pruned, tinystories_ids, tmp_path):
    student = copy.deepcopy(pruned)
    before = _ppl(student, tinystories_ids)
    report = recover_model(student, stories[0], stories[1], RecoverSettings(**SMALL), tmp_path / "state",
                           progress=False)
    after = _ppl(student, tinystories_ids)
    assert after < 0.8 * before, (before, after)
    assert report["held_out_kl_after"] < report["held_out_kl_before"]
    assert report["steps"] == 16 and report["tokens"] == 64 * 128 and report["stopped_by"] == "tokens"
    assert Widths.from_config(student.config) == Widths.from_config(pruned.config)
    assert not any(p.requires_grad for p in student.parameters())
    embed = student.get_input_embeddings().weight
    assert torch.equal(embed, pruned.get_input_embeddings().weight)  # not trained by default
    assert not (tmp_path / "state").exists()  # the finished job's state is removed


def test_an_interrupted_recovery_resumes_to_the_same_weights(stories, pruned, tmp_path, monkeypatch):
    settings = RecoverSettings(**{**SMALL, "tokens": 10 * 4 * 128})
    whole = copy.deepcopy(pruned)
    recover_model(whole, stories[0], stories[1], settings, tmp_path / "a", progress=False)

    real_lr, computed = recover_job.learning_rate, []

    def interrupt_at_step_7(step, *args):
        if step == 7:
            raise KeyboardInterrupt
        return real_lr(step, *args)

    real_compute = recover_job.TeacherCache._compute

    def counting(self, windows):
        computed.append(len(windows))
        return real_compute(self, windows)

    monkeypatch.setattr(recover_job.TeacherCache, "_compute", counting)
    monkeypatch.setattr(recover_job, "learning_rate", interrupt_at_step_7)
    first = copy.deepcopy(pruned)
    with pytest.raises(KeyboardInterrupt):
        recover_model(first, stories[0], stories[1], settings, tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "state.json").read_text())["progress"]
    assert state["step"] == 7  # saved at the interrupt (after step 6, between steps), not only at save_every
    monkeypatch.setattr(recover_job, "learning_rate", real_lr)
    taught = sum(computed)
    again = copy.deepcopy(pruned)
    report = recover_model(again, stories[0], stories[1], settings, tmp_path / "b", resume=True, progress=False)
    assert report["resumed"] and report["steps"] == 10
    assert sum(computed) == taught + 8  # only the one shard not reached before; the eval windows were kept
    for (name, a), b in zip(whole.named_parameters(), again.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_time_bound_stops_early(stories, pruned):
    report = recover_model(copy.deepcopy(pruned), stories[0], stories[1],
                           RecoverSettings(**{**SMALL, "max_minutes": 1e-9}), None, progress=False)
    assert report["stopped_by"] == "max-minutes" and report["steps"] == 0


def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_weights(stories, pruned, tinystories_ids):
    student, teacher = copy.deepcopy(pruned), copy.deepcopy(stories[0])
    seen = {"student": set(), "teacher": set()}
    for who, model in (("student", student), ("teacher", teacher)):
        model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda _m, _i, out, who=who: seen[who].add(out.dtype))
    before = _ppl(student, tinystories_ids)
    report = recover_model(student, teacher, stories[1], RecoverSettings(**{**SMALL, "autocast": "bf16"}), None,
                           progress=False)
    assert torch.bfloat16 in seen["student"] and torch.bfloat16 in seen["teacher"]
    assert torch.float32 in seen["student"]  # the held-out KL is measured in fp32
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert report["autocast"] == "bf16"
    assert _ppl(student, tinystories_ids) < 0.8 * before
    assert report["held_out_kl_after"] < report["held_out_kl_before"]


def test_autocast_auto_means_bf16_only_where_the_device_has_bf16_arithmetic(monkeypatch):
    cpu = torch.device("cpu")
    for flags, expected in (("fpu sse avx512f", "none"), ("fpu avx512f avx512_bf16", "bf16"),
                            ("fpu amx_bf16 amx_tile", "bf16")):
        monkeypatch.setattr("pathlib.Path.read_text", lambda self, flags=flags: flags)
        assert RecoverSettings().resolved_autocast(cpu) == expected
        assert RecoverSettings(autocast="none").resolved_autocast(cpu) == "none"
    assert RecoverSettings(autocast="bf16").resolved_autocast(torch.device("meta")) == "bf16"
    assert RecoverSettings().resolved_autocast(torch.device("meta")) == "none"


def test_hidden_state_matching_and_embedding_training(stories, pruned):
    student = copy.deepcopy(pruned)
    report = recover_model(student, stories[0], stories[1],
                           RecoverSettings(**{**SMALL, "hidden_weight": 1.0, "train_embeddings": True}), None,
                           progress=False)
    assert report["held_out_kl_after"] < report["held_out_kl_before"]
    assert not torch.equal(student.get_input_embeddings().weight, pruned.get_input_embeddings().weight)


@pytest.mark.parametrize("data", ["tinystories", "wikitext2:test", "wikitext2:valid-raw,tinystories:validation"])
def test_evaluation_text_is_refused(stories, pruned, data):
    with pytest.raises(PutriError, match="evaluation split"):
        recover_model(copy.deepcopy(pruned), stories[0], stories[1], RecoverSettings(**{**SMALL, "data": data}),
                      None, progress=False)


def test_recover_cli(stories_dir, tmp_path):
    pruned_dir = tmp_path / "pruned"
    assert cli("prune", str(stories_dir), "--sparsity", "0.5", "--calib", "tinystories:train", "--calib-samples",
               "16", "--calib-len", "128", "--out", str(pruned_dir)).returncode == 0
    out = tmp_path / "recovered"
    proc = cli("recover", str(pruned_dir), "--out", str(out), "--data", "tinystories:train", "--windows",
               "16", "--seq-len", "128", "--tokens", str(8 * 128), "--eval-windows", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "recovery_report.json").read_text())
    assert report["teacher_model"] == str(stories_dir)  # from the pruning report
    assert (out / "pruning_report.json").is_file()
    model, _ = load_model(out)
    assert Widths.from_config(model.config) == Widths.from_config(load_model(pruned_dir)[0].config)
    assert_one_clear_error(cli("recover", str(pruned_dir), "--out", str(tmp_path / "x"), "--data", "wikitext2"),
                           "evaluation split")
    (pruned_dir / "pruning_report.json").unlink()
    assert_one_clear_error(cli("recover", str(pruned_dir), "--out", str(tmp_path / "y")), "--teacher")
    assert_one_clear_error(cli("recover", str(pruned_dir), "--out", str(out)), "exists")


def test_a_time_bound_schedule_decays_by_the_larger_share_spent():
    timed = RecoverSettings(tokens=100 * 4 * 512, max_minutes=10)  # 100 steps
    assert recover_job._schedule_step(5, 300.0, timed) == 50  # half the time spent: half-way down the cosine
    assert recover_job._schedule_step(60, 300.0, timed) == 60  # tokens ahead of time
    assert recover_job._schedule_step(5, 300.0, RecoverSettings(tokens=100 * 4 * 512)) == 5
