"""Greedy removal by loss, on known losses."""

from __future__ import annotations

from putri_export.prune.stages import greedy_removal


def test_greedy_removal_removes_cheapest_per_round():
    values = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 2.0, "e": 4.0}
    removed: list[str] = []

    def trial(c):  # loss of the current set plus this candidate
        return sum(values[x] for x in removed) + values[c]

    history = greedy_removal(list(values), trial, removed.extend, rounds=2, per_round=2)
    assert [r.removed for r in history] == [["b", "d"], ["c", "e"]]
    assert history[1].losses == {"a": 8.0, "c": 6.0, "e": 7.0}


def test_greedy_removal_stops_when_candidates_run_out():
    history = greedy_removal(["x"], lambda c: 0.0, lambda chosen: None, rounds=3, per_round=2)
    assert [r.removed for r in history] == [["x"]]
