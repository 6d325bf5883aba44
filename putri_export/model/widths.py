"""The shape pruning changes: every layer's query heads, KV heads and FFN neurons, as one type.

A :class:`Widths` is what a per-layer-width config holds, what a pruning or search report lists, what a
``widths.json`` file stores and what an exporter writes per layer. 0 heads means the layer has no attention,
0 FFN neurons no FFN.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PutriError


@dataclass(frozen=True)
class LayerWidths:
    heads: int
    kv_heads: int
    ffn: int

    @property
    def group(self) -> int:
        """Query heads per KV head (0 without attention)."""
        return self.heads // self.kv_heads if self.kv_heads else 0


@dataclass(frozen=True)
class Widths:
    layers: tuple[LayerWidths, ...]

    @classmethod
    def of(cls, heads: Sequence[int], kv_heads: Sequence[int], ffn: Sequence[int]) -> Widths:
        if not len(heads) == len(kv_heads) == len(ffn):
            raise PutriError(f"widths need one entry per layer: got {len(heads)} heads, {len(kv_heads)} KV-head and "
                             f"{len(ffn)} FFN entries")
        return cls(tuple(LayerWidths(int(h), int(k), int(f)) for h, k, f in zip(heads, kv_heads, ffn)))

    @classmethod
    def from_config(cls, config) -> Widths:
        return cls.of(config.num_attention_heads_per_layer, config.num_key_value_heads_per_layer,
                      config.intermediate_size_per_layer)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerWidths]:
        return iter(self.layers)

    def __getitem__(self, layer: int) -> LayerWidths:
        return self.layers[layer]

    @property
    def heads(self) -> list[int]:
        return [w.heads for w in self.layers]

    @property
    def kv_heads(self) -> list[int]:
        return [w.kv_heads for w in self.layers]

    @property
    def ffn(self) -> list[int]:
        return [w.ffn for w in self.layers]

    def with_kv_and_ffn(self, kv_heads: Sequence[int], ffn: Sequence[int]) -> Widths:
        """These layers (each keeping its query heads per KV head) at other KV-head and FFN counts."""
        if len(kv_heads) != len(self) or len(ffn) != len(self):
            raise PutriError(f"the distribution has {len(kv_heads)} attention and {len(ffn)} FFN entries; the model "
                             f"has {len(self)} layers")
        return Widths.of([w.group * k for w, k in zip(self.layers, kv_heads)], kv_heads, ffn)

    def check_within(self, dense: Widths) -> None:
        """Pruning only removes: every layer at most as wide as ``dense``."""
        if len(self) != len(dense):
            raise PutriError(f"the distribution has {len(self)} layers; the model has {len(dense)}")
        for l, (w, d) in enumerate(zip(self.layers, dense.layers)):
            if not (0 <= w.kv_heads <= d.kv_heads and 0 <= w.ffn <= d.ffn):
                raise PutriError(f"layer {l}: asks for {w.kv_heads} KV heads and {w.ffn} FFN neurons; the model has "
                                 f"{d.kv_heads} and {d.ffn} (widths can only shrink)")

    def to_json(self) -> list[dict]:
        return [{"layer": l, "heads": w.heads, "kv_heads": w.kv_heads, "ffn": w.ffn} for l, w in enumerate(self.layers)]

    @classmethod
    def read(cls, path: Path, dense: Widths) -> Widths:
        """A distribution from JSON: a list of per-layer ``{"kv_heads", "ffn"}`` objects, or an object holding one
        under ``widths`` (``search_report.json``, ``pruning_report.json``, ``widths.json``). Query heads follow
        the dense model's heads per KV head; the result is checked against ``dense``."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PutriError(f"widths file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise PutriError(f"widths file {path} is not valid JSON ({e})") from None
        entries = data.get("widths") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise PutriError(f"widths file {path}: expected a list of per-layer objects with kv_heads and ffn "
                             '(e.g. [{"kv_heads": 2, "ffn": 768}, ...]) or {"widths": [...]}')
        try:
            kv, ffn = [int(e["kv_heads"]) for e in entries], [int(e["ffn"]) for e in entries]
        except (KeyError, TypeError, ValueError):
            raise PutriError(f"widths file {path}: every layer needs integer kv_heads and ffn") from None
        widths = dense.with_kv_and_ffn(kv, ffn)
        widths.check_within(dense)
        return widths
