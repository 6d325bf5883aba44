"""GGUF export of a per-layer-width model, for stock llama.cpp.

Architecture choice (read from llama.cpp's loader and graph, and checked by the parity tests):
llama.cpp reads ``head_count``, ``head_count_kv`` and ``feed_forward_length`` as per-layer arrays for
every architecture, but the ``llama`` graph and tensor loader size every layer like layer 0, so a GGUF
whose layers differ fails to load. The ``deci`` architecture (Nemotron-51B) is per-layer throughout:
tensors, graph and KV cache, with attention-free (0 heads) and FFN-free layers. Its graph has two
defects we write around, both exactly (the added parts contribute zeros):

* layer 0 with 0 heads breaks the head-size derivation at load time → write it as deci's
  "linear attention" (head_count > 0, head_count_kv = 0, an all-zero ``attn_output``);
* a layer with attention and ``feed_forward_length`` 0 drops its attention output (the graph
  ``continue``s before adding it) → give it a tiny FFN (one quantization block of neurons) with an
  all-zero ``ffn_down``.

A layer with neither attention nor FFN is an identity in deci and needs nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import torch

from ..atomic import staged
from ..errors import PutriError
from ..model import PutriLlamaForCausalLM, Widths
from .formats import GGUF_TYPES, LOW_BIT

ARCH = "deci"
QUANT_BLOCK = 32  # Q8_0 / Q4_x / Q5_x block size; also the width of the placeholder FFN



@dataclass
class GGUFExportReport:
    path: str
    type: str
    bytes: int
    layers: list[dict]
    workarounds: list[str] = field(default_factory=list)
    fallback_tensors: dict[str, str] = field(default_factory=dict)  # name -> type used instead

    def to_dict(self) -> dict:
        return asdict(self)


def permute_for_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF → llama.cpp row order for Q/K: per head, interleave the two rotary halves.

    HF rotates (x[:D/2], x[D/2:]) pairs; llama.cpp's normal rope rotates adjacent (x[2i], x[2i+1]) pairs.
    """
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def _tensor_name(kind: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=layer) if layer is not None else base) + f".{suffix}"


class _TensorSink:
    """Quantizes and adds tensors to the writer; 1-D tensors and rows that do not fit a block stay wide."""

    def __init__(self, writer: gguf.GGUFWriter, type_name: str):
        self.writer = writer
        self.type_name = type_name
        self.qtype = GGUF_TYPES[type_name][0]
        self.fallback: dict[str, str] = {}

    def add(self, name: str, tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType | None = None) -> None:
        data = tensor.detach().to(torch.float32).contiguous().numpy()
        qtype = self.qtype if qtype is None else qtype
        if data.ndim == 1:
            qtype = gguf.GGMLQuantizationType.F32
        elif qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if data.shape[-1] % block:
                self.fallback[name] = "F16"
                qtype = gguf.GGMLQuantizationType.F16
        packed = gguf.quants.quantize(data, qtype)
        # Block types are passed as packed bytes; the writer derives the logical shape from them.
        self.writer.add_tensor(name, packed, raw_dtype=qtype)


def _write_hparams(writer: gguf.GGUFWriter, model: PutriLlamaForCausalLM, heads: list[int], kv: list[int],
                   ffn: list[int], type_name: str, name: str) -> None:
    c = model.config
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    # Written explicitly: otherwise llama.cpp derives the head size from layer 0's head count.
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(GGUF_TYPES[type_name][1])
    rope_type = c.rope_parameters.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(c.rope_parameters["factor"]))
    elif rope_type not in ("default", "llama3"):
        raise PutriError(f"RoPE type {rope_type!r} has no GGUF encoding here (supported: default, linear, llama3)")
    writer.add_custom_alignment(gguf.GGUF_DEFAULT_ALIGNMENT)


def _llama3_rope_freqs(model: PutriLlamaForCausalLM) -> torch.Tensor | None:
    """Llama-3 RoPE scaling has no GGUF key: llama.cpp divides each frequency by ``rope_freqs``."""
    c = model.config
    if c.rope_parameters.get("rope_type") != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](c, "cpu")
    d = c.head_dim
    base = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    return (base / scaled).float()


