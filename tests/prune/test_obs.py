"""Putri's closed-form math, each on a case whose answer is known."""

from __future__ import annotations

import torch

from putri_export.prune.obs import LinearPruner, damped, least_squares_columns, obs_scores


def _gram(z: torch.Tensor) -> torch.Tensor:
    return z.T.double() @ z.double()


def test_least_squares_update_is_exact_when_removed_neurons_depend_on_kept_ones():
    gen = torch.Generator().manual_seed(0)
    kept = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    # Two removed neurons are linear combinations of kept ones.
    removed = torch.stack([kept[:, 0] * 0.5 - kept[:, 3], kept[:, 1] + 2 * kept[:, 5]], dim=1)
    z = torch.cat([kept, removed], dim=1)
    w = torch.randn(10, 8, generator=gen, dtype=torch.float64)
    new = least_squares_columns(w, _gram(z), torch.arange(6))
    assert new.shape == (10, 6)
    torch.testing.assert_close(kept @ new.T, z @ w.T, rtol=1e-9, atol=1e-9)
    # Plain slicing (no update) does not reproduce it: the test can fail.
    assert (kept @ w[:, :6].T - z @ w.T).abs().max() > 0.1


def test_least_squares_with_every_channel_kept_returns_the_weights():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(least_squares_columns(w, _gram(z), torch.arange(5)), w, rtol=1e-9, atol=1e-9)


def test_least_squares_falls_back_when_kept_block_is_singular():
    z = torch.zeros(50, 3, dtype=torch.float64)
    z[:, 0] = torch.linspace(-1, 1, 50)  # channel 1 is dead: H[K, K] singular
    w = torch.ones(2, 3, dtype=torch.float64)
    new = least_squares_columns(w, _gram(z), torch.tensor([0, 1]))
    assert torch.isfinite(new).all()
    torch.testing.assert_close((z[:, :2] @ new.T), z @ w.T, rtol=1e-9, atol=1e-9)


def test_obs_scores_with_independent_channels():
    # Diagonal H: chol_upper(H^-1)[j, j]^2 = 1 / H[j, j], so score_j = sum_r e_r W[r, j]^2 H[j, j].
    h = torch.diag(torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64))
    w = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 1.0]], dtype=torch.float64)
    scores, used = obs_scores(w, h, tokens=10, damping=0.0)
    energy = ((w @ h) * w).sum(1) / 10
    expected = energy @ (w.pow(2) * torch.diagonal(h))
    assert used == 0.0
    torch.testing.assert_close(scores, expected)


def test_obs_scores_raise_damping_until_cholesky_works():
    h = torch.zeros(3, 3, dtype=torch.float64)
    h[0, 0] = 1.0  # rank 1: undamped Cholesky fails
    scores, used = obs_scores(torch.ones(2, 3, dtype=torch.float64), h, tokens=1, damping=0.0)
    assert used > 0 and torch.isfinite(scores).all()
    assert torch.argmax(scores) == 0  # the only live channel matters most


def test_damped_adds_relative_ridge():
    h = torch.diag(torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(damped(h, 0.5), torch.diag(torch.tensor([3.5, 5.5])))


def test_ffn_pruner_keeps_the_salient_neurons_and_updates():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(400, 4, generator=gen)
    z[:, 2] *= 0.01  # a nearly silent neuron
    z[:, 3] = z[:, 0] + 1e-4 * torch.randn(400, generator=gen)  # a near copy of neuron 0
    w = torch.randn(3, 4, generator=gen)
    pruner = LinearPruner(w)
    for chunk in z.split(100):
        pruner.add_batch(chunk)
    assert pruner.tokens == 400
    keep, columns, _ = pruner.prune(2, damping=1e-6)
    assert keep.tolist() in ([0, 1], [1, 3])  # drop the silent one and one of the twins
    err_updated = (z[:, keep] @ columns.T - z @ w.T).pow(2).mean()
    err_sliced = (z[:, keep] @ w[:, keep].T - z @ w.T).pow(2).mean()
    assert err_updated < 1e-3 * err_sliced


def test_obs_scores_equal_the_explicit_upper_cholesky_of_the_inverse():
    # One factor of the reversed H gives diag(chol_upper(H^-1)) without the inverse; compare with the explicit form.
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(400, 40, generator=gen, dtype=torch.float64) @ torch.randn(40, 40, generator=gen,
                                                                                dtype=torch.float64)
    h, w = _gram(z), torch.randn(7, 40, generator=gen, dtype=torch.float64)
    scores, _ = obs_scores(w, h, tokens=400, damping=1e-2)
    upper = torch.linalg.cholesky(torch.linalg.inv(damped(h, 1e-2)), upper=True)
    expected = (((w @ h) * w).sum(1) / 400) @ (w.pow(2) / torch.diagonal(upper).pow(2))
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=0)


