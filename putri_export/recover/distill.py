"""The math of recovery by distillation, as pure functions: the teacher's top-k summary of a distribution, the KL
of a student to it, hidden-state matching, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch


def teacher_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens of each position: their log-probabilities (fp32) and ids (int32).
    ``logits`` (..., V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return values, ids.to(torch.int32)


def _log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)) for logp <= 0, accurate at both ends."""
    logp = logp.clamp(max=-1e-7)
    return torch.where(logp > -0.693, torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def topk_kl(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_ids: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per position over k + 1 bins: the teacher's top-k tokens and the rest of the vocabulary
    as one bin (an exact KL of the two distributions coarsened the same way; with k = V it is the full KL).

    ``student_logits`` (..., V); ``teacher_logp`` and ``teacher_ids`` (..., k) from :func:`teacher_topk`."""
    s_logp_all = torch.log_softmax(student_logits.float(), dim=-1)
    s_logp = s_logp_all.gather(-1, teacher_ids.long())
    t_logp = teacher_logp.float()
    t_p = t_logp.exp()
    kl = (t_p * (t_logp - s_logp)).sum(-1)
    t_rest = _log1mexp(torch.logsumexp(t_logp, dim=-1))
    s_rest = _log1mexp(torch.logsumexp(s_logp, dim=-1))
    return kl + t_rest.exp() * (t_rest - s_rest)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Squared error of the student's hidden states to the teacher's, relative to the teacher's energy."""
    target = teacher_hidden.float()
    return (student_hidden.float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def learning_rate(step: int, steps: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` × peak at ``steps``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
