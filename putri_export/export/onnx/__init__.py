"""ONNX export with a per-layer KV cache, for ONNX Runtime.

onnxruntime-genai's builder and optimum's Llama config assume one head count for all layers, so the
graph is exported here: ``torch.onnx.export(dynamo=True)`` of a thin wrapper that takes one (key,
value) pair per attention layer, rebuilds transformers' ``DynamicCache`` and runs our model. Inputs:
``input_ids``, ``attention_mask`` (past + new), ``position_ids``, ``past_key_values.{l}.key/value``
[batch, K_l, past, head_dim] for each layer l with attention; outputs ``logits`` and
``present.{l}.key/value``. ``putri_onnx.json`` beside the model describes this layout, and ``genai_config.json``
describes it to onnxruntime-genai (``onnxruntime_genai.Model(folder)`` generates from the folder; its KV cache takes
each layer's shape from the graph's inputs, so per-layer KV heads and attention-free layers need nothing more).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from ...atomic import staged
from ...errors import PutriError
from ...model import PutriForCausalLM
from ...model.blocks import LAYER_PREFIX, BlockStore
from ...runtime.ort import LAYOUT_FILE
from ..formats import ONNX_ATTENTIONS, QUANTIZATIONS
from .attention import ATTENTION_NAME, CacheBuffers, translations
from .gptq import gptq_weights
from .quantize import DEFAULT_INT4_METHOD, INT4_METHODS, quantize_weights

__all__ = ["DEFAULT_INT4_METHOD", "INT4_METHODS", "genai_config", "gptq_weights", "layout", "write_onnx"]

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def attention_layers(model: PutriForCausalLM) -> list[int]:
    return [i for i, h in enumerate(model.config.num_attention_heads_per_layer) if h > 0]


class _CachedDecoder(nn.Module):
    """Flat per-layer KV tensors in and out, transformers' cache and model inside."""

    def __init__(self, model: PutriForCausalLM):
        super().__init__()
        self.model = model
        self.layers = attention_layers(model)

    def forward(self, input_ids, attention_mask, position_ids, past):
        cache = DynamicCache(config=self.model.config)
        for (key, value), layer in zip(past, self.layers):
            cache.update(key, value, layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        present = []
        for layer in self.layers:
            present += [cache.layers[layer].keys, cache.layers[layer].values]
        return (out.logits, *present)


class _InPlaceCacheDecoder(_CachedDecoder):
    """Each layer's cache buffer in and out of a GroupQueryAttention node (:mod:`.attention`); the model runs with
    that attention function and no transformers cache."""

    def forward(self, input_ids, attention_mask, position_ids, past):
        buffers = CacheBuffers(dict(zip(self.layers, past)), attention_mask)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, cache_buffers=buffers)
        present = []
        for layer in self.layers:
            present += buffers.present[layer]
        return (out.logits, *present)


class _DecoderWithoutCache(_CachedDecoder):
    """A model without attention layers has no cache inputs (the mask and positions are still taken, unused)."""

    def forward(self, input_ids, attention_mask, position_ids):
        return super().forward(input_ids, attention_mask, position_ids, ())


def _example_inputs(model: PutriForCausalLM):
    # Batch ≥ 2 and a non-empty past: size-0/1 example dims would be frozen into the graph.
    c = model.config
    batch, new, past = 2, 5, 3
    ids = torch.randint(0, c.vocab_size, (batch, new))
    mask = torch.ones(batch, past + new, dtype=torch.long)
    pos = torch.arange(past, past + new)[None].expand(batch, -1)
    kv = tuple(
        (torch.zeros(batch, c.num_key_value_heads_per_layer[l], past, c.head_dim),
         torch.zeros(batch, c.num_key_value_heads_per_layer[l], past, c.head_dim))
        for l in attention_layers(model))
    return ids, mask, pos, kv


