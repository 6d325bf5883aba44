"""Text corpora: local files, built-in names with a local copy, or hub datasets — loaded with ``datasets``.

Built-in names (``NAME`` or ``NAME:SPLIT``):
  wikitext2[:test]     WikiText-2 raw test            (local: wikitext-2-raw/wiki.test.raw)
  wikitext2:valid      WikiText-2 validation          (local: wikitext-2/valid.txt, the tokenized v1 copy: <unk>)
  wikitext2:valid-raw  WikiText-2 raw validation      (local: wikitext-2-raw/wiki.valid.raw, no <unk>)
  tinystories[:validation]  TinyStories validation    (local: tinystories/validation-head.txt, ~800 KB head)
  tinystories:train    TinyStories train              (local: tinystories/train-head.txt, ~200 KB head)
  tinystories:train-2mib  TinyStories V1 train        (local: tinystories/train-v1-head-2mib.txt, 2 MiB head)
  c4[:train]           C4 en train, first 1,000 documents of shard 0 (local only: c4/c4-en-train-00000-first1000.jsonl;
                       the documents the Putri reference calibrates on)
The local folder is ``$PUTRI_EXPORT_DATA``, else ``../shared/data`` (from the working directory or the
repository) when it exists; otherwise the hub dataset is tried. Convention: calibrate on a split that
is never evaluated (``wikitext2:valid``, ``tinystories:train``), evaluate on the others.

Documents are the non-empty lines of a text file (or rows of a JSONL/Parquet ``text`` column); a
corpus is the documents joined with a blank line, as in the original raw files.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import PutriError

DATA_ENV = "PUTRI_EXPORT_DATA"
LOCAL_SUFFIXES = {".txt": "text", ".raw": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DOC_SEPARATOR = "\n\n"
# Calibration by default: never the evaluated splits (WikiText-2 raw test, TinyStories validation).
DEFAULT_CALIBRATION = "wikitext2:valid,tinystories:train"
# The same two corpora as raw text: WikiText-2 validation without the tokenized split's literal <unk>, and a 2 MiB
# TinyStories head (run's default reconstruction reads it; the paper preset keeps DEFAULT_CALIBRATION).
RAW_CALIBRATION = "wikitext2:valid-raw,tinystories:train-2mib"


@dataclass(frozen=True)
class BuiltinSplit:
    local: str  # path under the local data folder
    hub: tuple[str, str | None, str] | None  # (dataset, config, split) for datasets.load_dataset; None: local only


BUILTIN_DATA: dict[str, dict[str, BuiltinSplit]] = {
    "wikitext2": {
        "test": BuiltinSplit("wikitext-2-raw/wiki.test.raw", ("wikitext", "wikitext-2-raw-v1", "test")),
        "valid": BuiltinSplit("wikitext-2/valid.txt", ("wikitext", "wikitext-2-v1", "validation")),
        "valid-raw": BuiltinSplit("wikitext-2-raw/wiki.valid.raw", ("wikitext", "wikitext-2-raw-v1", "validation")),
    },
    "tinystories": {
        "validation": BuiltinSplit("tinystories/validation-head.txt", ("roneneldan/TinyStories", None, "validation")),
        "train": BuiltinSplit("tinystories/train-head.txt", ("roneneldan/TinyStories", None, "train")),
        "train-2mib": BuiltinSplit("tinystories/train-v1-head-2mib.txt", ("roneneldan/TinyStories", None, "train")),
    },
    # (the whole C4 train split is ~300 GB: no hub fallback)
    "c4": {"train": BuiltinSplit("c4/c4-en-train-00000-first1000.jsonl", None)},
}
DEFAULT_SPLIT = {"wikitext2": "test", "tinystories": "validation", "c4": "train"}
# What perplexities are reported on: text that trains a model (recovery) must never be one of these.
EVALUATION_SPLITS = (("wikitext2", "test"), ("tinystories", "validation"))
# TinyStories' own files separate stories with this line; it is a separator, not text
STORY_SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Corpus:
    name: str  # what the user asked for
    source: str  # the file or hub dataset actually read
    documents: list[str]

    @property
    def text(self) -> str:
        return DOC_SEPARATOR.join(self.documents)


def local_data_dir() -> Path | None:
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def load_corpus(spec: str, text_column: str = "text") -> Corpus:
    """Load a corpus from a local file, a built-in name, or a hub dataset name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return Corpus(spec, str(path), _load_local(path, text_column))
    name, _, split = spec.partition(":")
    if name.lower() in BUILTIN_DATA:
        return _load_builtin(name.lower(), split or DEFAULT_SPLIT[name.lower()], spec)
    if path.suffix in LOCAL_SUFFIXES or os.sep in spec:
        raise PutriError(f"data file not found: {spec}")
    return _load_hub(spec, name, split or "train", None, text_column, builtin_hint=True)


