"""What the fused loss needs from a causal LM: its final hidden states and output head,
and the MoE router's load-balancing loss."""

from __future__ import annotations

import torch
from torch import nn

# Config attributes of models whose logits are not exactly hidden @ head.T.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale")


def _unwrap_peft(lm: nn.Module) -> nn.Module:
    """A peft-wrapped model's transformers model (with its adapter layers injected)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def decoder_of(lm: nn.Module) -> nn.Module | None:
    """The base model that returns the final (normed) hidden states, if there is one."""
    base = getattr(_unwrap_peft(lm), "model", None)
    return base if isinstance(base, nn.Module) else None


def fused_head(lm: nn.Module) -> torch.Tensor | None:
    """The output head's weight (V, H) when logits are exactly ``hidden @ weight.T``;
    None when the model adds a bias, scaling or soft-capping (the fused path is then off)."""
    lm = _unwrap_peft(lm)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None or decoder_of(lm) is None:
        return None
    config = getattr(lm, "config", None)
    if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return head.weight


def router_aux_loss(router_logits: tuple[torch.Tensor, ...] | None, top_k: int) -> torch.Tensor | None:
    """Switch-Transformer load balancing (Fedus et al. 2022), averaged over MoE layers:
    E * sum_e f_e * P_e, with f_e the share of routed slots that go to expert e and P_e
    its mean router probability; 1 when perfectly balanced. Each entry is (tokens, E)."""
    if not router_logits:
        return None
    losses = []
    for logits in router_logits:
        experts = logits.shape[-1]
        probs = torch.softmax(logits.float(), dim=-1)                      # (tokens, E)
        chosen = logits.topk(top_k, dim=-1).indices                        # (tokens, k)
        counts = torch.zeros(experts, device=logits.device).index_add_(
            0, chosen.reshape(-1), torch.ones(chosen.numel(), device=logits.device))
        fraction = counts / chosen.numel()
        losses.append(experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()

