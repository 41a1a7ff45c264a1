"""On-policy positions (the student sampled the label): values by hand, the sampled
estimator against the exact gradient of KL(q || p), plain == fused, and generated=None
unchanged."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import losses
from distill.config import LossConfig
from losses import Objective, Schedule, TopK, finish_step_terms, topk_from_logits
from teachers.forward import LMWithObjective
from tests.test_losses import assert_objective_fused_equals_plain


def _objective(mode: str = "full", soft: float = 0.3, temperature: float = 2.0,
               **kwargs) -> Objective:
    return Objective("forward_kl", soft_weight=Schedule("constant", soft, soft),
                     temperature=Schedule("constant", temperature, temperature),
                     on_policy_loss=mode, **kwargs)


def _case(seed: int = 0, vocab: int = 7):
    """(2, 5) positions: one ignored, four generated (the second row's tail)."""
    torch.manual_seed(seed)
    student, teacher = torch.randn(2, 5, vocab), torch.randn(2, 5, vocab)
    labels = torch.randint(0, vocab, (2, 5))
    labels[0, 0] = -100
    generated = torch.zeros(2, 5, dtype=torch.bool)
    generated[1, 1:] = True
    return student, teacher, labels, generated


def test_sampled_estimator_gradient_matches_the_exact_reverse_kl_gradient():
    # one categorical, q = softmax(z), p fixed; y ~ q as 20000 positions of one batch
    z = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], requires_grad=True)
    log_p = torch.log(torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15]))
    n = 20000
    q = torch.softmax(z.detach(), -1)
    y = torch.multinomial(q, n, replacement=True, generator=torch.Generator().manual_seed(0))
    # T = 2 for the recipe: the estimator runs at T = 1 and carries no T^2
    objective = _objective("sampled", soft=1.0, temperature=2.0)
    out = objective(z.expand(n, 5), log_p.expand(n, 5), y, step=0, step_tokens=n,
                    generated=torch.ones(n, dtype=torch.bool))
    (grad,) = torch.autograd.grad(out.total, [z])

    # per sample, by hand: (log q(y) - log p(y)) * (onehot(y) - q)
    log_ratio = (q.log() - log_p)[y]                                   # (n,)
    per_sample = log_ratio[:, None] * (F.one_hot(y, 5).float() - q)    # (n, 5)
    torch.testing.assert_close(grad, per_sample.mean(0), rtol=1e-4, atol=1e-6)

    exact_kl = lambda logits: (torch.softmax(logits, -1) * (torch.log_softmax(logits, -1)
                                                            - log_p)).sum()
    (exact,) = torch.autograd.grad(exact_kl(z), [z])
    standard_error = per_sample.std(0) / math.sqrt(n)
    assert ((grad - exact).abs() <= 4 * standard_error).all(), (grad, exact, standard_error)
    assert not torch.allclose(grad, exact, atol=1e-6)  # a Monte-Carlo estimate, not exact

    # the logged estimate of KL(q || p) on the samples, within the same tolerance
    kl_error = log_ratio.std() / math.sqrt(n)
    terms = finish_step_terms({k: v.item() for k, v in out.terms.items()})
    assert terms["generated_tokens"] == n
    assert terms["reverse_kl_samples"] == pytest.approx(log_ratio.mean().item(), rel=1e-4)
    assert abs(terms["reverse_kl_samples"] - exact_kl(z).item()) < 4 * kl_error
    assert terms["kd_on_policy"] == pytest.approx(log_ratio.mean().item(), rel=1e-4)
    assert terms["ce"] == 0 and terms["kd"] == 0 and terms["hard_weight"] == 0


