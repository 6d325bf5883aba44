"""The tokenizer in GGUF: ``tokenizer.ggml.*`` from the HF tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from ...errors import PutriError

# Byte-level BPE pre-tokenizers llama.cpp knows, recognised from the HF tokenizer.json structure.
# Qwen2 / Qwen2.5 / Qwen3's split regex (tokenizer.json), which llama.cpp implements as pre-tokenizer "qwen2".
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _bpe_pre_name(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (tokenizer.ggml.pre "gpt2" is refused as unknown)
    if kinds == ["Digits", "ByteLevel"] and pre["pretokenizers"][0].get("individual_digits"):
        return "smollm"  # one digit per pre-token, then the GPT-2 regex
    if (kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and parts[0].get("behavior") == "Isolated" and not parts[1].get("use_regex", True)):
        return "qwen2"
    raise PutriError(f"byte-level BPE pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp is known to "
                     "reproduce here (supported: GPT-2 ByteLevel, Digits(individual)+ByteLevel, "
                     "Qwen2's Split+ByteLevel)")


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

