"""Forward KL, reverse KL and generalized JSD with their gradients in closed form.

Autograd through ``log_softmax`` and the divergence formulas (``losses.divergences``)
keeps a dozen (n, V) intermediates and replays as many elementwise passes backwards. For
these three divergences the gradient with respect to the student's (tempered) logits z has
a short closed form, with q = softmax(z), p the teacher's distribution and, per row,
<x> = sum_v q_v x_v:

    forward KL  KL(p || q):                         dz = q - p
    reverse KL  KL(q || p), L = log q - log p:      dz = q (L - <L>)      (<L> is the value)
    JSD(beta)   M = beta p + (1 - beta) q,
                L = log q - log M:                  dz = (1 - beta) q (L - <L>)

(for the JSD: d/dq_v of beta KL(p||M) + (1 - beta) KL(q||M) is (1 - beta) log(q_v / M_v),
the other terms cancel because M's derivative sums with the p/M and q/M factors to one).
:class:`ClosedFormDivergence` computes the value and this gradient in one forward pass and
saves only the gradient, so the backward pass is one multiply. It also returns log q, so
a hard cross-entropy at T = 1 shares the softmax; log q's own gradient goes through the
softmax's Jacobian in the backward pass.

Outcomes where a distribution is exactly 0 (a banned token's -inf logit) contribute
nothing and give no NaN, as in ``losses.divergences``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

CLOSED_FORM = ("forward_kl", "reverse_kl", "jsd")


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_v a_v b_v per row, (n, V) x (n, V) -> (n,), without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _weighted_log_ratio(weight: Tensor, ratio: Tensor) -> Tensor:
    """sum_v weight_v ratio_v per row, with the ratio set to 0 (in place) where the weight
    is 0: a -inf log-probability there (a banned token) would make 0 * inf = NaN.

    Only such a product can be NaN (the ratio is otherwise finite or +inf), so the row sum
    tells whether the (n, V) mask is needed at all; on CPU asking costs nothing, on an
    accelerator it would wait for the device, so the mask is always applied there."""
    if weight.device.type == "cpu":
        value = _row_dot(weight, ratio)
        if not value.isnan().any():
            return value
    ratio.masked_fill_(weight == 0, 0.0)
    return _row_dot(weight, ratio)


def _forward_kl(log_q: Tensor, q: Tensor, log_p: Tensor) -> tuple[Tensor, Tensor]:
    p = log_p.exp()
    value = _weighted_log_ratio(p, torch.sub(log_p, log_q))   # sum p log(p/q)
    return value, q.sub_(p)                                    # dz = q - p (q is consumed)


def _reverse_kl(log_q: Tensor, q: Tensor, log_p: Tensor) -> tuple[Tensor, Tensor]:
    ratio = torch.sub(log_q, log_p)                             # (n, V) L = log(q/p)
    value = _weighted_log_ratio(q, ratio)                       # = <L>
    return value, ratio.sub_(value.unsqueeze(1)).mul_(q)        # dz = q (L - <L>)


def _jsd(log_q: Tensor, q: Tensor, log_p: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    p = log_p.exp()
    log_m = torch.mul(p, beta).add_(q, alpha=1.0 - beta).log_()   # (n, V) log M
    teacher_kl = _weighted_log_ratio(p, torch.sub(log_p, log_m))  # KL(p || M)
    del p
    student_ratio = log_m.neg_().add_(log_q)                    # (n, V) L = log(q/M), in place
    student_kl = _weighted_log_ratio(q, student_ratio)          # KL(q || M) = <L>
    value = beta * teacher_kl + (1.0 - beta) * student_kl
    grad = student_ratio.sub_(student_kl.unsqueeze(1)).mul_(q).mul_(1.0 - beta)
    return value, grad


class ClosedFormDivergence(torch.autograd.Function):
    """(z (n, V) float32 student logits at temperature, log_p (n, V) teacher
    log-probabilities at temperature, no gradient) -> (divergence (n,), log q (n, V))."""

    @staticmethod
    def forward(ctx, z: Tensor, log_p: Tensor, kind: str, beta: float):
        log_q = torch.log_softmax(z, dim=-1)
        q = log_q.exp()
        # GKD's convention (losses.divergences.jsd): beta 0 is forward KL, 1 reverse KL
        if kind == "forward_kl" or (kind == "jsd" and beta <= 0.0):
            value, grad = _forward_kl(log_q, q, log_p)
        elif kind == "reverse_kl" or (kind == "jsd" and beta >= 1.0):
            value, grad = _reverse_kl(log_q, q, log_p)
        elif kind == "jsd":
            value, grad = _jsd(log_q, q, log_p, beta)
        else:
            raise ValueError(f"no closed form for {kind!r}; allowed: {', '.join(CLOSED_FORM)}")
        # unused outputs' gradients stay None (no (n, V) zeros to add)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad, log_q)
        return value, log_q

    @staticmethod
    def backward(ctx, grad_value: Tensor | None, grad_log_q: Tensor | None):
        grad, log_q = ctx.saved_tensors
        grad_z = None
        if grad_value is not None:
            # not in place: a second backward (retain_graph=True) needs the saved gradient
            grad_z = grad * grad_value.unsqueeze(1)
        if grad_log_q is not None:
            # log_softmax's Jacobian: g - q * sum(g)
            through_softmax = grad_log_q - log_q.exp() * grad_log_q.sum(dim=-1, keepdim=True)
            grad_z = through_softmax if grad_z is None else grad_z.add_(through_softmax)
        return grad_z, None, None, None


def closed_form_divergence(z: Tensor, log_p: Tensor, kind: str,
                           beta: float = 0.5) -> tuple[Tensor, Tensor]:
    """The divergence per row (n,) and log q (n, V), from student logits z (n, V) float32
    at temperature and the teacher's log-probabilities log_p (n, V) at temperature."""
    return ClosedFormDivergence.apply(z, log_p.detach(), kind, beta)
