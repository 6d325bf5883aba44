"""The one widths type: what configs, reports, widths.json files and exporters agree on."""

from __future__ import annotations

import json

import pytest

from putri_export.errors import PutriError
from putri_export.model import Widths, keep_kv_groups, slice_randomly


def test_widths_follow_the_config_through_surgery(stories_copy):
    model = stories_copy
    dense = Widths.from_config(model.config)
    assert dense.heads == [8] * 5 and dense.kv_heads == [4] * 5 and dense.ffn == [172] * 5 and dense[0].group == 2
    keep_kv_groups(model, 1, [0, 3])
    slice_randomly(model, [4, 2, 0, 1, 4], [172, 10, 0, 5, 1])
    widths = Widths.from_config(model.config)
    assert widths == dense.with_kv_and_ffn([4, 2, 0, 1, 4], [172, 10, 0, 5, 1])
    assert widths.heads == [8, 4, 0, 2, 8]  # each layer keeps its heads per KV head
    assert [w["heads"] for w in widths.to_json()] == widths.heads and widths.to_json()[2]["layer"] == 2


def test_widths_file_round_trips_and_is_checked(tmp_path):
    dense = Widths.of([8] * 3, [4] * 3, [100] * 3)
    target = dense.with_kv_and_ffn([4, 0, 1], [100, 7, 0])
    path = tmp_path / "widths.json"
    path.write_text(json.dumps({"widths": target.to_json()}))
    assert Widths.read(path, dense) == target
    path.write_text(json.dumps([{"kv_heads": 1, "ffn": 5}] * 3))  # a bare list is accepted too
    assert Widths.read(path, dense).kv_heads == [1, 1, 1]
    for content, message in ((json.dumps([{"kv_heads": 5, "ffn": 1}] * 3), "can only shrink"),
                             (json.dumps([{"kv_heads": 1, "ffn": 1}] * 2), "the model has 3 layers"),
                             (json.dumps([{"kv": 1}] * 3), "integer kv_heads and ffn"),
                             (json.dumps({"layers": []}), "expected a list"),
                             ("{", "not valid JSON")):
        path.write_text(content)
        with pytest.raises(PutriError, match=message):
            Widths.read(path, dense)
    with pytest.raises(PutriError, match="not found"):
        Widths.read(tmp_path / "missing.json", dense)
