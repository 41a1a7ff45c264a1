"""Adaptive strategies on constructed cases: what each does to the effective weights (and,
for taid, to the soft target), with expected values computed here by hand or brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losses
from losses import Objective, Schedule, TaidSettings, topk_from_logits
from losses.confidence import water_fill
from losses.taid import interpolate


def _objective(soft: float = 0.3, temperature: float = 2.0, **kwargs) -> Objective:
    return Objective("forward_kl", soft_weight=Schedule("constant", soft, soft),
                     temperature=Schedule("constant", temperature, temperature), **kwargs)


# ---- teacher_confidence: water-filling keeps the mean soft weight

def _fill_by_bisection(c: list[float], mean: float) -> list[float]:
    """min(lam * c, 1) with the given mean, lam found by bisection on the (nondecreasing)
    mean; where even lam = inf falls short, the c = 0 tokens share the rest evenly."""
    m, positive = len(c), sum(1 for x in c if x > 0)
    if mean * m >= positive:
        rest = (mean * m - positive) / (m - positive) if m > positive else 0.0
        return [1.0 if x > 0 else rest for x in c]
    low, high = 0.0, 1.0
    while sum(min(high * x, 1.0) for x in c) < mean * m:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if sum(min(mid * x, 1.0) for x in c) < mean * m else (low, mid)
    return [min(high * x, 1.0) for x in c]


@pytest.mark.parametrize("seed, size, mean, zeros", [
    (0, 1, 0.3, 0), (1, 7, 0.5, 0), (2, 50, 0.1, 5), (3, 50, 0.9, 0), (4, 33, 0.97, 3),
    (5, 20, 0.6, 12),  # 8 tokens with c > 0 cannot hold 0.6 * 20: the zeros share the rest
])
def test_water_fill_matches_bisection_and_keeps_the_mean(seed, size, mean, zeros):
    generator = torch.Generator().manual_seed(seed)
    c = torch.rand(size, generator=generator) ** 3
    c[:zeros] = 0.0
    c[zeros:zeros + 2] = c[-1]  # ties
    filled = water_fill(c, mean)
    assert filled.tolist() == pytest.approx(_fill_by_bisection(c.tolist(), mean), abs=1e-6)
    assert filled.double().mean().item() == pytest.approx(mean, abs=1e-7)
    assert ((filled >= 0) & (filled <= 1)).all()
    order = c.argsort()
    assert (filled[order].diff() >= 0).all()  # more confidence, never less weight


def test_water_fill_edges():
    assert water_fill(torch.zeros(4), 0.3).tolist() == pytest.approx([0.3] * 4)  # uniform
    assert water_fill(torch.tensor([0.2, 0.0, 0.5]), 0.0).tolist() == [0.0, 0.0, 0.0]
    assert water_fill(torch.tensor([0.2, 0.1, 0.5]), 1.0).tolist() == [1.0, 1.0, 1.0]
    # lam = 2: [0.4, 0.2, 1.0] has mean 1.6 / 3
    assert water_fill(torch.tensor([0.2, 0.1, 0.5]), 1.6 / 3).tolist() == pytest.approx(
        [0.4, 0.2, 1.0])
    # two positives saturate (2 of 0.8 * 3 = 2.4); the zero takes the other 0.4
    assert water_fill(torch.tensor([0.2, 0.0, 0.5]), 0.8).tolist() == pytest.approx(
        [1.0, 0.4, 1.0])
    assert water_fill(torch.zeros(0), 0.5).numel() == 0


def _gold(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(teacher_logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]


def test_teacher_confidence_logs_the_scheduled_step_mean_over_micro_batches():
    """Three micro-batches of 7, 3 and 4 valid tokens (with ignored positions): the logged
    weights add up to the schedule's, and the total is the per-token formula with weights
    water-filled per micro-batch (by bisection here)."""
    torch.manual_seed(1)
    alpha, hard, temperature, vocab = 0.35, 0.65, 2.0, 6
    shapes = [(2, 4), (1, 5), (3, 2)]
    batches = []
    for shape in shapes:
        labels = torch.randint(0, vocab, shape)
        batches.append((torch.randn(*shape, vocab), torch.randn(*shape, vocab) * 3, labels))
    batches[0][2][0, :1] = -100
    batches[1][2][0, 1:3] = -100
    batches[2][2][1, :] = -100
    step_tokens = sum(int((b[2] != -100).sum()) for b in batches)
    assert step_tokens == 14
    objective = _objective(alpha, temperature, adaptive="teacher_confidence")
    logged = {"soft_weight": 0.0, "hard_weight": 0.0}
    for student, teacher, labels in batches:
        out = objective(student, teacher, labels, step=0, step_tokens=step_tokens)
        for key in logged:
            logged[key] += out.terms[key].item()
        valid = labels != -100
        c = _gold(teacher, labels)[valid].exp().tolist()
        soft_w = torch.tensor(_fill_by_bisection(c, alpha))
        hard_w = hard * (1 - soft_w) / (1 - alpha)
        ce = F.cross_entropy(student[valid], labels[valid], reduction="none")
        kd = losses.per_token_divergence(student, teacher, "forward_kl", temperature)[valid]
        expected = ((hard_w * ce).sum() + temperature ** 2 * (soft_w * kd).sum()) / step_tokens
        assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert out.scalars["soft_weight_scheduled"] == alpha
    assert logged["soft_weight"] == pytest.approx(alpha, abs=1e-6)
    assert logged["hard_weight"] == pytest.approx(hard, abs=1e-6)


def test_teacher_confidence_moves_weight_from_a_wrong_teacher_to_a_sure_one():
    labels = torch.zeros(4, dtype=torch.long)
    teacher = torch.tensor([[12.0, 0.0, 0.0, 0.0]] * 2      # sure of the label
                           + [[0.0, 12.0, 0.0, 0.0]] * 2)    # sure of another token
    strategy = _objective(0.4, adaptive="teacher_confidence").strategy
    gold = _gold(teacher, labels)
    hard_w, soft_w = strategy.token_weights(gold, labels != -100, 0.6, 0.4)
    # c = (~1, ~1, ~0, ~0): the right tokens take 0.8 each (mean 0.4), the wrong ones ~0
    assert soft_w.tolist() == pytest.approx([0.8, 0.8, 0.0, 0.0], abs=1e-4)
    assert hard_w.tolist() == pytest.approx([0.2, 0.2, 1.0, 1.0], abs=1e-4)  # 0.6 (1-w)/0.6
    assert soft_w.mean().item() == pytest.approx(0.4, abs=1e-6)
    # the old rule (alpha * c) would have logged a mean soft weight of 0.2 here
    assert (0.4 * gold.exp()).mean().item() == pytest.approx(0.2, abs=1e-4)


def test_teacher_confidence_with_a_topk_teacher_and_a_label_outside_its_top_k():
    # the label of token 1 is outside the top-2: c = 0 there, and it still gets hard weight
    teacher = topk_from_logits(torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]), k=2)
    labels = torch.tensor([0, 2])
    objective = _objective(0.5, adaptive="teacher_confidence")
    out = objective(torch.zeros(2, 3), teacher, labels, step=0, step_tokens=2)
    # the one token with c > 0 saturates at 1; the other gets the remaining 0
    assert out.terms["soft_weight"].item() == pytest.approx(0.5)
    assert out.terms["hard_weight"].item() == pytest.approx(0.5)
    hard_w, soft_w = objective.strategy.token_weights(teacher.gold(labels),
                                                      labels != -100, 0.5, 0.5)
    assert soft_w.tolist() == [1.0, 0.0] and hard_w.tolist() == [0.0, 1.0]


# ---- loss_balance: keeps h + w, makes alpha the soft term's share

def test_loss_balance_by_hand():
    objective = _objective(0.3, 2.0, adaptive="loss_balance", balance_momentum=0.9)
    student, teacher = torch.randn(4, 6), torch.randn(4, 6)
    labels = torch.zeros(4, dtype=torch.long)
    before = objective(student, teacher, labels, step=0, step_tokens=4)
    assert before.terms["soft_weight"].item() == pytest.approx(0.3)  # no update yet
    assert before.terms["hard_weight"].item() == pytest.approx(0.7)
    # one update, CE 4 and T^2 * KD = 4 * 0.5 = 2: the bias-corrected averages are exact
    objective.update({"ce": 4.0, "kd": 0.5, "temperature": 2.0})
    # w' = 1 * 0.3 * 4 / (0.3 * 4 + 0.7 * 2) = 1.2 / 2.6, h' = 1 - w'
    soft, hard = 1.2 / 2.6, 1.4 / 2.6
    after = objective(student, teacher, labels, step=1, step_tokens=4)
    assert after.terms["soft_weight"].item() == pytest.approx(soft, rel=1e-6)
    assert after.terms["hard_weight"].item() == pytest.approx(hard, rel=1e-6)
    ce, kd = after.terms["ce"].item(), after.terms["kd"].item()
    assert after.total.item() == pytest.approx(hard * ce + soft * 4.0 * kd, rel=1e-5)
    assert soft * 2.0 / (soft * 2.0 + hard * 4.0) == pytest.approx(0.3)  # alpha is the share
    # a second update: EMAs (0.9 * 0.1 * x1 + 0.1 * x2) / (1 - 0.81)
    objective.update({"ce": 2.0, "kd": 1.0, "temperature": 2.0})
    c, k = (0.09 * 4.0 + 0.1 * 2.0) / 0.19, (0.09 * 2.0 + 0.1 * 4.0) / 0.19
    soft = 0.3 * c / (0.3 * c + 0.7 * k)
    out = objective(student, teacher, labels, step=2, step_tokens=4)
    assert out.terms["soft_weight"].item() == pytest.approx(soft, rel=1e-6)
    assert out.terms["hard_weight"].item() == pytest.approx(1.0 - soft, rel=1e-6)


def test_loss_balance_keeps_a_separately_scheduled_total():
    objective = _objective(0.5, 1.0, adaptive="loss_balance", balance_momentum=0.0,
                           hard_weight=Schedule("constant", 1.0, 1.0))
    objective.update({"ce": 3.0, "kd": 1.0, "temperature": 1.0})  # momentum 0: C=3, K=1
    out = objective(torch.randn(3, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.long),
                    step=1, step_tokens=3)
    # S = 1.5: w' = 1.5 * 0.5 * 3 / (0.5 * 3 + 1 * 1) = 0.9, h' = 0.6
    assert out.terms["soft_weight"].item() == pytest.approx(0.9, rel=1e-6)
    assert out.terms["hard_weight"].item() == pytest.approx(0.6, rel=1e-6)


# ---- uncertainty: replaces the magnitudes (effective = scheduled * exp(-s))

def test_uncertainty_weights_and_their_gradient_by_hand():
    objective = _objective(adaptive="uncertainty")
    with torch.no_grad():
        objective.strategy.log_var.copy_(torch.tensor([0.5, -0.3]))
    student, teacher, labels = torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4, dtype=torch.long)
    out = objective(student, teacher, labels, step=0, step_tokens=4)
    ce, kd = out.terms["ce"].item(), out.terms["kd"].item()
    hard_term, soft_term = 0.7 * ce, 0.3 * 4.0 * kd
    expected = math.exp(-0.5) * hard_term + math.exp(0.3) * soft_term + 0.5 - 0.3
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    (grad,) = torch.autograd.grad(out.total, [objective.strategy.log_var])
    assert grad.tolist() == pytest.approx([-math.exp(-0.5) * hard_term + 1,
                                           -math.exp(0.3) * soft_term + 1], rel=1e-5)
    # the logged weights are the effective ones
    assert out.terms["hard_weight"].item() == pytest.approx(0.7 * math.exp(-0.5), rel=1e-6)
    assert out.terms["soft_weight"].item() == pytest.approx(0.3 * math.exp(0.3), rel=1e-6)


# ---- taid: the interpolated target and the pace of t

def test_interpolation_ends_and_middle_by_hand():
    log_q = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    log_p = torch.log(torch.tensor([[0.1, 0.1, 0.8]]))
    torch.testing.assert_close(interpolate(log_q, log_p, 0.0), log_q)
    torch.testing.assert_close(interpolate(log_q, log_p, 1.0), log_p)
    # t = 1/2: the normalised geometric mean sqrt(p q)
    mean = [math.sqrt(0.05), math.sqrt(0.025), math.sqrt(0.2)]
    expected = [x / sum(mean) for x in mean]
    assert interpolate(log_q, log_p, 0.5).exp()[0].tolist() == pytest.approx(expected, rel=1e-6)
    # an outcome one side gives probability 0 stays 0, without NaN
    banned = torch.tensor([[float("-inf"), math.log(0.5), math.log(0.5)]])
    mixed = interpolate(banned, log_p, 0.3)
    assert torch.isfinite(mixed[:, 1:]).all() and mixed[0, 0].item() == float("-inf")
    assert mixed.exp().sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("form", ["logits", "topk"])
def test_taid_soft_term_is_the_divergence_to_the_interpolated_target(form: str):
    torch.manual_seed(3)
    student, teacher_logits = torch.randn(5, 8), torch.randn(5, 8)
    teacher = teacher_logits if form == "logits" else topk_from_logits(teacher_logits, 3)
    labels = torch.randint(0, 8, (5,))
    for t, expect_zero in ((0.0, True), (0.6, False), (1.0, False)):
        objective = _objective(0.5, 2.0, adaptive="taid", taid=TaidSettings(t_start=t)
                               if t < 1 else TaidSettings(t_start=0.0))
        if t == 1.0:
            objective.strategy.t.fill_(1.0)
        out = objective(student, teacher, labels, step=0, step_tokens=5)
        assert out.scalars["taid_t"] == t
        if form == "logits":  # by hand: p_t = softmax((1 - t) log q + t log p) at T = 2
            log_q = torch.log_softmax(student / 2, -1)
            log_p = torch.log_softmax(teacher_logits / 2, -1)
            p_t = torch.softmax((1 - t) * log_q + t * log_p, -1)
            expected = (p_t * (p_t.log() - log_q)).sum(-1).mean()
            assert out.terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
        if expect_zero:  # at t = 0 the target is the student itself, in any form
            assert abs(out.terms["kd"].item()) < 1e-6
        plain = losses.divergence(student, teacher, labels, "forward_kl", temperature=2.0)
        if t == 1.0:  # at t = 1 it is plain distillation
            assert out.terms["kd"].item() == pytest.approx(plain.item(), rel=1e-5)


def test_taid_t_follows_a_hand_made_sequence_of_soft_terms():
    settings = TaidSettings(t_start=0.4, t_end=1.0, rate=0.1, momentum=0.9, total_steps=100)
    objective = _objective(adaptive="taid", taid=settings)
    strategy = objective.strategy

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    assert float(strategy.t) == 0.4
    # step 0, J = 2.0: no previous J, delta = 0, m = 0: t = 0.4 + 0.1 * 0.5 * 0.6 = 0.43
    # (the floor after 1 of 100 steps is 0.406)
    objective.update({"kd": 2.0})
    assert float(strategy.t) == pytest.approx(0.43)
    # step 1, J = 1.5: delta = 0.5 / 2 = 0.25, m = 0.1 * 0.25 = 0.025
    objective.update({"kd": 1.5})
    t2 = 0.43 + 0.1 * sig(0.025) * 0.57
    assert float(strategy.t) == pytest.approx(t2)
    # step 2, J = 1.6 (a rise): delta = -0.1 / 1.5, m = 0.9 * 0.025 - 0.1 / 15
    objective.update({"kd": 1.6})
    m = 0.9 * 0.025 + 0.1 * (-0.1 / 1.5)
    t3 = t2 + 0.1 * sig(m) * (1 - t2)
    assert float(strategy.t) == pytest.approx(t3)
    assert float(strategy.momentum) == pytest.approx(m)
    assert int(strategy.steps) == 3 and float(strategy.previous) == 1.6
    # a step without a soft term (no teacher) changes nothing
    objective.update({"ce": 1.0})
    assert float(strategy.t) == pytest.approx(t3) and int(strategy.steps) == 3


def test_taid_floor_and_ceiling():
    # rate 0: t is the linear floor, 0.2 + 0.6 * n / 4 after n steps, then t_end
    objective = _objective(adaptive="taid", taid=TaidSettings(0.2, 0.8, rate=0.0, total_steps=4))
    seen = []
    for _ in range(6):
        objective.update({"kd": 1.0})
        seen.append(float(objective.strategy.t))
    assert seen == pytest.approx([0.35, 0.5, 0.65, 0.8, 0.8, 0.8])
    # a large rate stops at t_end
    fast = _objective(adaptive="taid", taid=TaidSettings(0.2, 0.5, rate=1.0, momentum=0.0))
    for j in (3.0, 1.0, 0.5):
        fast.update({"kd": j})
    assert float(fast.strategy.t) == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"t_start": 1.0}, r"t_start must be in \[0, 1\)"),
    ({"t_end": 0.0}, r"t_end must be in \(0, 1\]"),
    ({"t_start": 0.6, "t_end": 0.5}, "must be below t_end"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"rate": -1.0}, "rate must be >= 0"),
    ({"total_steps": 0}, "total_steps must be >= 1"),
])
def test_taid_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaidSettings(**kwargs)


def test_taid_state_is_in_the_state_dict_and_restores_exactly():
    """What a checkpoint holds: the objective's state dict (inside the student's module)."""
    settings = TaidSettings(rate=0.05, momentum=0.5, total_steps=1000)
    first = _objective(adaptive="taid", taid=settings)
    for j in (2.0, 1.7, 1.9):
        first.update({"kd": j})
    state = first.state_dict()
    assert {"strategy.t", "strategy.momentum", "strategy.previous", "strategy.steps"} <= set(state)
    second = _objective(adaptive="taid", taid=settings)
    second.load_state_dict(state)
    for j in (1.2, 1.4):
        first.update({"kd": j})
        second.update({"kd": j})
        assert float(second.strategy.t) == float(first.strategy.t)
    assert float(first.strategy.t) > settings.floor(5)  # the state mattered, not the floor