def test_full_on_generated_positions_by_hand():
    student, teacher, labels, generated = _case()
    student.requires_grad_(True)
    step_tokens = 12  # other micro-batches hold 3 more valid tokens
    out = _objective("full")(student, teacher, labels, step=0, step_tokens=step_tokens,
                             generated=generated)
    valid = labels != -100
    data, gen = valid & ~generated, valid & generated
    p, log_q = torch.log_softmax(teacher / 2.0, -1), torch.log_softmax(student / 2.0, -1)
    kd = (p.exp() * (p - log_q)).sum(-1)                                   # (2, 5)
    ce = -torch.log_softmax(student, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    expected = ((0.7 * ce + 0.3 * 4.0 * kd)[data].sum() + (0.3 * 4.0 * kd)[gen].sum()) / 12
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out.total, [student])[0],
                               torch.autograd.grad(expected, [student])[0])
    gold = torch.log_softmax(teacher, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    terms = {k: v.item() for k, v in out.terms.items()}
    assert terms["ce"] == pytest.approx(ce[data].sum().item() / 12, rel=1e-6)
    assert terms["kd"] == pytest.approx(kd[data].sum().item() / 12, rel=1e-6)
    assert terms["kd_on_policy"] == pytest.approx(kd[gen].sum().item() / 12, rel=1e-6)
    assert terms["hard_weight"] == pytest.approx(0.7 * 5 / 12)    # 5 data positions
    assert terms["soft_weight"] == pytest.approx(0.3 * 9 / 12)    # all 9 valid positions
    assert terms["generated_tokens"] == 4
    assert terms["reverse_kl_samples_sum"] == pytest.approx((-ce - gold)[gen].sum().item(),
                                                            rel=1e-5)


def test_sampled_total_by_hand():
    student, teacher, labels, generated = _case(1)
    student.requires_grad_(True)
    out = _objective("sampled")(student, teacher, labels, step=0, step_tokens=9,
                                generated=generated)
    valid = labels != -100
    data, gen = valid & ~generated, valid & generated
    p, log_q = torch.log_softmax(teacher / 2.0, -1), torch.log_softmax(student / 2.0, -1)
    kd = (p.exp() * (p - log_q)).sum(-1)
    index = labels.clamp(min=0)[..., None]
    log_q1 = torch.log_softmax(student, -1).gather(-1, index)[..., 0]
    log_p1 = torch.log_softmax(teacher, -1).gather(-1, index)[..., 0]
    surrogate = (log_q1 - log_p1).detach() * log_q1
    expected = ((0.7 * -log_q1 + 0.3 * 4.0 * kd)[data].sum() + (0.3 * surrogate)[gen].sum()) / 9
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out.total, [student])[0],
                               torch.autograd.grad(expected, [student])[0])
    assert out.terms["kd_on_policy"].item() == pytest.approx(
        (log_q1 - log_p1)[gen].sum().item() / 9, rel=1e-5)


def _teacher(form: str, hidden: torch.Tensor, vocab: int):
    torch.manual_seed(5)
    t_hidden, t_head = torch.randn(*hidden.shape[:-1], 4), torch.randn(vocab, 4)
    if form == "hidden":
        return (t_hidden, t_head)
    logits = t_hidden @ t_head.t()
    if form == "logits":
        return logits
    sparse = topk_from_logits(logits, k=3)  # a served teacher: every label's log-prob
    return TopK(sparse.log_probs, sparse.indices, sparse.log_tail,
                label_log_probs=torch.log_softmax(logits, -1).gather(
                    -1, _LABELS.clamp(min=0)[..., None])[..., 0])


_LABELS = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(3))
_LABELS[2, 3:] = -100


@pytest.mark.parametrize("mode", losses.ON_POLICY_LOSSES)
@pytest.mark.parametrize("form", ["logits", "hidden", "topk"])
@pytest.mark.parametrize("adaptive", ["none", "teacher_confidence", "uncertainty"])
def test_fused_equals_plain_with_a_generated_mask(mode: str, form: str, adaptive: str):
    torch.manual_seed(4)
    hidden = torch.randn(3, 5, 6, requires_grad=True)
    head = torch.randn(11, 6, requires_grad=True)
    teacher = _teacher(form, hidden, 11)
    generated = torch.zeros(3, 5, dtype=torch.bool)
    generated[1:, 2:] = True  # includes ignored positions: they stay ignored
    terms = assert_objective_fused_equals_plain(
        lambda: _objective(mode, adaptive=adaptive, chunk_size=4), hidden, head, teacher,
        _LABELS, 16, generated=generated)
    assert terms["generated_tokens"] == 4


@pytest.mark.parametrize("mode", losses.ON_POLICY_LOSSES)
def test_one_by_three_equals_three_by_one(mode: str):
    student, teacher, labels, generated = _case(2)
    student = torch.cat([student, student[:1] * 0.5])          # (3, 5, V)
    teacher, labels = torch.cat([teacher, teacher[:1]]), torch.cat([labels, labels[:1]])
    generated = torch.cat([generated, ~generated[:1]])
    student.requires_grad_(True)
    step_tokens = int((labels != -100).sum())
    objective = _objective(mode)
    whole = objective(student, teacher, labels, 0, step_tokens, generated=generated)
    parts = [objective(student[i:i + 1], teacher[i:i + 1], labels[i:i + 1], 0, step_tokens,
                       generated=generated[i:i + 1]) for i in range(3)]
    torch.testing.assert_close(torch.autograd.grad(whole.total, [student])[0],
                               torch.autograd.grad(sum(p.total for p in parts), [student])[0])
    summed = {k: sum(p.terms[k].item() for p in parts) for k in whole.terms}
    assert summed == pytest.approx({k: v.item() for k, v in whole.terms.items()}, rel=1e-5)


