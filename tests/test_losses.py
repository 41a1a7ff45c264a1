"""Loss values against hand computations; schedules against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import losses
from losses import Objective, Schedule


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_forward_and_reverse_kl_match_hand_values():
    p, q = [0.7, 0.2, 0.1], [0.5, 0.25, 0.25]
    teacher = torch.tensor(p).log().view(1, 3)
    student = torch.tensor(q).log().view(1, 3)
    labels = torch.tensor([0])
    assert losses.divergence(student, teacher, labels, "forward_kl").item() == \
        pytest.approx(_kl(p, q), rel=1e-5)
    assert losses.divergence(student, teacher, labels, "reverse_kl").item() == \
        pytest.approx(_kl(q, p), rel=1e-5)


def test_temperature_softens_both_sides():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.0, 1.0, 0.0]])
    t = 2.0
    p = torch.softmax(teacher / t, -1)[0].tolist()
    q = torch.softmax(student / t, -1)[0].tolist()
    value = losses.divergence(student, teacher, torch.tensor([1]), "forward_kl", temperature=t)
    assert value.item() == pytest.approx(_kl(p, q), rel=1e-5)


def test_zero_on_equal_inputs_ignored_positions_and_banned_tokens():
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    assert losses.divergence(logits, logits.clone(), labels).abs().item() < 1e-6
    assert losses.divergence(torch.randn(2, 5, 11), logits, torch.full((2, 5), -100)).item() == 0.0
    # a banned token (-inf on both sides) gives neither NaN values nor NaN gradients
    student = torch.randn(4, 6, requires_grad=True)
    banned = torch.zeros(4, 6)
    banned[:, 0] = float("-inf")
    for kind in losses.DIVERGENCES:
        value = losses.divergence(student + banned, torch.randn(4, 6) + banned,
                                  torch.zeros(4, dtype=torch.long), kind)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(student.grad).all()
        student.grad = None


def test_mean_counts_only_valid_positions():
    student, teacher = torch.randn(3, 7), torch.randn(3, 7)
    per = losses.per_token_divergence(student, teacher, "forward_kl")
    labels = torch.tensor([1, -100, 2])
    expected = (per[0] + per[2]) / 2
    assert losses.divergence(student, teacher, labels).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("kind, step, expected", [
    ("constant", 50, 0.2),
    ("linear", 0, 0.2), ("linear", 10, 0.2),          # held during warmup
    ("linear", 60, 0.2 + 0.6 * 0.5), ("linear", 110, 0.8), ("linear", 500, 0.8),
    ("cosine", 60, 0.2 + 0.6 * 0.5), ("cosine", 35, 0.2 + 0.6 * (1 - math.cos(math.pi / 4)) / 2),
])
def test_schedules_at_given_steps(kind, step, expected):
    schedule = Schedule(kind, start=0.2, end=0.8, warmup_steps=10, total_steps=110)
    assert schedule(step) == pytest.approx(expected)


def test_objective_combines_terms_with_t_squared_and_step_normalisation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, -100], [0, -100, -100]])
    objective = Objective("forward_kl", soft_weight=Schedule("constant", 0.3, 0.3, 0, 10),
                          temperature=Schedule("constant", 2.0, 2.0, 0, 10))
    out = objective(student, teacher, labels, step=0, step_tokens=6)
    valid = labels != -100
    ce = torch.nn.functional.cross_entropy(student[valid], labels[valid], reduction="sum") / 6
    kd = losses.per_token_divergence(student, teacher, "forward_kl", 2.0)[valid].sum() / 6
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out.terms["kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((0.7 * ce + 0.3 * 4.0 * kd).item(), rel=1e-6)
    assert out.weights == {"soft_weight": 0.3, "hard_weight": pytest.approx(0.7),
                           "temperature": 2.0}
