"""Losses against values computed by hand or in closed form, and their properties."""

from __future__ import annotations

import math

import pytest
import torch

import losses
from losses import HiddenStates, Logits, Objective, Schedule, TopK, topk_from_logits
from students import router_aux_loss

KINDS = sorted(losses.DIVERGENCES)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _mix(a: list[float], b: list[float], w: float) -> list[float]:
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def _todi(p: list[float], q: list[float], s: float = 1.0) -> float:
    """Per outcome: gate a = sigmoid(s log(p/q)); a p log(p/q) + (1 - a) q log(q/p)."""
    total = 0.0
    for pi, qi in zip(p, q):
        r = math.log(pi / qi)
        a = 0.5 * (1.0 + math.tanh(0.5 * s * r))  # sigmoid(s r), without overflow
        total += a * pi * r + (1.0 - a) * qi * -r
    return total


P, Q = [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]
HAND = {
    "forward_kl": _kl(P, Q),
    "reverse_kl": _kl(Q, P),
    "jsd": 0.5 * _kl(P, _mix(P, Q, 0.5)) + 0.5 * _kl(Q, _mix(P, Q, 0.5)),
    "skew_kl": _kl(P, _mix(P, Q, 0.1)),
    "skew_reverse_kl": _kl(Q, _mix(Q, P, 0.1)),
    "tvd": 0.5 * (0.3 + 0.0 + 0.3),
    # head = {token 0} (0.6 >= 0.5): gaps 0.3 in head, 0.3 in tail -> half FKL, half RKL
    "akl": 0.5 * _kl(P, Q) + 0.5 * _kl(Q, P),
    # gates sigmoid(log 2) = 2/3, 1/2, sigmoid(log 1/4) = 1/5:
    # (2/3 * 0.6 - 1/3 * 0.3) log 2 + 0 + (1/5 * 0.1 - 4/5 * 0.4) log(1/4) = 0.9 log 2
    "todi": 0.9 * math.log(2.0),
}


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_matches_hand_value(kind: str):
    teacher = torch.tensor(P).log().view(1, 3)
    student = torch.tensor(Q).log().view(1, 3)
    value = losses.divergence(student, teacher, torch.tensor([0]), kind)
    assert value.item() == pytest.approx(HAND[kind], rel=1e-5)


