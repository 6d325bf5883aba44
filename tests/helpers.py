"""Helpers the tests share (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "putri_export.cli", *args], capture_output=True, text=True, env=env)


def cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI's entry point (``putri_export.cli.main``, what the ``putri-export`` script calls) run in this process:
    for tests of what the CLI answers, without an interpreter start and a torch import per case (~6 s each).
    Tests of the process itself (exit by signal, console script) use :func:`run_cli`."""
    import torch

    from putri_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved, threads = dict(os.environ), torch.get_num_threads()  # a command's --threads must not outlive it
    os.environ.update(HF_HUB_OFFLINE="1", **(env_extra or {}))
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["putri-export", *args], code, out.getvalue(), err.getvalue())


def assert_one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    # Progress bars (tqdm: "stage 1: ...  40%|████ | 2/5") are not error lines.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("putri-export: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def fresh_stories(stories_dir):
    """A private copy (tests that resize layers must not touch the session model)."""
    from putri_export.model import load_model

    return load_model(stories_dir)[0]


def tiny_recipe(stories_dir, **kw):
    """A ``run`` recipe small enough for the suite: stories260K, f32 GGUF and fp32 ONNX, one window each."""
    from putri_export.run import Recipe

    base = {"model": str(stories_dir), "sparsity": 0.5, "formats": ["gguf", "onnx"], "gguf_types": ["f32"],
            "onnx_quantize": ["none"], "calib": "tinystories:train", "calib_samples": 8, "calib_len": 128,
            "eval_windows": 2, "verify_windows": 1, "bench_depths": [0], "bench_repeats": 1, "prompt_tokens": 16,
            "gen_tokens": 8, "threads": 1}
    return Recipe(**{**base, **kw})


# Real configs' shapes, scaled down (head counts and their ratios kept; widths divided; 4 layers; stories260K's
# 512-token vocabulary so its tokenizer serves): Qwen2.5-0.5B (tied, q/k/v biases), Qwen3-0.6B (tied, q/k norms,
# 16 heads x head_dim != hidden) and Qwen3-8B (untied).
FAMILY_SHAPES = {
    "qwen2.5-0.5b": ("qwen2", {"hidden_size": 112, "num_attention_heads": 14, "num_key_value_heads": 2,
                                   "intermediate_size": 608, "tie_word_embeddings": True, "use_sliding_window": False,
                                   "sliding_window": 512, "max_window_layers": 3}),
    "qwen3-0.6b": ("qwen3", {"hidden_size": 64, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 8,
                                 "intermediate_size": 192, "tie_word_embeddings": True}),
    "qwen3-8b": ("qwen3", {"hidden_size": 64, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 8,
                               "intermediate_size": 192, "tie_word_embeddings": False}),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def family_checkpoint(name: str, stories_dir, out, seed: int = 0, qwen_tokenizer: bool = False):
    """A dense transformers checkpoint of ``FAMILY_SHAPES[name]`` with random weights, biases and norm gains
    (non-trivial, so an exporter that drops one of them fails parity), and stories260K's tokenizer (or, with
    ``qwen_tokenizer``, a byte-level BPE of the same size with Qwen's pre-tokenizer, trained here)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family, shape = FAMILY_SHAPES[name]
    config = AutoConfig.for_model(family, vocab_size=512, num_hidden_layers=4, max_position_embeddings=512,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
                                  bos_token_id=1, eos_token_id=2, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                # Embeddings / head wide enough that greedy tokens are never near-ties (float noise cannot flip them).
                p.normal_(0, 0.5 if ("embed" in pname or "lm_head" in pname) else 1 / p.shape[-1] ** 0.5)
    model.save_pretrained(out)
    if qwen_tokenizer:
        qwen_style_tokenizer(512).save_pretrained(out)
    else:
        for f in TOKENIZER_FILES:
            shutil.copy2(stories_dir / f, out / f)
    return out


def qwen_style_tokenizer(vocab_size: int):
    """Qwen2/Qwen3's tokenizer design (their split regex, then byte-level BPE without a BOS), trained on
    TinyStories to ``vocab_size`` tokens: the real vocabulary cannot be downloaded here, the pre-tokenizer is what
    llama.cpp must reproduce."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from putri_export.data import load_corpus
    from putri_export.export.gguf.vocab import QWEN2_SPLIT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(load_corpus("tinystories:train").documents[:2000], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