@pytest.mark.parametrize("mode", losses.ON_POLICY_LOSSES)
@pytest.mark.parametrize("adaptive", losses.ADAPTIVE)
@pytest.mark.parametrize("fused", [False, True])
def test_no_mask_is_exactly_an_all_false_mask(mode: str, adaptive: str, fused: bool):
    torch.manual_seed(6)
    hidden = torch.randn(3, 5, 6, requires_grad=True)
    head = torch.randn(11, 6, requires_grad=True)
    teacher = torch.randn(3, 5, 11)
    results = []
    for generated in (None, torch.zeros(3, 5, dtype=torch.bool)):
        objective = _objective(mode, adaptive=adaptive, chunk_size=4)
        student = (hidden, head) if fused else hidden @ head.t()
        out = objective(student, teacher, _LABELS, step=0, step_tokens=13,
                        generated=generated)
        grads = torch.autograd.grad(out.total, [hidden, head] + list(objective.parameters()))
        results.append((out, grads))
    (none, none_grads), (false, false_grads) = results
    assert torch.equal(none.total, false.total)
    assert all(torch.equal(a, b) for a, b in zip(none_grads, false_grads))
    assert all(torch.equal(v, false.terms[k]) for k, v in none.terms.items())
    extra = {k: v.item() for k, v in false.terms.items() if k not in none.terms}
    assert extra == {"kd_on_policy": 0.0, "reverse_kl_samples_sum": 0.0,
                     "generated_tokens": 0.0}
    assert finish_step_terms(extra)["reverse_kl_samples"] == 0.0


def test_reverse_kl_samples_by_hand():
    # student q = (0.5, 0.25, 0.25), teacher p = (0.25, 0.25, 0.5) at every position
    q, p = torch.tensor([0.5, 0.25, 0.25]).log(), torch.tensor([0.25, 0.25, 0.5]).log()
    objective = _objective("full", temperature=1.0)
    # micro-batch 1: samples 0 and 2, one data position; micro-batch 2: sample 1
    first = objective(q.expand(3, 3), p.expand(3, 3), torch.tensor([0, 2, 1]), 0, 4,
                      generated=torch.tensor([True, True, False]))
    second = objective(q.expand(1, 3), p.expand(1, 3), torch.tensor([1]), 0, 4,
                       generated=torch.tensor([True]))
    summed = {k: first.terms[k].item() + second.terms[k].item() for k in first.terms}
    terms = finish_step_terms(summed)
    by_hand = (math.log(0.5 / 0.25) + math.log(0.25 / 0.5) + math.log(0.25 / 0.25)) / 3
    assert terms["generated_tokens"] == 3
    assert terms["reverse_kl_samples"] == pytest.approx(by_hand, abs=1e-6)
    assert "reverse_kl_samples_sum" not in terms
    assert finish_step_terms({"ce": 1.0}) == {"ce": 1.0}


def test_sampled_refuses_a_teacher_without_the_sampled_tokens_log_prob():
    teacher = topk_from_logits(torch.tensor([[3.0, 2.0, 0.0, -1.0]] * 2), k=2)
    student, labels = torch.zeros(2, 4), torch.tensor([0, 3])  # 3 is outside the top-2
    generated = torch.tensor([False, True])
    with pytest.raises(ValueError, match="label_log_probs"):
        _objective("sampled")(student, teacher, labels, 0, 2, generated=generated)
    # full needs no label log-prob: it runs; the unknown one is left out of the estimate
    terms = _objective("full")(student, teacher, labels, 0, 2, generated=generated).terms
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert terms["reverse_kl_samples_sum"].item() == 0.0
    # outside the generated positions, a label outside the top-k is no problem
    _objective("sampled")(student, teacher, labels, 0, 2, generated=torch.zeros(2).bool())


def test_generated_needs_a_teacher_and_names_are_checked():
    with pytest.raises(ValueError, match="need a teacher"):
        _objective()(torch.zeros(2, 3), None, torch.tensor([0, 1]), 0, 2,
                     generated=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="on_policy_loss"):
        _objective("reinforce")
    cfg = LossConfig()  # a recipe's loss section, its defaults (validation sets total_steps)
    for schedule in (cfg.soft_weight, cfg.temperature, cfg.beta, cfg.router_aux_weight):
        schedule.total_steps = 10
    assert losses.build_objective(cfg).on_policy_loss == "full"
    assert losses.build_objective(cfg, on_policy_loss="sampled").on_policy_loss == "sampled"


class _TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 7)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.embed(input_ids))


def test_lm_with_objective_threads_generated_to_the_objective():
    torch.manual_seed(7)
    lm = _TinyLM()
    module = LMWithObjective(lm, _objective("sampled"), fused=False, router_aux=False,
                             vocab_rows=7)
    ids, labels = torch.randint(0, 7, (2, 4)), torch.randint(0, 7, (2, 4))
    teacher, generated = torch.randn(2, 4, 7), torch.tensor([[False] * 4, [True] * 4])
    terms, _ = module(ids, labels, losses.Logits(teacher), 0, 8, generated=generated)
    direct = _objective("sampled")(lm.embed(ids), teacher, labels, 0, 8, generated=generated)
    assert terms.total.item() == pytest.approx(direct.total.item(), rel=1e-6)
    assert terms.terms["generated_tokens"].item() == 4