def test_todi_by_hand_at_sharpness_two():
    # gates sigmoid(2 log 2) = 4/5 and sigmoid(2 log 1/4) = 1/17 (the middle outcome is 0):
    # (4/5 * 0.6 - 1/5 * 0.3) log 2 + (1/17 * 0.1 - 16/17 * 0.4) log(1/4)
    expected = (0.42 + 12.6 / 17) * math.log(2.0)
    assert _todi(P, Q, 2.0) == pytest.approx(expected)
    value = losses.divergence(torch.tensor([Q]).log(), torch.tensor([P]).log(),
                              torch.tensor([0]), "todi", sharpness=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_todi_at_sharpness_one_is_forward_plus_reverse_kl():
    # with s = 1 the gate is p / (p + q), so each term is (p - q) log(p/q): Jeffreys
    torch.manual_seed(7)
    student, teacher = torch.randn(20, 13) * 3, torch.randn(20, 13) * 3
    per = {kind: losses.per_token_divergence(student, teacher, kind)
           for kind in ("todi", "forward_kl", "reverse_kl")}
    torch.testing.assert_close(per["todi"], per["forward_kl"] + per["reverse_kl"],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sharpness", [0.05, 1.0, 3.0, 50.0])
def test_todi_is_a_divergence_for_any_sharpness(sharpness: float):
    torch.manual_seed(8)
    student, teacher = torch.randn(200, 9) * 4, torch.randn(200, 9) * 4
    values = losses.per_token_divergence(student, teacher, "todi", sharpness=sharpness)
    assert (values >= 0).all() and values.min() > 0
    by_hand = [_todi(torch.softmax(teacher[i], -1).tolist(),
                     torch.softmax(student[i], -1).tolist(), sharpness) for i in range(5)]
    assert values[:5].tolist() == pytest.approx(by_hand, rel=1e-4)
    same = losses.per_token_divergence(teacher, teacher.clone(), "todi", sharpness=sharpness)
    assert same.abs().max() < 1e-6
    with pytest.raises(ValueError, match="sharpness must be > 0"):
        losses.DivergenceParams(sharpness=0.0)


def test_todi_with_a_token_banned_on_both_sides_and_by_the_teacher_alone():
    student = torch.randn(3, 5, requires_grad=True)
    banned = torch.tensor([float("-inf"), 0.0, 0.0, 0.0, 0.0])
    teacher = torch.randn(3, 5) + banned
    value = losses.divergence(student + banned, teacher, torch.zeros(3, dtype=torch.long),
                              "todi", sharpness=2.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()
    # the banned outcome contributes nothing: the same as dropping it from both sides
    kept = losses.divergence(student[:, 1:], teacher[:, 1:], torch.zeros(3, dtype=torch.long),
                             "todi", sharpness=2.0)
    assert value.item() == pytest.approx(kept.item(), rel=1e-5)
    # only the teacher bans it: the reverse-KL part is infinite there, as reverse KL is
    alone = losses.divergence(student.detach(), teacher, torch.zeros(3, dtype=torch.long), "todi")
    assert alone.item() == float("inf")


def test_temperature_softens_both_sides():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.0, 1.0, 0.0]])
    p = torch.softmax(teacher / 2.0, -1)[0].tolist()
    q = torch.softmax(student / 2.0, -1)[0].tolist()
    value = losses.divergence(student, teacher, torch.tensor([1]), "forward_kl", temperature=2.0)
    assert value.item() == pytest.approx(_kl(p, q), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_on_equal_positive_otherwise(kind: str):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    assert losses.divergence(logits, logits.clone(), labels, kind).abs().item() < 1e-6
    assert losses.divergence(torch.randn(2, 5, 11), logits, labels, kind).item() > 1e-3


def test_jsd_at_beta_zero_and_one_is_forward_and_reverse_kl():
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(6, 9), torch.randn(6, 9), torch.zeros(6, dtype=torch.long)
    forward = losses.divergence(student, teacher, labels, "forward_kl")
    reverse = losses.divergence(student, teacher, labels, "reverse_kl")
    assert losses.divergence(student, teacher, labels, "jsd", beta=0.0) == pytest.approx(forward)
    assert losses.divergence(student, teacher, labels, "jsd", beta=1.0) == pytest.approx(reverse)
    # the skewed KLs at skew 0 are the plain KLs
    assert losses.divergence(student, teacher, labels, "skew_kl", skew=0.0) == pytest.approx(forward)
    assert losses.divergence(student, teacher, labels, "skew_reverse_kl", skew=0.0) == \
        pytest.approx(reverse)


def test_ignored_positions_and_all_ignored():
    student, teacher = torch.randn(3, 7), torch.randn(3, 7)
    per = losses.per_token_divergence(student, teacher, "forward_kl")
    labels = torch.tensor([1, -100, 2])
    assert losses.divergence(student, teacher, labels).item() == \
        pytest.approx(((per[0] + per[2]) / 2).item())
    for kind in KINDS:
        value = losses.divergence(student, teacher, torch.full((3,), -100), kind)
        assert value.item() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_banned_tokens_give_no_nan(kind: str):
    student = torch.randn(4, 6, requires_grad=True)
    banned = torch.zeros(4, 6)
    banned[:, 0] = float("-inf")
    value = losses.divergence(student + banned, torch.randn(4, 6) + banned,
                              torch.zeros(4, dtype=torch.long), kind, temperature=2.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_topk_tail_bucket_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    teacher = topk_from_logits(p.log(), k=2)
    assert teacher.indices.tolist() == [[0, 1]]
    assert teacher.log_tail.exp().item() == pytest.approx(0.2)
    student = torch.zeros(1, 4)  # uniform: folded to [0.25, 0.25, 0.5]
    value = losses.divergence(student, teacher, torch.tensor([0]), "forward_kl")
    assert value.item() == pytest.approx(_kl([0.5, 0.3, 0.2], [0.25, 0.25, 0.5]), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_with_k_equal_vocab_equals_full(kind: str):
    torch.manual_seed(2)
    teacher = torch.randn(2, 3, 10)
    labels = torch.randint(0, 10, (2, 3))
    full_s = torch.randn(2, 3, 10, requires_grad=True)
    sparse_s = full_s.detach().clone().requires_grad_()
    full = losses.divergence(full_s, teacher, labels, kind, temperature=2.0)
    sparse = losses.divergence(sparse_s, topk_from_logits(teacher, 10), labels, kind,
                               temperature=2.0)
    full.backward()
    sparse.backward()
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(sparse_s.grad, full_s.grad, rtol=1e-4, atol=1e-6)


def _fused_vs_plain(kind: str, teacher_form: str, chunk_size: int):
    torch.manual_seed(3)
    tokens, hidden_size, vocab = 30, 8, 17
    hidden = torch.randn(2, tokens // 2, hidden_size, requires_grad=True)
    head = (torch.randn(vocab, hidden_size) * 0.5).requires_grad_()
    t_hidden, t_head = torch.randn(2, tokens // 2, 12), torch.randn(vocab, 12) * 0.5
    t_logits = t_hidden @ t_head.t()
    labels = torch.randint(0, vocab, (2, tokens // 2))
    labels[0, :4] = -100
    labels[1, -3:] = -100
    teacher_plain = topk_from_logits(t_logits, 5) if teacher_form == "topk" else t_logits
    teacher_fused = {"logits": t_logits, "hidden": (t_hidden, t_head),
                     "topk": topk_from_logits(t_logits, 5)}[teacher_form]
    plain = losses.divergence(hidden @ head.t(), teacher_plain, labels, kind, temperature=1.5)
    plain.backward()
    expected = (plain.item(), hidden.grad.clone(), head.grad.clone())
    hidden.grad, head.grad = None, None
    fused = losses.fused_divergence(hidden, head, teacher_fused, labels, kind, temperature=1.5,
                                    chunk_size=chunk_size)
    fused.backward()
    assert fused.item() == pytest.approx(expected[0], rel=1e-5)
    torch.testing.assert_close(hidden.grad, expected[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.grad, expected[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("teacher_form", ["logits", "hidden", "topk"])
def test_fused_equals_plain_values_and_gradients(kind: str, teacher_form: str):
    _fused_vs_plain(kind, teacher_form, chunk_size=7)  # 7 does not divide 30 tokens


@pytest.mark.parametrize("chunk_size", [1, 4, 30, 1000])
def test_fused_any_chunk_size(chunk_size: int):
    _fused_vs_plain("forward_kl", "hidden", chunk_size)


@pytest.mark.parametrize("kind, step, expected", [
    ("constant", 50, 0.2),
    ("linear", 0, 0.2), ("linear", 10, 0.2),  # held during warmup
    ("linear", 60, 0.5), ("linear", 110, 0.8), ("linear", 500, 0.8),
    ("cosine", 60, 0.5), ("cosine", 35, 0.2 + 0.6 * (1 - math.cos(math.pi / 4)) / 2),
    ("exponential", 60, 0.2 + 0.6 * (1 - math.exp(-2.5)) / (1 - math.exp(-5))),
    ("exponential", 110, 0.8),
    ("step", 34, 0.2), ("step", 36, 0.35), ("step", 85, 0.65), ("step", 110, 0.8),
    ("wsd", 80, 0.2), ("wsd", 90, 0.2), ("wsd", 100, 0.5), ("wsd", 110, 0.8),
])
def test_schedules_at_given_steps(kind: str, step: int, expected: float):
    schedule = Schedule(kind, start=0.2, end=0.8, warmup_steps=10, total_steps=110)
    assert schedule(step) == pytest.approx(expected)


def test_warmup_ramp_from_warmup_start():
    schedule = Schedule("constant", start=0.6, end=0.6, warmup_steps=10, total_steps=100,
                        warmup_start=0.0)
    assert [schedule(s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.3, 0.6, 0.6])


def _objective(**kwargs) -> Objective:
    args = {"divergence": "forward_kl", "soft_weight": Schedule("constant", 0.3, 0.3),
            "temperature": Schedule("constant", 2.0, 2.0)}
    return Objective(**{**args, **kwargs})


def test_objective_combines_terms_with_t_squared_aux_and_step_normalisation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 2, -100], [0, -100, -100]])
    objective = _objective(router_aux_weight=Schedule("constant", 0.01, 0.01))
    aux = torch.tensor(1.5)
    out = objective(student, teacher, labels, step=0, step_tokens=6, router_aux=aux)
    valid = labels != -100
    ce = torch.nn.functional.cross_entropy(student[valid], labels[valid], reduction="sum") / 6
    kd = losses.per_token_divergence(student, teacher, "forward_kl", 2.0)[valid].sum() / 6
    share = 3 / 6  # this micro-batch holds 3 of the step's 6 valid tokens
    assert out.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out.terms["kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    expected = 0.7 * ce + 0.3 * 4.0 * kd + 0.01 * 1.5 * share
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.terms["soft_weight"].item() == pytest.approx(0.3 * share)
    assert out.terms["hard_weight"].item() == pytest.approx(0.7 * share)
    assert out.scalars["temperature"] == 2.0 and out.scalars["router_aux_weight"] == 0.01


def assert_objective_fused_equals_plain(make_objective, hidden, head, teacher, labels,
                                        step_tokens: int, **kwargs) -> dict[str, float]:
    """A fresh ``make_objective()`` on logits and on (hidden, head): the same total, the same
    gradients (student and objective parameters), the same terms; returns the terms."""
    results = []
    for fused in (False, True):
        objective = make_objective()
        student = (hidden, head) if fused else hidden @ head.t()
        out = objective(student, teacher, labels, step=0, step_tokens=step_tokens, **kwargs)
        grads = torch.autograd.grad(out.total, [hidden, head] + list(objective.parameters()))
        results.append((out.total.item(), grads, {k: v.item() for k, v in out.terms.items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-5)
    return results[0][2]


@pytest.mark.parametrize("adaptive", losses.ADAPTIVE)
@pytest.mark.parametrize("teacher_form", ["logits", "hidden", "topk"])
@pytest.mark.parametrize("divergence", ["forward_kl", "todi"])
def test_objective_fused_equals_plain(adaptive: str, teacher_form: str, divergence: str):
    """Per-token weights from the pre-pass (teacher_confidence) and the interpolated target
    (taid) included: chunks of 4 cut the 15 tokens unevenly."""
    torch.manual_seed(4)
    hidden = torch.randn(3, 5, 6, requires_grad=True)
    head = torch.randn(11, 6, requires_grad=True)
    t_hidden, t_head = torch.randn(3, 5, 7), torch.randn(11, 7)
    teacher = {"logits": t_hidden @ t_head.t(), "hidden": HiddenStates(t_hidden, t_head),
               "topk": topk_from_logits(t_hidden @ t_head.t(), 4)}[teacher_form]
    labels = torch.randint(0, 11, (3, 5))
    labels[2, 1:] = -100
    assert_objective_fused_equals_plain(
        lambda: _objective(adaptive=adaptive, chunk_size=4, divergence=divergence),
        hidden, head, teacher, labels, 20)


def test_router_aux_loss_by_hand():
    # two experts, every token routed to expert 0 with softmax probabilities (0.75, 0.25)
    logits = torch.log(torch.tensor([[0.75, 0.25]] * 4))
    assert router_aux_loss((logits,), top_k=1).item() == pytest.approx(2 * (1.0 * 0.75))
    balanced = torch.log(torch.tensor([[0.6, 0.4], [0.4, 0.6]]))
    assert router_aux_loss((balanced,), top_k=1).item() == pytest.approx(1.0)


def test_output_types_shape_helpers():
    sparse = TopK(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3))
    assert sparse.shape == (2, 3) and sparse.flatten().indices.shape == (6, 4)
    assert sparse.flatten().rows(slice(1, 3)).log_tail.shape == (2,)
    logits = Logits(torch.randn(2, 3, 10))
    assert logits.limit_vocab(8).logits.shape == (2, 3, 8)
    assert logits.flatten().rows(slice(0, 4)).logits.shape == (4, 10)
    hidden, head = torch.randn(2, 3, 5), torch.randn(10, 5)
    states = HiddenStates(hidden, head).limit_vocab(8)
    assert states.head.shape == (8, 5) and states.shape == (2, 3)
    # a chunk's rows of hidden states are its logits over the kept vocabulary, by hand
    torch.testing.assert_close(states.flatten().rows(slice(2, 5)).logits,
                               hidden.reshape(6, 5)[2:5] @ head[:8].t())
    assert [t.shape for t in states.tensors()] == [(2, 3, 5), (8, 5)]


def test_topk_tail_tempering_assumes_a_uniform_tail():
    # 2 kept tokens, a tail of 2 tokens holding 0.2: at T = 2 each tail token counts as
    # (0.1)^(1/2), so the teacher's tempered buckets are [0.5^.5, 0.3^.5, 2 * 0.1^.5] / Z.
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    teacher = topk_from_logits(p.log(), k=2)
    student = torch.zeros(1, 4)
    weights = [0.5 ** 0.5, 0.3 ** 0.5, 2 * 0.1 ** 0.5]
    buckets = [w / sum(weights) for w in weights]
    expected = _kl(buckets, [0.25, 0.25, 0.5])
    value = losses.divergence(student, teacher, torch.tensor([0]), "forward_kl", temperature=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # with an actually uniform tail it equals the full computation
    full = losses.divergence(student, p.log(), torch.tensor([0]), "forward_kl", temperature=2.0)
    assert value.item() == pytest.approx(full.item(), rel=1e-5)


def test_topk_gold_uses_the_label_log_probs_when_the_teacher_gives_them():
    # top-2 of [0.5, 0.3, 0.1, 0.1]; the label 3 is outside the top-2 (probability 0.1)
    p = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    sparse = topk_from_logits(p.log(), k=2)
    labels = torch.tensor([3])
    student = torch.log_softmax(torch.zeros(1, 4), -1)
    assert sparse.soft_targets(student, labels, 1.0, need_gold=True).gold.item() == float("-inf")
    served = TopK(sparse.log_probs, sparse.indices, sparse.log_tail,
                  label_log_probs=torch.tensor([math.log(0.1)]))
    assert served.soft_targets(student, labels, 1.0, True).gold.item() == pytest.approx(
        math.log(0.1))
    # the field follows the other tensors through flatten, rows and to()
    batch = TopK(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long),
                 torch.zeros(2, 3), torch.arange(6.0).reshape(2, 3))
    assert batch.flatten().rows(slice(4, 6)).label_log_probs.tolist() == [4.0, 5.0]
