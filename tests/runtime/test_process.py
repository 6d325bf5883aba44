"""Runtimes in child processes: the same answers as in-process, and a native crash (a real llama.cpp abort,
a kill by signal) is one clear error line naming the artifact, the runtime and the signal, while the test
process carries on and nothing is left behind."""

from __future__ import annotations

import os
import signal
import time

import gguf
import numpy as np
import pytest
import torch
from helpers import assert_one_clear_error, run_cli

from putri_export.errors import PutriError
from putri_export.export import ParityCheck, export_verified
from putri_export.export import gguf as export_gguf
from putri_export.export.onnx import write_onnx
from putri_export.model import keep_ffn_neurons, load_model, save_checkpoint
from putri_export.runtime.process import RuntimeCrashed, RuntimeProcess, output_tail, receive, send


def write_abort_gguf(model, tokenizer_dir, out, type_name: str = "f32", name: str = "abort") -> None:
    """A deci GGUF whose last layer has attention but no FFN, *without* the exporter's placeholder FFN:
    llama.cpp's graph then skips the output-row selection and aborts (GGML_ASSERT) in llama_decode."""
    c = model.config
    assert c.intermediate_size_per_layer[-1] == 0
    layout = export_gguf.Layout.of(model)  # as the model is, without deci.layout's workarounds
    writer = gguf.GGUFWriter(out, arch=export_gguf.deci.ARCH)
    export_gguf.write_hparams(writer, model, layout, type_name, name)
    export_gguf.write_tokenizer(writer, tokenizer_dir, c.vocab_size)
    with torch.no_grad():
        export_gguf.deci.write_tensors(export_gguf.TensorSink(writer, type_name), model, layout, type_name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, stories_dir):
    root = tmp_path_factory.mktemp("runtime_process")
    model, tok = load_model(stories_dir)
    with torch.no_grad():
        export_gguf.write_gguf(model, stories_dir, root / "good.gguf", "f32", progress=False)
    write_onnx(model, stories_dir, root / "onnx")
    keep_ffn_neurons(model, 4, [])
    folder = save_checkpoint(model, tok, root / "last-no-ffn", source_dir=stories_dir)
    write_abort_gguf(model, stories_dir, root / "abort.gguf")
    return {"good": root / "good.gguf", "onnx": root / "onnx", "abort": root / "abort.gguf",
            "abort_source": folder, "abort_model": (model, tok)}


def test_wire_format_round_trips_arrays_without_pickle(tmp_path):
    path = tmp_path / "wire"
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2], np.int64), np.zeros((0, 5), np.float16)]
    with open(path, "wb") as f:
        send(f, {"op": "x", "n": 3}, arrays)
    with open(path, "rb") as f:
        header, got = receive(f)
    assert header == {"op": "x", "n": 3}
    assert all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(arrays, got))
    assert got[0].flags.writeable


@pytest.mark.parametrize("runtime, key", [("llama.cpp", "good"), ("onnxruntime", "onnx")])
def test_child_runtime_answers_like_the_model(files, stories, runtime, key):
    model, tokenizer = stories
    with RuntimeProcess(runtime, files[key], n_ctx=128, n_threads=1) as rt:
        ids = rt.tokenize("Once upon a time there was a dog.")
        assert ids == tokenizer("Once upon a time there was a dog.", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        got = rt.logits(ids)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        tokens, steps = rt.greedy(ids, 8)
        with torch.no_grad():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                      pad_token_id=0)[0, len(ids):].tolist()
        assert tokens == expected and steps.shape == (8, ref.shape[1])
    assert rt._proc.poll() is not None  # closed: the child is gone


def test_a_llama_cpp_abort_is_one_error_naming_artifact_runtime_signal_and_assert(files):
    rt = RuntimeProcess("llama.cpp", files["abort"], n_ctx=64)
    try:
        with pytest.raises(RuntimeCrashed) as crash:
            rt.logits([1, 2, 3, 4])
    finally:
        rt.close()
    message = str(crash.value)
    print("\nthe error a user sees:", message)
    assert "\n" not in message
    assert message.startswith(f"llama.cpp crashed while running {files['abort']}: its process was killed by SIGABRT")
    assert "GGML_ASSERT" in message  # the runtime's own last words


@pytest.mark.parametrize("sig, words", [(signal.SIGKILL, "out-of-memory killer"),
                                        (signal.SIGSEGV, "invalid memory access")])
