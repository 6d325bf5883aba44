"""Bad input gets one clear error and never a partial artifact: damaged exports given to verify/bench,
short calibration text, existing outputs, a disk that fills up mid-write, no pickle, loopback servers."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_one_clear_error, run_cli

from putri_export.cli import build_parser
from putri_export.errors import PutriError
from putri_export.export.gguf import write_gguf
from putri_export.export.onnx import write_onnx
from putri_export.model import load_model, save_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "putri_export"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, stories_dir):
    root = tmp_path_factory.mktemp("hardening")
    model, _ = load_model(stories_dir)
    with torch.no_grad():
        write_gguf(model, stories_dir, root / "m.gguf", "f32", progress=False)
    write_onnx(model, stories_dir, root / "onnx")
    return root


def _damaged_onnx(exports: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "onnx"
    shutil.copytree(exports / "onnx", folder)
    data = next(folder.glob("*.onnx.data"), None) or next(folder.glob("*.data"))
    graph = folder / "model.onnx"
    if how == "truncated graph":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    elif how == "truncated weights":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "missing weights":
        data.unlink()
    return folder


@pytest.mark.parametrize("how, message", [("truncated graph", "is not a readable ONNX graph"),
                                          ("truncated weights", "is truncated: tensor"),
                                          ("missing weights", "is missing")])
def test_damaged_onnx_given_to_verify_and_bench(exports, stories_dir, tmp_path, how, message):
    folder = _damaged_onnx(exports, tmp_path, how)
    assert_one_clear_error(run_cli("verify", str(folder), "--against", str(stories_dir), "--max-windows", "1"),
                           message, str(folder))
    proc = run_cli("bench", str(folder), "--backend", "onnxruntime", "--depths", "0", "--repeats", "1",
                   "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, message, str(folder))
    assert not (tmp_path / "b").exists()


def test_truncated_gguf_given_to_bench(exports, tmp_path):
    gguf_file = tmp_path / "t.gguf"
    gguf_file.write_bytes((exports / "m.gguf").read_bytes()[:-4096])
    proc = run_cli("bench", str(gguf_file), "--backend", "llama.cpp", "--depths", "0", "--repeats", "1",
                   "--out", str(tmp_path / "b"))
    assert_one_clear_error(proc, "truncated", str(gguf_file))
    assert not (tmp_path / "b").exists()


def test_not_a_gguf_given_to_verify(stories_dir, tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    assert_one_clear_error(run_cli("verify", str(fake), "--against", str(stories_dir)), "not a readable GGUF file")


def test_corrupt_config_json(stories_dir, tmp_path):
    for f in stories_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    assert_one_clear_error(run_cli("info", str(tmp_path)), "corrupt config", "not valid JSON")


def test_calibration_text_shorter_than_one_window(stories_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n")
    proc = run_cli("prune", str(stories_dir), "--sparsity", "0.3", "--calib", str(short), "--calib-samples", "2",
                   "--calib-len", "128", "--out", str(tmp_path / "o"))
    assert_one_clear_error(proc, "0 windows of 128", "2 are needed")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["prune", "search"])
def test_pruning_refuses_an_existing_output(stories_dir, tmp_path, command):
    (tmp_path / "o").mkdir()
    proc = run_cli(command, str(stories_dir), "--sparsity", "0.3", "--out", str(tmp_path / "o"))
    assert_one_clear_error(proc, "exists; pass --overwrite")


def _fill_disk_after(limit: int):
    """A write that stops with ENOSPC after ``limit`` bytes, as a full disk does (the partial file stays)."""
    def write(path, data: bytes) -> None:
        Path(path).write_bytes(data[:limit])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write


def test_disk_full_while_saving_a_checkpoint_leaves_nothing(stories_dir, tmp_path, monkeypatch):
    import safetensors.torch
    import transformers.modeling_utils

    model, tok = load_model(stories_dir)
    full = _fill_disk_after(1000)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file",
                        lambda tensors, filename, metadata=None: full(filename, safetensors.torch.save(tensors)))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(model, tok, tmp_path / "ckpt", source_dir=stories_dir)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_exporting_onnx_leaves_nothing(stories_dir, tmp_path, monkeypatch):
    import putri_export.export.onnx as export_onnx

    model, _ = load_model(stories_dir)
    full = _fill_disk_after(10)
    # The graph and weights are written; the disk fills while the tokenizer files are copied.
    monkeypatch.setattr(export_onnx.shutil, "copy2", lambda src, dst: full(dst, Path(src).read_bytes()))
    with pytest.raises(OSError, match="No space left"):
        write_onnx(model, stories_dir, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_clear_cli_error(stories_dir, tmp_path, monkeypatch, capsys):
    import gguf

    from putri_export.cli import main

    full = _fill_disk_after(100)

    def write_tensors(self, progress: bool = False) -> None:
        full(self.path, b"\0" * 4096)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_tensors)
    code = main(["export", "gguf", str(stories_dir), "--out", str(tmp_path / "m.gguf"), "--type", "f32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("putri-export: error: ") and "No space left" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_no_pickle_loading_in_the_package():
    pattern = re.compile(r"pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)|allow_pickle=True|"
                         r"use_safetensors=False|\.bin\b['\"]")
    offenders = [f"{p.name}:{i}" for p in PACKAGE.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_pickled_weights_are_refused(stories_dir, tmp_path):
    shutil.copy(stories_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PutriError, match="never loads pickled"):
        load_model(tmp_path)


def test_server_binds_to_loopback_unless_told():
    args = build_parser().parse_args(["serve", "m.gguf"])
    assert args.host == "127.0.0.1"
