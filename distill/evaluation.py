"""Validation loss, perplexity and MoE expert load, token-weighted, over all processes."""

from __future__ import annotations

import math

import torch

from distill.data import split_block
from losses import token_cross_entropy


@torch.no_grad()
def validation_loss(lm, blocks: torch.Tensor, batch_size: int, accelerator,
                    max_batches: int | None = None, expert_load: bool = False) -> dict:
    """Mean next-token cross-entropy of ``lm`` over ``blocks`` (num_blocks, block_size + 1).
    Each process takes every ``num_processes``-th batch; sums are reduced across them.
    With ``expert_load``, an MoE model also reports per layer the fraction of routed
    slots each expert received (``expert_load``: a list per MoE layer)."""
    device = accelerator.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    routed = getattr(lm.config, "num_local_experts", 0) > 0 and expert_load
    counts = None
    if routed:  # (moe_layers, experts); zeros on a process that gets no batch
        layers = len(getattr(lm.config, "moe_layers", None) or range(lm.config.num_hidden_layers))
        counts = torch.zeros(layers, lm.config.num_local_experts, dtype=torch.float64,
                             device=device)
    starts = list(range(0, len(blocks), batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts[accelerator.process_index::accelerator.num_processes]:
        batch = split_block(blocks[start:start + batch_size].to(device))
        with accelerator.autocast():
            out = lm(input_ids=batch["input_ids"], **({"output_router_logits": True}
                                                       if routed else {}))
        total += token_cross_entropy(out.logits, batch["labels"]).double().sum()
        count += (batch["labels"] != -100).sum()
        if routed and getattr(out, "router_logits", None):  # absent in some transformers 5.x
            k = lm.config.num_experts_per_tok
            layer_counts = torch.stack([
                torch.bincount(r.topk(k, dim=-1).indices.reshape(-1),
                               minlength=r.shape[-1]).double() for r in out.router_logits])
            counts += layer_counts
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    loss = (total / count.clamp(min=1)).item()
    row = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    if counts is not None:
        counts = accelerator.reduce(counts, "sum")
        row["expert_load"] = (counts / counts.sum(dim=-1, keepdim=True)).tolist()
    return row
