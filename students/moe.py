"""An MoE forward for transformers' ``Llama4TextMoe`` whose cost grows with experts per token.

transformers' ``Llama4TextMoe.forward`` repeats every token once per expert, scales each
copy by its router score (0 for experts the token was not routed to) and runs a batched
matmul over all experts, so its cost is ``tokens * num_experts`` expert MLPs.
``efficient_moe_forward`` computes the same function on the routed (token, expert) pairs
only, ``tokens * top_k`` expert MLPs:

1. call ``moe.router`` as a module (so transformers' ``OutputRecorder`` hooks on
   ``Llama4Router`` still record the router logits), and take its top-k experts;
2. sort the (token, expert) pairs by expert (stable, so each expert sees its tokens in
   order) and gather the tokens, scaled by their scores as transformers does: the score
   multiplies the expert's *input*, not its output;
3. run each expert's SwiGLU MLP on its contiguous block of rows: one ``grouped_mm`` call
   per projection where torch offers one for this device, dtype and shape (seen working:
   CPU float32/bfloat16/float16 in torch 2.13, CUDA float32/bfloat16 on an H100 in torch
   2.11), else a Python loop over the experts that have rows;
4. put the rows back in (token, k) order, sum over k, add the shared expert.

The expert weights stay as they are, ``gate_up_proj`` (E, hidden, 2 * expert_dim) and
``down_proj`` (E, expert_dim, hidden), so checkpoints and ``save_pretrained`` are unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

__all__ = ["EfficientLlama4TextMoe", "efficient_moe_forward", "enable_efficient_moe"]


def efficient_moe_forward(moe: Llama4TextMoe, hidden_states: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same inputs, outputs and gradients as ``Llama4TextMoe.forward``: returns
    ``(out, router_logits)`` with ``out`` (tokens, hidden) and ``router_logits`` (tokens, E)."""
    hidden = moe.hidden_dim
    hidden_states = hidden_states.reshape(-1, hidden)                       # (tokens, hidden)
    # Called as a module, not through its forward, so that forward hooks fire.
    router_scores, router_logits = moe.router(hidden_states)                # (tokens, E) each
    top_k = moe.router.top_k
    num_experts = router_logits.shape[1]

    # The same topk call on the same logits as the router's, hence the same experts. The
    # scores are gathered from router_scores (not recomputed) so that gradients reach the
    # router weight through exactly the ops transformers uses: topk values -> scatter ->
    # sigmoid. The unselected entries (sigmoid(-inf) = 0) add nothing to either.
    experts = torch.topk(router_logits, top_k, dim=1).indices               # (tokens, k)
    scores = router_scores.gather(1, experts)                               # (tokens, k)

    flat_experts = experts.reshape(-1)                                      # (pairs,)
    # Stable: rows of one expert keep token order, so results do not depend on the sort.
    order = torch.argsort(flat_experts, stable=True)                        # (pairs,)
    # ends[e] = one past the last sorted row of expert e; searchsorted needs no host sync
    # (bincount would, on CUDA, to size its output).
    ends = torch.searchsorted(flat_experts.index_select(0, order),
                              torch.arange(num_experts, device=order.device), right=True)
    token_of_row = torch.div(order, top_k, rounding_mode="floor")           # (pairs,)
    routed_in = (hidden_states.index_select(0, token_of_row)
                 * scores.reshape(-1).index_select(0, order).unsqueeze(1))  # (pairs, hidden)

    routed_out = _experts_mlp(moe.experts, routed_in, ends)                 # (pairs, hidden)

    # Back to (token, k) order with a gather through the inverse permutation: unlike
    # index_add_ it uses no atomics on CUDA, so the forward is deterministic there too.
    inverse = torch.empty_like(order).scatter_(
        0, order, torch.arange(order.numel(), device=order.device))
    routed = routed_out.index_select(0, inverse)                            # (tokens * k, hidden)
    if top_k > 1:
        routed = routed.view(-1, top_k, hidden).sum(dim=1)                  # (tokens, hidden)

    out = moe.shared_expert(hidden_states)                                  # (tokens, hidden)
    # transformers adds the routed sum to the shared output in place: same order of sums.
    out.add_(routed)
    return out, router_logits


