"""Qwen2 / Qwen3 as per-layer-width models: transformers' own logits at identity widths, pruning surgery with
biases and q/k norms, save → reload with and without putri_export, and what is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import FAMILY_SHAPES, family_checkpoint
from transformers import AutoModelForCausalLM

from putri_export.errors import PutriError
from putri_export.model import load_model, param_counts, save_checkpoint, slice_randomly
from putri_export.search.space import sublayers

NAMES = list(FAMILY_SHAPES)


@pytest.fixture(scope="module")
def checkpoints(stories_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: family_checkpoint(name, stories_dir, root / name) for name in NAMES}


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_identity_widths_equal_transformers_own_class(checkpoints, name):
    ref = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    model, _ = load_model(checkpoints[name])
    assert type(model).__name__ == f"Putri{type(ref).__name__}"
    with torch.no_grad():
        assert torch.equal(ref(_ids()).logits, model(_ids()).logits)
    assert param_counts(model).total == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_sliced_model_reloads_with_and_without_putri_export(checkpoints, name, stories_dir, tmp_path):
    model, tokenizer = load_model(checkpoints[name])
    kv = model.config.num_key_value_heads
    slice_randomly(model, [kv, 0, 1, kv // 2], [192, 7, 0, 33], seed=1)
    attn = model.model.layers[2].self_attn
    assert attn.q_proj.weight.shape[0] == attn.q_proj.out_features == model.config.num_attention_heads_per_layer[2] * 8
    if attn.q_proj.bias is not None:  # Qwen2's biases follow their heads
        assert attn.q_proj.bias.shape[0] == attn.q_proj.out_features
        assert attn.k_proj.bias.shape[0] == attn.k_proj.out_features == 8
    with torch.no_grad():
        expected = model(_ids(1)).logits
    folder = save_checkpoint(model, tokenizer, tmp_path / "pruned", source_dir=checkpoints[name])
    reloaded, _ = load_model(folder)
    with torch.no_grad():
        assert torch.equal(reloaded(_ids(1)).logits, expected)
    # trust_remote_code alone, in a process that never imports putri_export
    code = (f"import sys, torch, transformers; m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, "
            "trust_remote_code=True).eval(); assert 'putri_export' not in sys.modules; "
            "ids = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(1)); "
            f"torch.save(m(ids).logits, {str(tmp_path / 'remote.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "remote.pt"), expected)


@pytest.mark.parametrize("name", NAMES)
def test_search_space_counts_biases_and_qk_norms(checkpoints, name):
    model, _ = load_model(checkpoints[name])
    subs = sublayers(model)  # raises if its parameter formula disagrees with the modules
    assert sum(s.params(s.max_units) for s in subs) == param_counts(model).blocks


def test_cached_generation_equals_full_forward_with_empty_layers(checkpoints):
    model, _ = load_model(checkpoints["qwen3-0.6b"])
    slice_randomly(model, [0, 8, 0, 3], [0, 0, 50, 192], seed=2)
    prompt = _ids(3)[:, :12]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        full = model(out.sequences).logits[:, 11:21]
    torch.testing.assert_close(torch.stack(out.logits, 1), full, atol=2e-5, rtol=1e-5)


def _with_config(checkpoint, tmp_path, **changes):
    import shutil

    folder = tmp_path / "changed"
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_active_sliding_window_is_refused_before_loading(checkpoints, tmp_path):
    folder = _with_config(checkpoints["qwen2.5-0.5b"], tmp_path, use_sliding_window=True, sliding_window=64)
    with pytest.raises(PutriError, match=r"unsupported qwen2 checkpoint: sliding_window=64 < context 512"):
        load_model(folder)


def test_qwen3_with_attention_bias_is_refused(checkpoints, tmp_path):
    folder = _with_config(checkpoints["qwen3-0.6b"], tmp_path, attention_bias=True)
    with pytest.raises(PutriError, match="attention_bias=true"):
        load_model(folder)


def test_unknown_family_names_what_is_supported():
    from putri_export.model import family_of

    with pytest.raises(PutriError, match=r"model_type='gemma'.*Supported: llama, mistral, qwen2, qwen3"):
        family_of("gemma")
