"""Memory-bounded loss computation: student logits formed chunk by chunk from hidden states.

The plain path materialises (tokens, vocab) logits and keeps them, plus several float32
softmax intermediates, alive until the backward pass. Here each chunk's logits are formed,
used and differentiated inside the forward pass; only the gradients with respect to the
hidden states (tokens, hidden) and the head weight (vocab, hidden) are kept, and the
backward pass merely scales them. Peak extra memory is O(chunk_size x vocab).

The loss of a chunk must be linear in the upstream gradient (a plain sum), which holds for
every objective here: its weights are fixed before the pass (the on-policy estimator's
advantage is detached, so it is such a weight too). Per-token tensors fixed before the
pass (the ``generated`` mask, per-token loss weights) travel as ``per_token``, a mapping of
tensors shaped like the labels; ``chunk_fn`` gets each chunk's rows of them, on both paths.
"""

from __future__ import annotations

from typing import Callable

import torch

from losses.outputs import TeacherOutput

Tensor = torch.Tensor
PerToken = dict[str, Tensor]
# (student_logits (n, V), teacher rows, labels (n,), per-token rows {name: (n,)})
#   -> (loss scalar, stats (k,))
ChunkFn = Callable[[Tensor, object, Tensor, PerToken], tuple[Tensor, Tensor]]


class _ChunkedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, head_weight: Tensor, labels: Tensor, teacher,
                chunk_fn: ChunkFn, chunk_size: int, per_token: PerToken):
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32)
        # (V, H); the first chunk writes it (mm), the others accumulate (addmm_): no zero fill
        grad_weight = (torch.empty_like if hidden.shape[0] else torch.zeros_like)(
            head_weight, dtype=torch.float32)
        weight = head_weight.detach()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        stats = None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows].detach()
            # Differentiate with respect to the chunk's logits only, then apply the two
            # matmuls by hand: the head's gradient accumulates inside its GEMM (addmm_),
            # instead of one extra (vocab x hidden) pass per chunk.
            logits = (h @ weight.to(h.dtype).t()).requires_grad_()  # (n, V)
            with torch.enable_grad():
                loss, chunk_stats = chunk_fn(logits, None if teacher is None else teacher.rows(rows),
                                             labels[rows],
                                             {k: v[rows] for k, v in per_token.items()})
                (grad_logits,) = torch.autograd.grad(loss, [logits])
            total += loss.detach().float()
            del logits, loss  # free the chunk's logits before its gradient's two matmuls
            grad_logits = grad_logits.float()                       # (n, V)
            if hidden.requires_grad:  # written in place: no (n, H) temporary and copy
                torch.mm(grad_logits, weight.float(), out=grad_hidden[rows])  # (n, H)
            if head_weight.requires_grad and start == 0:
                torch.mm(grad_logits.t(), h.float(), out=grad_weight)  # (V, H)
            elif head_weight.requires_grad:
                grad_weight.addmm_(grad_logits.t(), h.float())      # (V, H)
            stats = chunk_stats.detach() if stats is None else stats + chunk_stats.detach()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, head_weight.dtype)
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total: Tensor, grad_stats: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return ((grad_hidden * grad_total).to(hidden_dtype),
                (grad_weight * grad_total).to(weight_dtype), None, None, None, None, None)


def chunked_linear_loss(hidden: Tensor, head_weight: Tensor, labels: Tensor,
                        teacher: TeacherOutput | None, chunk_fn: ChunkFn,
                        chunk_size: int = 256,
                        per_token: PerToken | None = None) -> tuple[Tensor, Tensor]:
    """Sum of ``chunk_fn`` over token chunks with logits = hidden @ head_weight.T.

    hidden: (..., H); head_weight: (V, H); labels: (...); teacher: any teacher output of
    the same leading shape, or None; per_token: tensors shaped like ``labels`` (a
    ``generated`` mask, per-token weights) that ``chunk_fn`` gets chunk by chunk.
    Returns (loss, stats).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (tokens, H)
    return _ChunkedLinearLoss.apply(flat_hidden, head_weight, labels.reshape(-1),
                                    _flatten(teacher), chunk_fn, chunk_size,
                                    _flat_rows(per_token))


def plain_loss(student_logits: Tensor, labels: Tensor, teacher: TeacherOutput | None,
               chunk_fn: ChunkFn, per_token: PerToken | None = None) -> tuple[Tensor, Tensor]:
    """The same sum over all tokens at once, on materialised logits (..., V)."""
    flat_teacher = _flatten(teacher)
    return chunk_fn(student_logits.reshape(-1, student_logits.shape[-1]),
                    None if flat_teacher is None else flat_teacher.rows(slice(None)),
                    labels.reshape(-1), _flat_rows(per_token))


def _flatten(teacher: TeacherOutput | None) -> TeacherOutput | None:
    return None if teacher is None else teacher.flatten()


def _flat_rows(per_token: PerToken | None) -> PerToken:
    """Each per-token tensor (...) as (tokens,), token-major like the labels."""
    return {name: value.reshape(-1) for name, value in (per_token or {}).items()}