def write_gguf(model: PutriLlamaForCausalLM, tokenizer_dir: Path, out: Path, type_name: str = "f16",
               name: str | None = None, progress: bool = True) -> GGUFExportReport:
    """Write ``model`` (and the tokenizer found in ``tokenizer_dir``) to ``out`` atomically."""
    type_name = type_name.lower()
    if type_name not in GGUF_TYPES:
        raise PutriError(f"unknown GGUF type {type_name!r}: choose one of {', '.join(GGUF_TYPES)}")
    c = model.config
    if c.attention_bias or c.mlp_bias:
        raise PutriError("models with attention/MLP biases are not exported to GGUF yet")
    widths = Widths.from_config(c)
    heads, kv, ffn = widths.heads, widths.kv_heads, widths.ffn  # as written: the workarounds change them
    workarounds: list[str] = []
    if not any(heads):  # llama.cpp cannot create a context without a single KV-cache layer
        heads[0], kv[0] = c.num_attention_heads // c.num_key_value_heads, 1
        workarounds.append("no layer has attention: layer 0 written with one all-zero KV-head group "
                           "(zero attn_output) so that llama.cpp has a KV cache")
    elif heads[0] == 0:
        heads[0] = c.num_attention_heads  # "linear attention" with an all-zero output projection
        workarounds.append("layer 0 has no attention: written as deci linear attention with zero attn_output")
    last = c.num_hidden_layers - 1
    for layer in range(c.num_hidden_layers):
        # deci skips an FFN-free layer's residual update, dropping its attention output; in the last layer
        # that also drops the output-row selection, and llama.cpp aborts on the unallocated input.
        if ffn[layer] == 0 and (heads[layer] > 0 or layer == last):
            ffn[layer] = QUANT_BLOCK
            what = "attention but no FFN" if heads[layer] > 0 else "no FFN and is the last layer"
            workarounds.append(f"layer {layer} has {what}: placeholder FFN of {QUANT_BLOCK} "
                               "neurons with zero ffn_down")

    out = Path(out)
    with staged(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=ARCH)
        _write_hparams(writer, model, heads, kv, ffn, type_name, name or out.stem)
        write_tokenizer(writer, tokenizer_dir, c.vocab_size)
        sink = _TensorSink(writer, type_name)
        _write_tensors(sink, model, heads, kv, ffn, type_name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return GGUFExportReport(str(out), type_name, out.stat().st_size, widths.to_json(), workarounds, sink.fallback)


def _write_tensors(sink: _TensorSink, model: PutriLlamaForCausalLM, heads: list[int], kv: list[int],
                   ffn: list[int], type_name: str) -> None:
    T = gguf.MODEL_TENSOR
    c = model.config
    # llama.cpp's own low-bit recipes keep embeddings wider; Q8_0 is the widest block type gguf-py writes.
    emb_type = gguf.GGMLQuantizationType.Q8_0 if type_name in LOW_BIT else None
    sink.add(_tensor_name(T.TOKEN_EMBD), model.model.embed_tokens.weight, emb_type)
    sink.add(_tensor_name(T.OUTPUT_NORM), model.model.norm.weight)
    if not c.tie_word_embeddings:
        sink.add(_tensor_name(T.OUTPUT), model.lm_head.weight, emb_type)
    if (freqs := _llama3_rope_freqs(model)) is not None:
        sink.add(_tensor_name(T.ROPE_FREQS), freqs)
    d = c.hidden_size
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if attn is not None:
            sink.add(_tensor_name(T.ATTN_NORM, i), layer.input_layernorm.weight)
            sink.add(_tensor_name(T.ATTN_Q, i), permute_for_rope(attn.q_proj.weight, heads[i]))
            sink.add(_tensor_name(T.ATTN_K, i), permute_for_rope(attn.k_proj.weight, kv[i]))
            sink.add(_tensor_name(T.ATTN_V, i), attn.v_proj.weight)
            sink.add(_tensor_name(T.ATTN_OUT, i), attn.o_proj.weight)
            if attn.o_proj.bias is not None:  # FLAP compensation
                sink.add(_tensor_name(T.ATTN_OUT, i, "bias"), attn.o_proj.bias)
        elif heads[i] > 0:  # layer-0 workarounds, contributing exactly zero
            sink.add(_tensor_name(T.ATTN_NORM, i), torch.ones(d))
            if kv[i] > 0:  # one all-zero KV-head group
                q, k = heads[i] * c.head_dim, kv[i] * c.head_dim
                for kind, rows in ((T.ATTN_Q, q), (T.ATTN_K, k), (T.ATTN_V, k)):
                    sink.add(_tensor_name(kind, i), torch.zeros(rows, d))
                sink.add(_tensor_name(T.ATTN_OUT, i), torch.zeros(d, q))
            else:  # linear attention
                sink.add(_tensor_name(T.ATTN_OUT, i), torch.zeros(d, d))
        if mlp is not None:
            sink.add(_tensor_name(T.FFN_NORM, i), layer.post_attention_layernorm.weight)
            sink.add(_tensor_name(T.FFN_GATE, i), mlp.gate_proj.weight)
            sink.add(_tensor_name(T.FFN_UP, i), mlp.up_proj.weight)
            sink.add(_tensor_name(T.FFN_DOWN, i), mlp.down_proj.weight)
            if mlp.down_proj.bias is not None:
                sink.add(_tensor_name(T.FFN_DOWN, i, "bias"), mlp.down_proj.bias)
        elif ffn[i] > 0:  # placeholder FFN contributing exactly zero
            sink.add(_tensor_name(T.FFN_NORM, i), torch.ones(d))
            sink.add(_tensor_name(T.FFN_GATE, i), torch.zeros(ffn[i], d))
            sink.add(_tensor_name(T.FFN_UP, i), torch.zeros(ffn[i], d))
            sink.add(_tensor_name(T.FFN_DOWN, i), torch.zeros(d, ffn[i]))


# ---------------------------------------------------------------------------------------------
# Tokenizer

# Byte-level BPE pre-tokenizers llama.cpp knows, recognised from the HF tokenizer.json structure.
def _bpe_pre_name(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and pre["pretokenizers"][0].get("individual_digits"):
        return "smollm"  # one digit per pre-token, then the GPT-2 regex
    raise PutriError(f"byte-level BPE pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp is known to "
                     "reproduce here (supported: GPT-2 ByteLevel, Digits(individual)+ByteLevel)")


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path, n_vocab: int) -> None:
    """``tokenizer.ggml.*`` from the HF tokenizer files: SentencePiece → ``llama``, byte-level BPE → ``gpt2``."""
    tokenizer_dir = Path(tokenizer_dir)
    tj_path = tokenizer_dir / "tokenizer.json"
    tj = json.loads(tj_path.read_text()) if tj_path.is_file() else None
    if (tokenizer_dir / "tokenizer.model").is_file():
        vocab = gguf.vocab.SentencePieceVocab(tokenizer_dir)
        tokens, scores, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        load_merges = False
    elif tj is not None and tj["model"]["type"] == "BPE" and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        tokens, types = _bpe_tokens(tj)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_bpe_pre_name(tj))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        load_merges = True
    else:
        raise PutriError(f"no supported tokenizer in {tokenizer_dir}: need tokenizer.model (SentencePiece) or a "
                         "byte-level BPE tokenizer.json")
    if len(tokens) != n_vocab:
        raise PutriError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {n_vocab}")
    gguf.SpecialVocab(tokenizer_dir, load_merges=load_merges, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


def _bpe_tokens(tj: dict) -> tuple[list[str], list[int]]:
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for text, t in added.items():
        vocab.setdefault(text, t["id"])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise PutriError("tokenizer.json token ids are not contiguous")
    tokens, types = [], []
    for text, _ in by_id:
        tokens.append(text)
        if text in added:
            types.append(gguf.TokenType.CONTROL if added[text].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types

