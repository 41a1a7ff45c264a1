"""The closed-form gradients (losses.closed_form) against autograd through the formulas of
losses.divergences, and against hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losses
from losses.closed_form import CLOSED_FORM, closed_form_divergence
from losses.divergences import DIVERGENCES, DivergenceParams

CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2),
         ("jsd", 0.9), ("jsd", 0.0), ("jsd", 1.0)]


def _reference(z: torch.Tensor, log_p: torch.Tensor, kind: str, beta: float):
    """Autograd through log_softmax and the divergence's own formula."""
    log_q = F.log_softmax(z, dim=-1)
    return DIVERGENCES[kind](log_q, log_p, DivergenceParams(beta=beta)), log_q


@pytest.mark.parametrize("kind,beta", CASES)
def test_value_and_gradient_equal_autograd_through_the_formula(kind: str, beta: float):
    torch.manual_seed(0)
    z = (3 * torch.randn(5, 11, dtype=torch.float64)).requires_grad_()
    log_p = F.log_softmax(3 * torch.randn(5, 11, dtype=torch.float64), dim=-1)
    upstream = torch.rand(5, dtype=torch.float64)  # per-token weights, as the objective's
    value, _ = closed_form_divergence(z, log_p, kind, beta)
    (grad,) = torch.autograd.grad((upstream * value).sum(), [z])
    ref_value, _ = _reference(z, log_p, kind, beta)
    (ref_grad,) = torch.autograd.grad((upstream * ref_value).sum(), [z])
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", CLOSED_FORM)
def test_log_q_output_carries_the_cross_entropy_gradient(kind: str):
    """At T = 1 the hard term reads the same log q: both gradients must add up."""
    torch.manual_seed(1)
    z = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    log_p = F.log_softmax(torch.randn(4, 7, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 3, 6, 2])

    def total(value, log_q):
        return 0.3 * value.sum() + 0.7 * F.nll_loss(log_q, labels, reduction="sum")

    (grad,) = torch.autograd.grad(total(*closed_form_divergence(z, log_p, kind)), [z])
    (ref_grad,) = torch.autograd.grad(total(*_reference(z, log_p, kind, 0.5)), [z])
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_forward_kl_by_hand():
    # q = softmax([0, ln 3]) = (1/4, 3/4); p = (1/2, 1/2)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    log_p = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    value, _ = closed_form_divergence(z, log_p, "forward_kl")
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value.sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([[0.25 - 0.5, 0.75 - 0.5]],
                                                    dtype=torch.float64))


def test_jsd_by_hand():
    # q = (1/4, 3/4), p = (1/2, 1/2), beta 1/2: M = (3/8, 5/8)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    log_p = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    value, _ = closed_form_divergence(z, log_p, "jsd", 0.5)

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b))
    m = (3 / 8, 5 / 8)
    expected = 0.5 * kl((0.5, 0.5), m) + 0.5 * kl((0.25, 0.75), m)
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind,beta", CASES)
def test_banned_tokens_contribute_nothing_and_give_no_nan(kind: str, beta: float):
    torch.manual_seed(2)
    banned = torch.zeros(3, 6, dtype=torch.float64)
    banned[:, 0] = float("-inf")
    z = (torch.randn(3, 6, dtype=torch.float64) + banned).requires_grad_()
    log_p = F.log_softmax(torch.randn(3, 6, dtype=torch.float64) + banned, dim=-1)
    value, _ = closed_form_divergence(z, log_p, kind, beta)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(z.grad).all()
    # the same as dropping the banned outcome from both sides
    kept = z.detach()[:, 1:].clone()
    expected, _ = closed_form_divergence(kept, F.log_softmax(log_p[:, 1:], dim=-1), kind, beta)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    assert (z.grad[:, 0] == 0).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", CLOSED_FORM)
def test_public_divergence_matches_the_autograd_formula_path(kind: str, temperature: float):
    """losses.divergence (now closed form for full logits) against a top-k teacher with
    k = V, which takes the autograd path and compares the same distributions."""
    torch.manual_seed(3)
    student = torch.randn(2, 3, 9, requires_grad=True)
    teacher = torch.randn(2, 3, 9)
    labels = torch.randint(0, 9, (2, 3))
    labels[0, 1] = -100
    fast = losses.divergence(student, teacher, labels, kind, temperature=temperature, beta=0.3)
    (fast_grad,) = torch.autograd.grad(fast, [student])
    slow = losses.divergence(student, losses.topk_from_logits(teacher, 9), labels, kind,
                             temperature=temperature, beta=0.3)
    (slow_grad,) = torch.autograd.grad(slow, [student])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-4, atol=1e-6)


def test_one_default_chunk_size_for_the_recipe_the_functional_api_and_the_objective():
    """benchmarks/fused_loss.py and the docs quote figures at the library's default."""
    import inspect

    from distill.config import LossConfig

    functional = inspect.signature(losses.fused_divergence).parameters["chunk_size"].default
    objective = inspect.signature(losses.Objective).parameters["chunk_size"].default
    assert LossConfig().chunk_size == functional == objective == 256
