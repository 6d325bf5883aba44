"""Write a random-weight Llama checkpoint with a real model's shapes (its quality is meaningless, its cost is real).

    python tools/synthetic_model.py --shape llama-3.2-1b --out /tmp/llama1b [--dtype bfloat16] [--vocab 32000]

The weights are written one block at a time as sharded safetensors (never the whole model in memory), with a
byte-level BPE tokenizer trained here on the calibration corpora of ../shared/data (never the evaluated splits),
so every putri-export command (prune, eval, export) runs on it as on a downloaded model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SHAPES = {  # the released configs' shapes (vocabulary: --vocab)
    "llama-3.2-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "intermediate_size": 8192, "tie_word_embeddings": True,
                     "rope_theta": 500000.0},
    "llama-3.2-3b": {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
                     "num_key_value_heads": 8, "intermediate_size": 8192, "tie_word_embeddings": True,
                     "rope_theta": 500000.0},
    "llama-3.1-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "intermediate_size": 14336, "tie_word_embeddings": False,
                     "rope_theta": 500000.0},
}
TOKENIZER_TEXT = ("wikitext-2-raw/wiki.valid.raw", "tinystories/train-v1-head-2mib.txt",
                  "c4/c4-en-train-00000-first1000.jsonl")


def train_tokenizer(vocab: int, data_dir: Path, out: Path) -> int:
    """A byte-level BPE (GPT-2 pre-tokenizer) of at most ``vocab`` tokens; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        for name in TOKENIZER_TEXT:
            path = data_dir / name
            if path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    yield json.loads(line)["text"]
            else:
                yield from path.read_text().split("\n\n")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(out)
    return tok.get_vocab_size()


def block_tensors(c: dict, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One decoder block: N(0, 0.02) projections (output projections scaled by 1/sqrt(2L), as GPT-2's init),
    RMSNorm gains near 1."""
    d, f, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out_std = 0.02 / math.sqrt(2 * c["num_hidden_layers"])

    def normal(rows: int, cols: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=gen) * std).to(dtype)

    def gain() -> torch.Tensor:
        return (1 + 0.05 * torch.randn(d, generator=gen)).to(dtype)

    return {"self_attn.q_proj.weight": normal(q, d), "self_attn.k_proj.weight": normal(kv, d),
            "self_attn.v_proj.weight": normal(kv, d), "self_attn.o_proj.weight": normal(d, q, out_std),
            "mlp.gate_proj.weight": normal(f, d), "mlp.up_proj.weight": normal(f, d),
            "mlp.down_proj.weight": normal(d, f, out_std), "input_layernorm.weight": gain(),
            "post_attention_layernorm.weight": gain()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--vocab", type=int, default=32000)
    shared_data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    p.add_argument("--data", default=os.environ.get("PUTRI_EXPORT_DATA", str(shared_data)),
                   help="folder with the calibration corpora the tokenizer is trained on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "config.json").exists():
        print(f"{out} exists", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    c = dict(SHAPES[args.shape])
    trained = train_tokenizer(args.vocab, Path(args.data), out)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": args.vocab,
              "head_dim": c["hidden_size"] // c["num_attention_heads"], "max_position_embeddings": 8192,
              "rms_norm_eps": 1e-5, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0, "dtype": args.dtype,
              "attention_bias": False, "mlp_bias": False, **c}
    gen = torch.Generator().manual_seed(args.seed)
    n = c["num_hidden_layers"]
    shards = [f"model-{i:05d}-of-{n + 1:05d}.safetensors" for i in range(1, n + 2)]
    weight_map, total = {}, 0
    for l in range(n):
        tensors = {f"model.layers.{l}.{k}": v for k, v in block_tensors(c, gen, dtype).items()}
        save_file(tensors, str(out / shards[l]), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shards[l]))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"block {l + 1}/{n} written", file=sys.stderr)
    rest = {"model.embed_tokens.weight": (torch.randn(args.vocab, c["hidden_size"], generator=gen) * 0.02).to(dtype),
            "model.norm.weight": torch.ones(c["hidden_size"], dtype=dtype)}
    if not c["tie_word_embeddings"]:
        rest["lm_head.weight"] = (torch.randn(args.vocab, c["hidden_size"], generator=gen) * 0.02).to(dtype)
    save_file(rest, str(out / shards[n]), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, shards[n]))
    total += sum(t.numel() * t.element_size() for t in rest.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    params = total // dtype.itemsize
    print(f"{out}: {args.shape} shapes, {params:,} parameters ({total / 1e9:.2f} GB in {args.dtype}, "
          f"{4 * params / 1e9:.2f} GB in float32), tokenizer {trained} tokens, vocabulary {args.vocab}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
