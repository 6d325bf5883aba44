"""ONNX export: run by ONNX Runtime with its per-layer KV cache, compared with the PyTorch model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_one_clear_error

from putri_export.data import load_calibration
from putri_export.errors import PutriError
from putri_export.export import ParityCheck, verify_artifact
from putri_export.export.onnx import gptq_weights, write_onnx
from putri_export.model import load_model, save_checkpoint, slice_randomly
from putri_export.runtime.ort import OrtModel

SHAPES = {
    "dense": None,
    # layer 0 without attention, layer 2 without FFN, layer 3 with one KV head, layer 4 empty
    "mixed": ([0, 2, 3, 1, 0], [100, 50, 0, 172, 0]),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, stories_dir):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, shape in SHAPES.items():
        model, tok = load_model(stories_dir)
        if shape:
            slice_randomly(model, *shape, seed=21)
        folder = save_checkpoint(model, tok, root / name, source_dir=stories_dir)
        files = {}
        for quantization in ("none", "int8"):
            files[quantization] = root / f"{name}-{quantization}"
            write_onnx(model, folder, files[quantization], quantization)
        calibration = load_calibration(tok, "tinystories:train", 8, 256).ids
        for method in ("gptq", "rtn"):  # int4: the default (GPTQ from calibration text) and plain rounding
            key = "int4" if method == "gptq" else f"int4-{method}"
            files[key] = root / f"{name}-{key}"
            write_onnx(model, folder, files[key], "int4", int4_method=method,
                       gptq_codes=gptq_weights(model, calibration, progress=False) if method == "gptq" else None)
        files["standard"] = root / f"{name}-standard"  # portable ops, the cache concatenated (fp32)
        write_onnx(model, folder, files["standard"], attention="standard")
        out[name] = (folder, files)
    return out


@pytest.mark.parametrize("attention", ["none", "standard"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_fp32_full_sequence_and_cached_decode_match(exported, name, attention):
    folder, files = exported[name]
    report = verify_artifact(files[attention], folder, ParityCheck(data="tinystories", max_windows=2), progress=False)
    assert report.tokens_compared >= 256
    assert report.max_abs_logit_diff <= 1e-4 * report.max_abs_logit, report.summary()
    assert report.decode_steps == 32 and report.decode_max_abs_logit_diff <= 1e-4 * report.max_abs_logit
    assert report.greedy_agreement == 1.0 and report.passed, report.summary()


def test_a_streamed_export_writes_the_same_model_and_verifies_against_a_streamed_reference(exported, tmp_path):
    # Traced from a fake-tensor copy, each weight read from the block files as it is written: the same graph and
    # the same bytes as the in-memory export, and the streamed PyTorch reference passes the same parity check.
    import onnx

    from putri_export.compute import ComputeSettings
    from putri_export.model.blocks import open_model

    folder, files = exported["mixed"]
    model, _, _, blocks = open_model(folder, ComputeSettings(device="cpu", streaming="on"))
    out = tmp_path / "streamed"
    write_onnx(model, folder, out, "none", blocks=blocks)
    assert all(p.is_meta for p in model.model.layers.parameters())  # no block was materialized
    streamed, whole = (onnx.load(str(f / "model.onnx")) for f in (out, files["none"]))
    assert [n.op_type for n in streamed.graph.node] == [n.op_type for n in whole.graph.node]
    a = {i.name: onnx.numpy_helper.to_array(i) for i in streamed.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in whole.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    check = ParityCheck(data="tinystories", max_windows=2)
    report = verify_artifact(out, folder, check, threads=1, progress=False, streaming="on")
    assert report.passed and report.max_abs_logit_diff <= 1e-4 * report.max_abs_logit, report.summary()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_onnxruntime_genai_generates_the_greedy_tokens_of_pytorch(exported, quantization, stories):
    """The exported folder is an onnxruntime-genai model as it stands (genai_config.json, tokenizer files): layer 0
    without attention, per-layer KV heads, an FFN-free layer."""
    og = pytest.importorskip("onnxruntime_genai", reason="the onnxruntime-genai wheel is not installed")
    folder, files = exported["mixed"]
    model, tok = load_model(folder)
    prompt = tok("Once upon a time, there was a little", return_tensors="pt").input_ids
    new = 24
    runtime = og.Model(str(files[quantization]))
    params = og.GeneratorParams(runtime)
    params.set_search_options(max_length=prompt.shape[1] + new, do_sample=False)
    generator = og.Generator(runtime, params)
    generator.append_tokens(prompt[0].numpy().astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    got = list(generator.get_sequence(0))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0].tolist()
    if quantization == "none":
        assert got == expected
    else:  # int8 changes the (randomly sliced) model's tokens: genai must decode what ONNX Runtime itself does
        ours, _ = OrtModel(files[quantization]).greedy(prompt[0].tolist(), new)
        assert got == prompt[0].tolist() + ours
    tokens = og.Tokenizer(runtime).encode("Once upon a time, there was a little")
    # it reads the folder's tokenizer files (and, unlike HF's, adds no BOS)
    assert [int(t) for t in tokens] == tok("Once upon a time, there was a little", add_special_tokens=False).input_ids


def test_each_attention_layer_is_one_group_query_attention_node_at_its_own_widths(exported):
    import onnx

    folder, files = exported["mixed"]
    model, _ = load_model(folder)
    graph = onnx.load(str(files["none"] / "model.onnx"), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    attrs = [{a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT} for n in nodes]
    c = model.config
    assert [(a["num_heads"], a["kv_num_heads"]) for a in attrs] == [
        (c.num_attention_heads_per_layer[l], c.num_key_value_heads_per_layer[l]) for l in (1, 2, 3)]
    assert all(n.domain == "com.microsoft" for n in nodes)
    # the cache is never concatenated: each present is the node's own output
    assert not any(n.op_type == "Concat" and any(i.startswith("past_key_values") for i in n.input) for n in graph.node)
    standard = onnx.load(str(files["standard"] / "model.onnx"), load_external_data=False).graph
    assert not any(n.op_type == "GroupQueryAttention" for n in standard.node)
    spec = json.loads((files["none"] / "putri_onnx.json").read_text())
    genai = json.loads((files["none"] / "genai_config.json").read_text())
    assert spec["kv_cache"] == "in-place" and genai["search"]["past_present_share_buffer"] is True
    assert json.loads((files["standard"] / "genai_config.json").read_text())["search"][
        "past_present_share_buffer"] is False


def test_in_place_cache_is_written_in_the_bound_buffers_and_grows(exported, tinystories_ids):
    """Decoding with buffers bound as past and present (starting too small, so they grow) leaves exactly the keys
    and values the concatenating graph returns, and the same logits."""
    from putri_export.runtime.ort import InPlaceCache

    _, files = exported["mixed"]
    in_place, standard = OrtModel(files["none"], tokenizer=False), OrtModel(files["standard"], tokenizer=False)
    ids = tinystories_ids[:40].numpy()[None]
    cache, grown = in_place.new_cache(capacity=8), standard.new_cache()
    assert isinstance(cache, InPlaceCache) and isinstance(grown, dict)
    buffer = cache.arrays["past_key_values.1.key"]
    a, cache = in_place.step(ids[:, :7], cache, 0)
    b, grown = standard.step(ids[:, :7], grown, 0)
    assert cache.arrays["past_key_values.1.key"] is buffer  # written in place, not replaced
    for t in range(7, 40):
        a, cache = in_place.step(ids[:, t:t + 1], cache, t)
        b, grown = standard.step(ids[:, t:t + 1], grown, t)
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max())
    assert cache.capacity >= 40
    for name, value in grown.items():
        np.testing.assert_allclose(cache.arrays[name][:, :, :40], value, atol=1e-5)


def test_the_traced_attention_function_computes_the_models_attention(exported, tinystories_ids):
    """The reference implementation of the custom op the graph is traced through (cache written at seqlens_k, causal
    over the valid positions) gives the model's own logits: the op means what the contrib op computes."""
    from putri_export.export.onnx import _example_inputs, _InPlaceCacheDecoder
    from putri_export.export.onnx.attention import ATTENTION_NAME

    folder, _ = exported["mixed"]
    model, _ = load_model(folder)
    ids = tinystories_ids[:24][None]
    with torch.no_grad():
        expected = model(ids).logits
        model.config._attn_implementation = ATTENTION_NAME
        kv = [(torch.zeros(1, k.shape[1], 32, k.shape[3]), torch.zeros(1, v.shape[1], 32, v.shape[3]))
              for k, v in _example_inputs(model)[3]]
        decoder = _InPlaceCacheDecoder(model)
        first = decoder(ids[:, :16], torch.ones(1, 16, dtype=torch.long), torch.arange(16)[None], kv)
        kv = list(zip(first[1::2], first[2::2]))
        second = decoder(ids[:, 16:], torch.ones(1, 24, dtype=torch.long), torch.arange(16, 24)[None], kv)
    torch.testing.assert_close(first[0], expected[:, :16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second[0], expected[:, 16:], atol=1e-5, rtol=1e-5)


def test_cache_inputs_follow_per_layer_kv_heads(exported):
    _, files = exported["mixed"]
    runtime = OrtModel(files["none"])
    inputs = {i.name: i.shape for i in runtime.session.get_inputs()}
    assert "past_key_values.0.key" not in inputs and "past_key_values.4.key" not in inputs
    assert inputs["past_key_values.1.key"][1] == 2 and inputs["past_key_values.3.value"][1] == 1
    assert json.loads((files["none"] / "putri_onnx.json").read_text())["cache_layers"] == [1, 2, 3]


def test_batched_padded_prefill_matches_torch(exported, tinystories_ids):
    """Right padding with a mask: each row's real positions match PyTorch."""
    folder, files = exported["mixed"]
    model, _ = load_model(folder)
    runtime = OrtModel(files["none"])
    ids = torch.stack([tinystories_ids[100:140], tinystories_ids[300:340]])
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "position_ids": np.broadcast_to(np.arange(40), (2, 40)).astype(np.int64), **runtime.empty_cache(2)}
    logits = runtime.session.run(["logits"], feeds)[0]
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(logits[0], ref[0], atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(logits[1, :30], ref[1, :30], atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("name", list(SHAPES))
def test_int8_is_weight_only_matmulnbits_within_3_percent(exported, name):
    import onnx

    folder, files = exported[name]
    graph = onnx.load(str(files["int8"] / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(next(a.i for a in n.attribute if a.name == "bits") == 8 for n in nbits)
    # every weight matmul, the tied output projection included (given its own transposed weight)
    assert not any(n.op_type in ("MatMul", "Transpose") and "lm_head" in " ".join(n.input) for n in graph.node)
    assert any("lm_head" in " ".join(n.input) for n in nbits)
    assert not any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger") for n in graph.node)
    report = verify_artifact(files["int8"], folder, ParityCheck(data="tinystories", max_windows=4), progress=False)
    assert abs(report.ppl_rel_diff) <= 0.03, report.summary()


@pytest.mark.parametrize("name", list(SHAPES))
def test_int4_is_matmulnbits_and_gptq_beats_rounding(exported, name):
    import onnx

    folder, files = exported[name]
    graph = onnx.load(str(files["int4"] / "model.onnx"), load_external_data=False).graph
    bits = {n.input[1]: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node
            if n.op_type == "MatMulNBits"}
    assert not any(n.op_type == "MatMul" and n.input[1] not in bits for n in graph.node if len(n.input) > 1
                   and any(i.name == n.input[1] for i in graph.initializer))
    # the output projection stays in 8 bits (as llama.cpp keeps output.weight in Q6_K), the rest in 4
    assert [b for name, b in bits.items() if "lm_head" in name] == [8]
    assert {b for name, b in bits.items() if "lm_head" not in name} == {4}
    assert json.loads((files["int4"] / "putri_onnx.json").read_text())["int4_method"] == "gptq"
    check = ParityCheck(data="tinystories", max_windows=4)
    gptq = verify_artifact(files["int4"], folder, check, progress=False)
    rtn = verify_artifact(files["int4-rtn"], folder, check, progress=False)
    print(f"{name}: int4 perplexity vs fp32: gptq {gptq.ppl_rel_diff:+.2%}, rtn {rtn.ppl_rel_diff:+.2%}")
    # stories260K (64 wide, blocks of 32 cover half a row) is a worst case for 4-bit. The random "mixed" slice is a
    # broken model (ppl ~490) where 4-bit noise is amplified; its structure is proven by the fp32 test, here it must
    # run and stay sane, and GPTQ must still lose less than plain rounding.
    assert abs(gptq.ppl_rel_diff) < abs(rtn.ppl_rel_diff), (gptq.summary(), rtn.summary())
    if name == "dense":
        assert gptq.passed and abs(gptq.ppl_rel_diff) <= 0.10, gptq.summary()  # measured +6.8% (rtn +13.2%)
    else:
        assert abs(gptq.ppl_rel_diff) <= 0.5, gptq.summary()


def test_not_an_export_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PutriError, match="not a putri-export ONNX folder"):
        OrtModel(tmp_path)


def test_cli_export_onnx_refuses_existing_output(exported, tmp_path):
    folder, _ = exported["mixed"]
    out = tmp_path / "o"
    out.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "putri_export.cli", "export", "onnx", str(folder), "--out", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_cli_gptq_data_needs_a_gptq_int4_export(exported, tmp_path):
    folder, _ = exported["mixed"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "putri_export.cli", "export", "onnx", str(folder), "--out",
                           str(tmp_path / "o"), "--quantize", "int8", "--gptq-data", "tinystories:train"],
                          capture_output=True, text=True, env=env)
    assert_one_clear_error(proc, "--gptq-data", "--quantize int4")
    assert not (tmp_path / "o").exists()
