"""The baselines' statistics (2SSP, ShortGPT, FLAP), each on a case whose answer is known."""

from __future__ import annotations

import pytest
import torch

from putri_export.prune import scores as baselines


def test_channel_stats_and_fluctuation():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    stats = baselines.ChannelStats(2)
    stats.add_batch(x[:1])
    stats.add_batch(x[1:])
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(stats.variance, torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(stats.l2_norm, torch.tensor([10.0, 8.0], dtype=torch.float64).sqrt())
    w = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    torch.testing.assert_close(baselines.fluctuation_scores(w, stats.variance),
                               torch.tensor([5.0, 0.0], dtype=torch.float64))


def test_flap_bias_compensates_constant_channels_exactly():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    x[:, 1] = 0.7  # constant channels: their contribution is exactly their mean
    x[:, 4] = -1.2
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    stats = baselines.ChannelStats(5)
    stats.add_batch(x)
    removed = torch.tensor([1, 4])
    kept = torch.tensor([0, 2, 3])
    bias = baselines.compensation_bias(w, stats.mean, removed)
    torch.testing.assert_close(x[:, kept] @ w[:, kept].T + bias, x @ w.T)


def test_standardize_and_global_selection():
    torch.testing.assert_close(baselines.standardize(torch.tensor([1.0, 3.0])),
                               torch.tensor([-0.7071, 0.7071]), atol=1e-4, rtol=0)
    assert baselines.standardize(torch.tensor([2.0])).tolist() == [0.0]
    units = [baselines.Unit("ffn", 0, i, cost) for i, cost in enumerate([10, 10, 10, 40])]
    scores = torch.tensor([0.3, 0.1, 0.2, 0.0])
    # Removal order 3, 1, 2, 0 with cumulative 40, 50, 60, 70: 50 is closest to 52.
    assert [u.index for u in baselines.global_selection(units, scores, 52)] == [3, 1]
    assert baselines.global_selection(units, scores, 0) == []


def test_block_influence_is_zero_for_identity_and_one_for_orthogonal():
    x = torch.randn(4, 8)
    bi = baselines.BlockInfluence()
    bi.add_batch(x, x)
    assert bi.value == pytest.approx(0.0, abs=1e-12)
    a = torch.tensor([[1.0, 0.0]])
    bi = baselines.BlockInfluence()
    bi.add_batch(a, torch.tensor([[0.0, 1.0]]))
    assert bi.value == pytest.approx(1.0)