def _experts_mlp(experts: nn.Module, routed_in: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Llama4TextExperts' SwiGLU on rows sorted by expert; rows ``[ends[e-1], ends[e])``
    go through expert ``e``. Same op order as ``Llama4TextExperts.forward``."""
    gate_up = _grouped_matmul(routed_in, experts.gate_up_proj, ends)       # (pairs, 2 * expert_dim)
    gate, up = gate_up.chunk(2, dim=-1)
    return _grouped_matmul(up * experts.act_fn(gate), experts.down_proj, ends)  # (pairs, hidden)


def _grouped_matmul(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``rows[ends[e-1]:ends[e]] @ weight[e]`` for every expert e, concatenated.
    rows: (pairs, K), weight: (E, K, N) -> (pairs, N)."""
    if _grouped_mm_works(rows.device, rows.dtype, weight.dtype, weight.shape[1], weight.shape[2]):
        return F.grouped_mm(rows, weight, offs=ends.to(torch.int32))
    # Fallback: one host sync for the boundaries, then only the experts that have rows.
    bounds = ends.tolist()
    pieces = [rows[start:end] @ weight[e]
              for e, (start, end) in enumerate(zip([0] + bounds[:-1], bounds)) if end > start]
    # With no rows at all, a 0-row matmul keeps the weight in the graph (zero gradient).
    return torch.cat(pieces) if pieces else rows @ weight[0]


@functools.cache
def _grouped_mm_works(device: torch.device, dtype: torch.dtype, weight_dtype: torch.dtype,
                      k: int, n: int) -> bool:
    """Whether ``F.grouped_mm`` runs forward and backward for this device, dtype and
    (K, N). Only recent torch has it, each device supports only some dtypes (never float64)
    and it needs 16-byte aligned strides, so a tiny trial with the real K and N decides,
    once per combination."""
    grouped_mm = getattr(F, "grouped_mm", None)
    if grouped_mm is None or dtype != weight_dtype:
        return False
    try:
        # A trial under inference_mode or no_grad must still build a graph to test backward.
        with torch.inference_mode(False), torch.enable_grad():
            # Fixed non-negative values, not randn: the trial must not advance the global
            # RNG (runs with and without this forward would otherwise diverge).
            rows = (torch.arange(3 * k, device=device) % 7 / 7).to(dtype).view(3, k)
            weight = (torch.arange(2 * k * n, device=device) % 5 / 5).to(dtype).view(2, k, n)
            rows.requires_grad_()
            weight.requires_grad_()
            offs = torch.tensor([0, 3], device=device, dtype=torch.int32)  # expert 0 empty
            out = grouped_mm(rows, weight, offs=offs)
            out.backward(torch.ones_like(out))
            expected = rows.detach() @ weight.detach()[1]
            close = torch.allclose(out.detach().float(), expected.float(), rtol=2e-2, atol=1e-2)
            return bool(close)
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False


class EfficientLlama4TextMoe(Llama4TextMoe):
    """``Llama4TextMoe`` with ``efficient_moe_forward``; same parameters and state_dict keys.

    ``enable_efficient_moe`` swaps an instance's class to this one (rather than binding a
    method on the instance) so that the patched module still pickles, deep-copies and
    prints its kind, and ``isinstance(m, Llama4TextMoe)`` stays true."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return efficient_moe_forward(self, hidden_states)


def enable_efficient_moe(model: nn.Module) -> int:
    """Give every ``Llama4TextMoe`` in ``model`` the efficient forward, in place.

    Idempotent; returns how many MoE layers now use it (the same number on a second call).
    Parameters, buffers and state_dict keys are untouched, so ``save_pretrained`` writes
    the same checkpoint; a model loaded with ``from_pretrained`` has transformers' forward
    until this is called on it again."""
    patched = 0
    for module in model.modules():
        if type(module) is Llama4TextMoe:
            module.__class__ = EfficientLlama4TextMoe
        if isinstance(module, EfficientLlama4TextMoe):
            patched += 1
    return patched