def test_gram_stored_in_fp32_for_half_precision_weights_gives_the_same_choice():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(600, 48, generator=gen) @ torch.randn(48, 48, generator=gen)
    w = torch.randn(16, 48, generator=gen)
    full, half = LinearPruner(w), LinearPruner(w.bfloat16())
    assert full.hessian.dtype == torch.float64 and half.hessian.dtype == torch.float32
    full.add_batch(z)
    half.add_batch(z)
    keep_full, _, _ = full.prune(24)
    keep_half, cols_half, _ = half.prune(24)
    assert torch.equal(keep_full, keep_half)
    assert cols_half.dtype == torch.bfloat16 and torch.isfinite(cols_half.float()).all()


def test_group_removal_curve_equals_refitting_every_candidate():
    # The one-factor-per-step form (group OBS) against the definition: refit without each candidate, keep the best.
    from putri_export.prune.obs import allocate_removals, group_removal_curve, refit_error

    gen = torch.Generator().manual_seed(4)
    z = torch.randn(500, 48, generator=gen, dtype=torch.float64) @ torch.randn(48, 48, generator=gen,
                                                                                dtype=torch.float64)
    h, w = _gram(z), torch.randn(20, 48, generator=gen, dtype=torch.float64)
    groups = [torch.arange(g * 8, g * 8 + 8) for g in range(6)]
    order, errors = group_removal_curve(w, h, groups)
    remaining, expected_order, expected_errors = list(range(6)), [], [0.0]
    while remaining:
        trials = {g: refit_error(w, h, torch.cat([groups[i] for i in remaining if i != g])
                                 if len(remaining) > 1 else torch.zeros(0, dtype=torch.long)) for g in remaining}
        best = min(remaining, key=lambda g: (trials[g], g))
        expected_order.append(best)
        expected_errors.append(trials[best])
        remaining.remove(best)
    assert order == expected_order
    torch.testing.assert_close(torch.tensor(errors), torch.tensor(expected_errors), rtol=1e-4, atol=1e-6)
    assert errors == sorted(errors)  # nested removals only add error
    # Global allocation: the cheapest next removal first, never more groups than a layer has.
    assert allocate_removals({0: [0.0, 1.0, 5.0], 1: [0.0, 2.0, 2.5], 2: [0.0, 9.0]}, 3) == {0: 1, 1: 2, 2: 0}
    assert allocate_removals({0: [0.0, 1.0]}, 5) == {0: 1}


def test_least_squares_to_a_target_recovers_the_map_that_made_it():
    from putri_export.prune.obs import least_squares_to_target

    g = torch.Generator().manual_seed(3)
    z = torch.randn(500, 12, generator=g, dtype=torch.float64)
    true = torch.randn(5, 8, generator=g, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 9, 11])
    target = z[:, keep] @ true.T  # reachable from the kept channels exactly
    pruner = LinearPruner(torch.randn(5, 12, generator=g))  # (its own weights are irrelevant; fp32 as a model's)
    for part in (slice(0, 200), slice(200, 500)):
        pruner.add_batch(z[part].float(), target[part].float())
    torch.testing.assert_close(pruner.refit(keep), true.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(least_squares_to_target(z.T @ z, z.T @ target, keep), true)


def test_iterative_obs_with_one_round_is_the_one_shot_choice_and_finds_a_redundant_pair():
    from putri_export.prune.obs import iterative_obs_selection

    g = torch.Generator().manual_seed(4)
    z = torch.randn(400, 10, generator=g, dtype=torch.float64)
    z[:, 9] = z[:, 8] + 1e-3 * torch.randn(400, generator=g, dtype=torch.float64)  # a near-copy of channel 8
    w = torch.randn(4, 10, generator=g, dtype=torch.float64)
    h = z.T @ z
    one_shot = torch.sort(torch.topk(obs_scores(w, h, 400)[0], 6).indices).values
    assert torch.equal(iterative_obs_selection(w, h, 400, 6, rounds=1), one_shot)
    kept = iterative_obs_selection(w, h, 400, 9, rounds=4)
    assert kept.numel() == 9 and not ({8, 9} <= set(kept.tolist()))  # one of the pair goes: the other carries both