def layout(model: PutriForCausalLM, quantization: str, attention: str = "gqa",
           int4_method: str = DEFAULT_INT4_METHOD) -> dict:
    c = model.config
    layers = attention_layers(model)
    return {
        "format": "putri-export onnx decoder v2",
        "attention": attention,
        "model_type": c.model_type,
        "model_file": MODEL_FILE,
        "quantization": quantization,
        "int4_method": int4_method if quantization == "int4" else None,
        "num_hidden_layers": c.num_hidden_layers,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads_per_layer": list(c.num_attention_heads_per_layer),
        "num_key_value_heads_per_layer": list(c.num_key_value_heads_per_layer),
        "intermediate_size_per_layer": list(c.intermediate_size_per_layer),
        "cache_layers": layers,
        "inputs": ["input_ids", "attention_mask", "position_ids"]
        + [f"past_key_values.{l}.{kv}" for l in layers for kv in ("key", "value")],
        "outputs": ["logits"] + [f"present.{l}.{kv}" for l in layers for kv in ("key", "value")],
        "kv_dtype": "float32",
        "padding_side": ("right (GroupQueryAttention takes each row's length from attention_mask)" if attention == "gqa"
                         else "any (attention_mask is honoured; position_ids must skip padding)"),
        # gqa: past_key_values.{l}.* [batch, K_l, capacity, head_dim] bound to the same buffer as present.{l}.*;
        # attention_mask's width is the length after the step
        "kv_cache": "in-place" if attention == "gqa" else "concatenated",
    }


