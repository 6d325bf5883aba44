"""Every input a user can hand us gets one specific error line (exit 2), and nothing is left behind.

Each case builds its bad input, runs the CLI's entry point (``helpers.cli``: ``putri_export.cli.main``, in this
process to spare an interpreter start per case), and checks the exit code, the single ``putri-export: error:`` line
for what was wrong, and that nothing was left behind. Grows with every format and family: add a row to ``CASES``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import assert_one_clear_error, cli, family_checkpoint
from safetensors.torch import load_file, save_file


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Path], list[str]]  # (work dir, stories dir) -> CLI arguments
    needles: tuple[str, ...]  # what the one error line must say


def _write(work: Path, name: str, content: bytes | str) -> Path:
    path = work / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _eval(spec: str):
    return lambda work, stories: ["eval", str(stories), "--data", spec if ":" in spec else str(work / spec)]


def _eval_file(name: str, content: bytes | str):
    return lambda work, stories: ["eval", str(stories), "--data", str(_write(work, name, content))]


def _parquet(name: str, table: dict):
    def make(work, stories):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(table), work / name)
        return ["eval", str(stories), "--data", str(work / name)]
    return make


def _stories_with(change: Callable[[dict], None]):
    """stories260K with its weights changed, given to ``prune``."""
    def make(work, stories):
        folder = work / "model"
        shutil.copytree(stories, folder)
        tensors = load_file(str(folder / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["prune", str(folder), "--sparsity", "0.5", "--out", str(work / "out"), "--calib", "tinystories:train",
                "--calib-samples", "2", "--calib-len", "64"]
    return make


def _poke(key: str, value: float, dtype: torch.dtype = torch.float32):
    def change(tensors):
        t = tensors[key].to(dtype).clone()
        t.view(-1)[7] = value
        tensors[key] = t
    return change


def _scaled(key: str, factor: float):
    def change(tensors):
        tensors[key] = tensors[key] * 1e19 * (factor / 1e19)  # in two steps: the factor itself overflows float32
    return change


def _config_change(**changes):
    def make(work, stories):
        folder = work / "model"
        shutil.copytree(stories, folder)
        config = json.loads((folder / "config.json").read_text()) | changes
        (folder / "config.json").write_text(json.dumps(config))
        return ["info", str(folder)]
    return make


def _family(name: str, command: str, **config):
    def make(work, stories):
        folder = family_checkpoint(name, stories, work / "model")
        if config:
            (folder / "config.json").write_text(json.dumps(json.loads((folder / "config.json").read_text()) | config))
        if command == "gguf":
            return ["export", "gguf", str(folder), "--out", str(work / "out.gguf"), "--type", "f32"]
        return [command, str(folder)]
    return make


def _tokenizer_pre(pre: dict):
    def make(work, stories):
        folder = family_checkpoint("qwen2.5-0.5b", stories, work / "model", qwen_tokenizer=True)
        tj = json.loads((folder / "tokenizer.json").read_text())
        tj["pre_tokenizer"] = pre
        (folder / "tokenizer.json").write_text(json.dumps(tj))
        return ["export", "gguf", str(folder), "--out", str(work / "out.gguf"), "--type", "f32", "--no-verify"]
    return make


EMBED = "model.embed_tokens.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"
CASES = {
    # text given to eval / calibration
    "empty text file": Case(_eval_file("empty.txt", b""), ("empty.txt is empty (0 bytes)", "accepted: UTF-8")),
    "binary file": Case(_eval_file("blob.txt", bytes(range(256)) * 4), ("is binary, not text", "NUL byte at offset 0")),
    "latin-1 text": Case(_eval_file("latin1.txt", "café crème\n".encode("latin-1")),
                         ("is not UTF-8 text", "byte 0xe9 at offset 3")),
    "truncated utf-8": Case(_eval_file("cut.txt", "naïve".encode()[:3]), ("ends inside a multi-byte character",)),
    "whitespace only": Case(_eval_file("blank.txt", "\n   \n\t\n"),
                            ("holds no text: every row is empty or whitespace",)),
    "too short for one window": Case(_eval_file("short.txt", "Once upon a time."),
                                     ("short.txt has", "fewer than one window of 512", "smaller --seq-len")),
    "jsonl without text field": Case(_eval_file("rows.jsonl", '{"body": "hello"}\n{"body": "world"}\n'),
                                     ("no record has a field 'text' (fields: body)",)),
    "jsonl with a bad line": Case(_eval_file("bad.jsonl", '{"text": "a"}\n{"text": \n'), ("line 2 is not JSON",)),
    "jsonl line not an object": Case(_eval_file("list.jsonl", '["text", "a"]\n'),
                                     ("line 1 is a JSON list, not an object",)),
    "parquet without text column": Case(_parquet("nums.parquet", {"n": [1, 2]}),
                                        ("has no column 'text' (columns: n: int64)",)),
    "parquet text column not strings": Case(_parquet("ints.parquet", {"text": [1, 2]}),
                                            ("column 'text' is int64, not a string",)),
    "not a parquet file": Case(_eval_file("fake.parquet", "hello"), ("is not a Parquet file",)),
    "unknown data suffix": Case(_eval_file("data.csv", "text\nhello\n"), ("unsupported data file", ".jsonl")),
    "missing data file": Case(_eval("missing.txt"), ("data file not found",)),
    "unknown split": Case(_eval("tinystories:nope"), ("unknown split 'nope' for tinystories", "validation")),
    "empty calibration file": Case(lambda work, s: ["prune", str(s), "--sparsity", "0.5", "--out", str(work / "out"),
                                                    "--calib",
                                                    str(_write(work, "calib.txt", b""))], ("calib.txt is empty",)),
    "calibration share not a whole number": Case(
        lambda work, s: ["prune", str(s), "--sparsity", "0.5", "--out", str(work / "out"), "--calib",
                         "tinystories:train*0.5"], ("'tinystories:train*0.5'", "SPEC*N with N a whole number >= 1")),
    "search calibration share of zero": Case(
        lambda work, s: ["search", str(s), "--sparsity", "0.5", "--out", str(work / "out"), "--calib",
                         "tinystories:train*0,wikitext2:valid"], ("'tinystories:train*0'", "accepted: SPEC or SPEC*N")),
    "run calibration share without a spec": Case(
        lambda work, s: ["run", str(s), "--sparsity", "0.5", "--out", str(work / "out"), "--calib", "*2"],
        ("'*2'", "SPEC*N")),
    "reconstruction text without a reconstruction": Case(
        lambda work, s: ["search", str(s), "--sparsity", "0.5", "--out", str(work / "out"), "--reconstruct-calib",
                         "tinystories:train-2mib"], ("--reconstruct-calib", "give --reconstruct-epochs N")),
    "reconstruction on a method without one": Case(
        lambda work, s: ["prune", str(s), "--sparsity", "0.5", "--out", str(work / "out"), "--method", "flap",
                         "--reconstruct-epochs", "2"], ("a stage of the Putri methods", "flap has none")),
    "recovery text share not a number": Case(
        lambda work, s: ["recover", str(s), "--teacher", str(s), "--out", str(work / "out"), "--data",
                         "tinystories:train-2mib*x"],
        ("'tinystories:train-2mib*x'", "SPEC*N")),
    # weights and activations that are not finite
    "NaN in a down_proj weight": Case(_stories_with(_poke(DOWN1, float("nan"))),
                                      (f"weight {DOWN1}, stored as F32 (torch.float32", "1 non-finite values (NaN)",
                                       "damaged")),
    "Inf in the embeddings": Case(_stories_with(_poke(EMBED, float("inf"))),
                                  (f"weight {EMBED}, stored as F32 (torch.float32", "(Inf)")),
    "NaN in a bf16 checkpoint": Case(_stories_with(_poke(DOWN1, float("nan"), torch.bfloat16)),
                                     (f"weight {DOWN1}, stored as BF16", "(NaN)")),
    "activations overflow to Inf": Case(_stories_with(_scaled(DOWN1, 5e38)),
                                        ("calibration hidden states leaving block 1 (torch.float32", "non-finite",
                                         "weights of block 1")),
    # models and families
    "unknown family": Case(_config_change(model_type="gemma"), ("model_type='gemma'", "GeGLU", "Supported: llama")),
    "qwen2 active sliding window": Case(_family("qwen2.5-0.5b", "info", use_sliding_window=True, sliding_window=64),
                                        ("unsupported qwen2 checkpoint: sliding_window=64 < context 512",)),
    "qwen3 attention_bias": Case(_family("qwen3-0.6b", "info", attention_bias=True), ("attention_bias=true",)),
    "untied qwen3 to gguf": Case(_family("qwen3-8b", "gguf"), ("untied Qwen3", "openelm", "export ONNX")),
    "unknown bpe pre-tokenizer": Case(_tokenizer_pre({"type": "Whitespace"}),
                                      ("is not one llama.cpp is known to reproduce", "Qwen2's Split+ByteLevel")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_specific_error_and_leaves_nothing(name, stories_dir, tmp_path):
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    args = case.make(work, stories_dir)
    before = {p.name for p in work.iterdir()}
    proc = cli(*args)
    assert_one_clear_error(proc, *case.needles)
    after = {p.name for p in work.iterdir()}
    assert after == before, f"left behind: {sorted(after - before)}"
    print(f"{name}: {proc.stderr.strip()}")
