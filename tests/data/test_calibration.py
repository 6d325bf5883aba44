"""Calibration sets: windows split evenly over corpora, and the spread subsets that score on a few of them."""

from __future__ import annotations

from putri_export.data import load_calibration


def test_spread_windows_cover_the_set_and_every_prefix_sees_both_corpora(stories):
    calib = load_calibration(stories[1], "tinystories:train,wikitext2:valid", 16, 64)
    assert [s.samples for s in calib.sources] == [8, 8]  # tinystories windows 0-7, then wikitext2 8-15
    for count in (2, 4, 8, 16):
        rows = calib.spread(count)
        assert sorted(rows) == [round(i * 16 / count) for i in range(count)]
        assert {r < 8 for r in rows[:2]} == {True, False}  # the first two: one window of each corpus
    assert calib.spread(4) == [0, 8, 4, 12]
    assert calib.spread(1) == [0] and sorted(calib.spread(40)) == list(range(16))