def write_onnx(model: PutriForCausalLM, tokenizer_dir: Path, out: Path, quantization: str = "none",
               opset: int = 23, overwrite: bool = False, blocks: BlockStore | None = None,
               attention: str = "gqa", int4_method: str = DEFAULT_INT4_METHOD,
               gptq_codes: dict | None = None) -> dict:
    """Export to the folder ``out`` (temp folder + rename: nothing partial is left behind).

    ``blocks``: a streamed model's block store; its weights are read one tensor at a time while the file is
    written (the int8/int4 quantizers then load the fp32 graph whole). ``int4_method``: one of
    :data:`INT4_METHODS`; the GPTQ methods take ``gptq_codes`` (:func:`gptq_weights` of ``model``)."""
    if quantization not in QUANTIZATIONS:
        raise PutriError(f"unknown --quantize {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if attention not in ONNX_ATTENTIONS:
        raise PutriError(f"unknown --attention {attention!r}: choose one of {', '.join(ONNX_ATTENTIONS)}")
    if quantization == "int4" and int4_method not in INT4_METHODS:
        raise PutriError(f"unknown int4 method {int4_method!r}: choose one of {', '.join(INT4_METHODS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise PutriError(f"{out} exists; pass --overwrite to replace it")
    spec = layout(model, quantization, attention, int4_method)
    with staged(out, make_dir=True) as tmp:
        _export_graph(model, tmp / ("fp32.onnx" if quantization != "none" else MODEL_FILE), spec, opset,
                      _weight_reader(model, blocks))
        if quantization in ("int8", "int4"):
            quantize_weights(tmp / "fp32.onnx", tmp / MODEL_FILE, bits=int(quantization[3:]), method=int4_method,
                             gptq_codes=gptq_codes)
        if quantization != "none":
            for f in tmp.glob("fp32.onnx*"):
                f.unlink()
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, tmp / name)
        (tmp / LAYOUT_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        (tmp / GENAI_CONFIG).write_text(json.dumps(genai_config(model, spec), indent=2) + "\n")
    return spec


def genai_config(model: PutriForCausalLM, spec: dict) -> dict:
    """onnxruntime-genai's description of the exported decoder (the fields its model builder writes), greedy by
    default. A GroupQueryAttention graph shares one buffer between each layer's past and present (genai allocates it
    for ``max_length``); a graph of standard ops concatenates, so past and present are separate buffers."""
    from ...model.families import family_of

    c = model.config
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None) or c.eos_token_id
    pad = c.pad_token_id if c.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    return {
        "model": {
            "bos_token_id": getattr(generation, "bos_token_id", None) or c.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "context_length": c.max_position_embeddings,
            "type": family_of(c.model_type).name,
            "vocab_size": c.vocab_size,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": spec["model_file"],
                "head_size": c.head_dim,
                "hidden_size": c.hidden_size,
                # the dense counts; each layer's own KV-head count is the shape of its cache input
                "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads,
                "num_hidden_layers": c.num_hidden_layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": c.max_position_embeddings, "min_length": 0, "no_repeat_ngram_size": 0,
                   "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": spec["kv_cache"] == "in-place",
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


# onnxscript's optimizer folds constants of at most this many elements (its input_size_limit default)
FOLDED_CONSTANT_LIMIT = 8192


def _weight_reader(model: PutriForCausalLM, blocks: BlockStore | None) -> Callable[[str], torch.Tensor]:
    """The tensor of a graph initializer named after the exported wrapper's attribute ("model." + the HF name): the
    parameter or buffer of ``model`` (a streamed model's block tensors: read from its store)."""
    def read(initializer: str) -> torch.Tensor:
        name = initializer.removeprefix("model.")
        if blocks is not None and name.startswith(LAYER_PREFIX):
            layer, _, rest = name[len(LAYER_PREFIX):].partition(".")
            return blocks.tensor(int(layer), rest)
        try:
            return model.get_parameter(name)
        except AttributeError:
            return model.get_buffer(name)
    return read


def _lazy_initializer(read: Callable[[str], torch.Tensor], name: str, value, perm: tuple[int, ...] | None = None):
    """An initializer whose data (``read(name)``, permuted by ``perm``) is read when the file is written, and
    dropped after."""
    import onnx_ir as ir

    def load():
        dtype = getattr(torch, value.dtype.numpy().name)
        tensor = read(name).detach()
        if perm is not None:
            tensor = tensor.permute(perm)
        return ir.tensor(tensor.to("cpu", dtype).contiguous().numpy(), name=value.name)
    return ir.LazyTensor(load, dtype=value.dtype, shape=value.shape, name=value.name)


def _fold_weight_transposes(graph, late: set[str], read: Callable[[str], torch.Tensor]) -> None:
    """``Transpose(weight)`` → the transposed weight, read lazily: the folding the optimizer does for the weights
    it holds (so ONNX Runtime does not transpose every weight when it loads the model)."""
    import onnx_ir as ir

    for node in list(graph):
        source = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if source is None or source.name not in late or len(source.uses()) != 1 or source.is_graph_output():
            continue
        perm = tuple(node.attributes["perm"].as_ints())
        out = node.outputs[0]
        folded = ir.Value(name=out.name, shape=ir.Shape([source.shape[p] for p in perm]), type=source.type)
        late.remove(source.name)
        folded.const_value = _lazy_initializer(read, source.name, folded, perm)
        out.replace_all_uses_with(folded)
        graph.remove(node, safe=True)
        del graph.initializers[source.name]
        graph.register_initializer(folded)


def _export_graph(model: PutriForCausalLM, path: Path, spec: dict, opset: int,
                  read: Callable[[str], torch.Tensor]) -> None:
    """Trace a fake-tensor copy of ``model`` (shapes only: no weight is touched, a streamed model's blocks may
    be absent), attach every initializer as a lazy read of ``read(name)``, then optimize and save as torch's
    exporter does: the weights are written one at a time to the external data file."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = type(model)(copy.deepcopy(model.config)).eval()
    layers, in_place = spec["cache_layers"], spec["attention"] == "gqa"
    if in_place:
        fake.config._attn_implementation = ATTENTION_NAME
    batch, seq, total, past = (torch.export.Dim(n) for n in ("batch", "seq", "total", "past"))
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
               "position_ids": {0: batch, 1: seq}, "past": tuple(({0: batch, 2: past}, {0: batch, 2: past})
                                                                 for _ in layers)}
    decoder = (_InPlaceCacheDecoder if in_place else _CachedDecoder)(fake).eval()
    inputs = _example_inputs(model)
    if not layers:  # no attention anywhere: torch.export cannot match an empty tuple input, so leave it out
        decoder, inputs = _DecoderWithoutCache(fake).eval(), inputs[:3]
        del dynamic["past"]
    with torch.no_grad():
        program = torch.onnx.export(decoder, inputs, dynamo=True, optimize=False, dynamic_shapes=dynamic,
                                    input_names=spec["inputs"], output_names=spec["outputs"], opset_version=opset,
                                    custom_translation_table=translations() if in_place else None, verbose=False)
    # The optimizer folds only small constants, but it reads (and keeps) every initializer it is given: the large
    # ones are attached after it ran, so that each is read once, when the file is written.
    graph = program.model.graph
    late: set[str] = set()
    for value in graph.initializers.values():
        if value.const_value.size <= FOLDED_CONSTANT_LIMIT:
            value.const_value = _lazy_initializer(read, value.name, value)
        else:
            value.const_value = None
            late.add(value.name)
    # (its deduplication pass then warns, once per held-back weight, that it skipped them)
    dedup_log = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    level = dedup_log.level
    dedup_log.setLevel(logging.ERROR)
    try:
        program.optimize()
    finally:
        dedup_log.setLevel(level)
    _fold_weight_transposes(graph, late, read)
    for name in late:
        graph.initializers[name].const_value = _lazy_initializer(read, name, graph.initializers[name])
    program.save(str(path), external_data=True)
