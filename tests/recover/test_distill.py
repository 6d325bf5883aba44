"""The recovery losses and schedule (pure functions)."""

import math

import pytest
import torch

from putri_export.recover.distill import hidden_mse, learning_rate, teacher_topk, topk_kl


def _full_kl(student_logits, teacher_logits):
    t = torch.log_softmax(teacher_logits.double(), -1)
    s = torch.log_softmax(student_logits.double(), -1)
    return (t.exp() * (t - s)).sum(-1)


def test_topk_kl_with_the_whole_vocabulary_is_the_kl():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(3, 5, 50, generator=g) * 3, torch.randn(3, 5, 50, generator=g) * 3
    logp, ids = teacher_topk(teacher, 50)
    assert torch.allclose(topk_kl(student, logp, ids).double(), _full_kl(student, teacher), atol=1e-4)


def test_topk_kl_is_the_kl_of_the_coarsened_distributions():
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(4, 200, generator=g) * 4, torch.randn(4, 200, generator=g) * 4
    logp, ids = teacher_topk(teacher, 8)
    kl = topk_kl(student, logp, ids).double()
    full = _full_kl(student, teacher)
    # k + 1 bins: the top-k tokens and one bin for the rest, computed directly
    t_p, s_p = torch.softmax(teacher.double(), -1), torch.softmax(student.double(), -1)
    t_top, s_top = t_p.gather(-1, ids.long()), s_p.gather(-1, ids.long())
    t_bins = torch.cat([t_top, 1 - t_top.sum(-1, keepdim=True)], -1)
    s_bins = torch.cat([s_top, 1 - s_top.sum(-1, keepdim=True)], -1)
    direct = (t_bins * (t_bins.log() - s_bins.log())).sum(-1)
    assert torch.allclose(kl, direct, atol=1e-4)
    assert (kl >= -1e-6).all() and (kl <= full + 1e-6).all()  # coarsening never raises a KL


def test_topk_kl_is_zero_at_the_teacher_and_has_a_finite_gradient_when_confident():
    teacher = torch.zeros(2, 30)
    teacher[:, 3] = 40.0  # nearly all mass on one token: the rest bin is ~e^-40
    logp, ids = teacher_topk(teacher, 4)
    student = teacher.clone().requires_grad_(True)
    kl = topk_kl(student, logp, ids)
    assert float(kl.detach().abs().max()) < 1e-5
    kl.sum().backward()
    assert torch.isfinite(student.grad).all()
    other = torch.randn(2, 30, requires_grad=True)
    loss = topk_kl(other, logp, ids).sum()
    loss.backward()
    assert float(loss.detach()) > 1.0 and torch.isfinite(other.grad).all()


def test_hidden_mse_is_relative():
    h = torch.randn(2, 7, 16)
    assert float(hidden_mse(h, h)) == 0.0
    assert float(hidden_mse(torch.zeros_like(h), h)) == pytest.approx(1.0)
    assert float(hidden_mse(2 * h, h)) == pytest.approx(1.0)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    lrs = [learning_rate(s, 100, 1e-3, 10) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(1e-4)
    assert lrs[55] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert learning_rate(0, 1, 1e-3, 0) == pytest.approx(1e-3)