def parse_weighted_specs(specs: str | list[str]) -> list[tuple[str, int]]:
    """``[(spec, weight)]`` from ``a,b*2``: a spec may end in ``*N`` (a whole number >= 1) to take N shares of the
    windows; the default is one share."""
    names = [s.strip() for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    parsed = []
    for name in names:
        base, star, weight = name.rpartition("*")
        if not star:
            parsed.append((name, 1))
        elif weight.strip().isdecimal() and int(weight) >= 1 and base.strip():
            parsed.append((base.strip(), int(weight)))
        else:
            raise PutriError(f"data spec {name!r}: a share must be written SPEC*N with N a whole number >= 1 "
                             "(e.g. tinystories:train-2mib*2,wikitext2:valid-raw); accepted: SPEC or SPEC*N")
    return parsed


def is_evaluation_source(source: str) -> bool:
    """Whether a corpus's ``source`` (the file or hub split it was read from) is an evaluation split, whether it was
    asked for by built-in name or by path."""
    data_dir = local_data_dir()
    for name, split in EVALUATION_SPLITS:
        builtin = BUILTIN_DATA[name][split]
        if data_dir is not None and Path(source).resolve() == (data_dir / builtin.local).resolve():
            return True
        if builtin.hub is not None:
            dataset, config, hub_split = builtin.hub
            if source == hub_source(dataset, config, hub_split):
                return True
    return False


ACCEPTED = ("accepted: UTF-8 text (.txt/.raw, one document per non-empty line), JSON lines (.jsonl/.json) with a "
            "string field {col!r}, Parquet (.parquet) with a string column {col!r}")


def _load_local(path: Path, text_column: str) -> list[str]:
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise PutriError(f"unsupported data file {path}: accepted suffixes are {', '.join(sorted(LOCAL_SUFFIXES))}")
    check_local_file(path, builder, text_column)
    from datasets import load_dataset

    try:
        ds = load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:
        raise PutriError(f"could not read {path} as {builder}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if text_column not in ds.column_names:
        raise PutriError(f"{path} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
                         + ACCEPTED.format(col=text_column))
    return _documents(ds[text_column], str(path))


def _load_builtin(name: str, split: str, spec: str) -> Corpus:
    splits = BUILTIN_DATA[name]
    if split not in splits:
        raise PutriError(f"unknown split {split!r} for {name}: choose one of {', '.join(splits)}")
    entry = splits[split]
    root = local_data_dir()
    local = root / entry.local if root is not None else None
    if local is not None and local.is_file():
        return Corpus(spec, str(local), _load_local(local, "text"))
    where = f"{local}" if local is not None else f"${DATA_ENV} or ../shared/data (neither exists)"
    if entry.hub is None:
        raise PutriError(f"dataset {spec!r} has no local copy at {where} and is not fetched from the hub (too large)")
    dataset, config, hub_split = entry.hub
    try:
        return _load_hub(spec, dataset, hub_split, config, "text")
    except PutriError as e:
        raise PutriError(f"dataset {spec!r} not available: no local copy at {where}, and the hub failed "
                         f"({e})") from None


def hub_source(dataset: str, config: str | None, split: str) -> str:
    """How a hub dataset split is named in a corpus's ``source``."""
    return f"hub:{dataset}" + (f"/{config}" if config else "") + f":{split}"


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be used (offline mode, no route), or None; answers in seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "offline mode is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"{host} is not reachable ({e.strerror or type(e).__name__})"
    return None


def _load_hub(spec: str, dataset: str, split: str, config: str | None, text_column: str,
              builtin_hint: bool = False) -> Corpus:
    hint = f" — not a local file and not a built-in name ({', '.join(sorted(BUILTIN_DATA))})" if builtin_hint else ""
    # Checked first: the hub client retries a dead network for half a minute before failing.
    reason = hub_unreachable_reason()
    if reason is not None:
        raise PutriError(f"unknown dataset {spec!r}{hint}; the hub cannot be asked: {reason}")
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, config, split=split)
    except Exception as e:
        raise PutriError(f"unknown dataset {spec!r}{hint}; hub load of {dataset!r} failed: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if text_column not in ds.column_names:
        raise PutriError(f"hub dataset {dataset!r} has no column {text_column!r} (columns: {ds.column_names})")
    source = hub_source(dataset, config, split)
    return Corpus(spec, source, _documents(ds[text_column], source))


def _documents(rows: list, source: str) -> list[str]:
    if any(r is not None and not isinstance(r, str) for r in rows):
        kind = next(type(r).__name__ for r in rows if r is not None and not isinstance(r, str))
        raise PutriError(f"{source}: the text column holds {kind} values, not strings")
    docs = [r.strip("\r\n") for r in rows if r is not None and r.strip() and r.strip() != STORY_SEPARATOR]
    if not docs:
        raise PutriError(f"{source} holds no text: every row is empty or whitespace")
    return docs


def check_local_file(path: Path, builder: str, text_column: str) -> None:
    """What ``datasets`` would report as a generic generation error, named: empty, binary, not UTF-8, not JSON
    lines, not Parquet, no text field/column."""
    accepted = ACCEPTED.format(col=text_column)
    if path.stat().st_size == 0:
        raise PutriError(f"{path} is empty (0 bytes); {accepted}")
    if builder in ("text", "json"):
        _check_utf8_text(path, accepted)
    if builder == "json" and path.suffix.lower() == ".jsonl":
        _check_json_lines(path, text_column, accepted)
    if builder == "parquet":
        _check_parquet(path, text_column, accepted)


def _check_utf8_text(path: Path, accepted: str) -> None:
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if (nul := chunk.find(b"\0")) >= 0:
                raise PutriError(f"{path} is binary, not text (a NUL byte at offset {offset + nul}); {accepted}")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise PutriError(f"{path} is not UTF-8 text (byte 0x{chunk[e.start]:02x} at offset {offset + e.start} "
                                 f"is not valid UTF-8); {accepted}") from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PutriError(f"{path} is not UTF-8 text (it ends inside a multi-byte character); {accepted}") from None


def _check_json_lines(path: Path, text_column: str, accepted: str) -> None:
    import json

    fields: set[str] = set()
    found = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PutriError(f"{path} line {number} is not JSON ({e.msg}); {accepted}") from None
            if not isinstance(record, dict):
                raise PutriError(f"{path} line {number} is a JSON {type(record).__name__}, not an object; {accepted}")
            found = found or text_column in record
            fields |= set(record)
    if found:
        return
    raise PutriError(f"{path}: no record has a field {text_column!r} (fields: {', '.join(sorted(fields)) or 'none'}); "
                     f"{accepted}")


def _check_parquet(path: Path, text_column: str, accepted: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise PutriError(f"{path} is not a Parquet file ({str(e).splitlines()[0]}); {accepted}") from None
    columns = ", ".join(f"{f.name}: {f.type}" for f in schema)
    if text_column not in schema.names:
        raise PutriError(f"{path} has no column {text_column!r} (columns: {columns}); {accepted}")
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise PutriError(f"{path}: column {text_column!r} is {kind}, not a string (columns: {columns}); {accepted}")
