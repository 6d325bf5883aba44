"""Calibration sets: windows split over corpora (evenly or by SPEC*N shares), and the spread subsets that score
on a few of them."""

from __future__ import annotations

import pytest
import torch

from putri_export.data import load_calibration
from putri_export.data.calibration import window_shares
from putri_export.errors import PutriError


def test_spread_windows_cover_the_set_and_every_prefix_sees_both_corpora(stories):
    calib = load_calibration(stories[1], "tinystories:train,wikitext2:valid", 16, 64)
    assert [s.samples for s in calib.sources] == [8, 8]  # tinystories windows 0-7, then wikitext2 8-15
    for count in (2, 4, 8, 16):
        rows = calib.spread(count)
        assert sorted(rows) == [round(i * 16 / count) for i in range(count)]
        assert {r < 8 for r in rows[:2]} == {True, False}  # the first two: one window of each corpus
    assert calib.spread(4) == [0, 8, 4, 12]
    assert calib.spread(1) == [0] and sorted(calib.spread(40)) == list(range(16))


def test_shares_split_windows_in_proportion_and_a_bad_share_is_refused(stories):
    calib = load_calibration(stories[1], "tinystories:train*2, wikitext2:valid", 16, 64)
    assert [(s.corpus, s.samples) for s in calib.sources] == [("tinystories:train", 11), ("wikitext2:valid", 5)]
    even = load_calibration(stories[1], "tinystories:train,wikitext2:valid", 16, 64)
    # one share each is the even split, window for window; the weighted set starts with the same windows
    assert torch.equal(load_calibration(stories[1], "tinystories:train*1,wikitext2:valid*1", 16, 64).ids, even.ids)
    assert torch.equal(calib.ids[:8], even.ids[:8]) and torch.equal(calib.ids[11:], even.ids[8:13])
    assert window_shares(7, [1, 1, 1]) == [3, 2, 2] and window_shares(10, [3, 1]) == [8, 2]
    for bad in ("tinystories:train*0", "tinystories:train*x", "*2", "tinystories:train*1.5", "tinystories:train*²"):
        with pytest.raises(PutriError, match="SPEC\\*N with N a whole number"):
            load_calibration(stories[1], bad, 16, 64)