@pytest.mark.parametrize("runtime, key", [("llama.cpp", "good"), ("onnxruntime", "onnx")])
def test_a_runtime_killed_by_a_signal_is_one_error_and_the_next_one_works(files, runtime, key, sig, words):
    rt = RuntimeProcess(runtime, files[key], n_ctx=64, n_threads=1)
    os.kill(rt.pid, sig)
    time.sleep(0.2)
    with pytest.raises(RuntimeCrashed, match=f"{runtime} crashed while running .*killed by {sig.name} .*{words}"):
        rt.logits([1, 2, 3])
    rt.close()
    with RuntimeProcess(runtime, files[key], n_ctx=64, n_threads=1) as again:  # a fresh child is unaffected
        assert again.logits([1, 2, 3]).shape[0] == 3


def test_bad_file_is_a_plain_error_not_a_crash(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(PutriError) as e:
        RuntimeProcess("llama.cpp", bad)
    assert not isinstance(e.value, RuntimeCrashed) and "not a readable GGUF" in str(e.value)


def test_verify_of_an_aborting_file_exits_with_one_line(files):
    proc = run_cli("verify", str(files["abort"]), "--against", str(files["abort_source"]), "--data", "tinystories",
                   "--max-windows", "1")
    assert_one_clear_error(proc, "llama.cpp crashed while", "killed by SIGABRT", "GGML_ASSERT")


def test_export_whose_verification_crashes_leaves_nothing(files, tmp_path, monkeypatch):
    model, tok = files["abort_model"]
    monkeypatch.setattr(export_gguf, "write_gguf", lambda m, src, out, *a, **k: write_abort_gguf(m, src, out)
                        or export_gguf.GGUFExportReport(str(out), "f32", 0, []))
    out = tmp_path / "m.gguf"
    with pytest.raises(RuntimeCrashed, match="killed by SIGABRT"):
        export_verified(model, tok, files["abort_source"], out, "gguf", "f32",
                        check=ParityCheck(data="tinystories", max_windows=1), threads=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its staging file


def test_a_crash_inside_run_keeps_finished_steps_for_resume(stories_dir, tmp_path, monkeypatch):
    from helpers import tiny_recipe

    import putri_export.run.pipeline as pipeline

    real_write = export_gguf.write_gguf

    def pruned_aborts(model, src, out, *a, **k):
        if "pruned" not in out.name:
            return real_write(model, src, out, *a, **k)
        keep_ffn_neurons(model, 4, [])  # this copy only: the next step loads the checkpoint afresh
        write_abort_gguf(model, src, out)
        return export_gguf.GGUFExportReport(str(out), "f32", 0, [])

    monkeypatch.setattr(export_gguf, "write_gguf", pruned_aborts)
    out = tmp_path / "run"
    recipe = tiny_recipe(stories_dir, formats=["gguf"], bench=False)
    with pytest.raises(RuntimeCrashed, match="step export:pruned-f32.gguf failed: llama.cpp crashed.*--resume"):
        pipeline.run_pipeline(recipe, out)
    staging = pipeline.staging_folder(out)
    assert not out.exists()
    assert sorted(p.name for p in (staging / "artifacts").iterdir()) == ["dense-f32.gguf"]  # no staging leftovers
    monkeypatch.setattr(export_gguf, "write_gguf", real_write)
    monkeypatch.setattr(pipeline, "_prune", lambda *a, **k: pytest.fail("prune ran again"))
    report = pipeline.run_pipeline(recipe, out, resume=True)
    assert [a["path"] for a in report["artifacts"]] == ["artifacts/dense-f32.gguf", "artifacts/pruned-f32.gguf"]


def test_output_tail_keeps_the_last_lines_on_one_line():
    assert output_tail("a\n\n b \nc\nd\ne\n") == "b | c | d | e"
    assert len(output_tail("x" * 5000)) == 401


def test_token_nll_in_the_child_equals_the_parents_log_softmax():
    """What the runtime child returns instead of the logits: each next token's NLL, as perplexity computes it."""
    from putri_export.eval.perplexity import window_nll
    from putri_export.runtime.process import token_nll

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((9, 50)) * 8).astype(np.float32)
    tokens = rng.integers(0, 50, 9).tolist()
    expected = window_nll(lambda _: torch.from_numpy(logits)[None], torch.tensor([tokens]))
    assert token_nll(logits, tokens).shape == (8,)
    assert token_nll(logits, tokens).sum() == pytest.approx(float(expected), rel=1e-6)
