"""Validation loss and perplexity, token-weighted, over all processes."""

from __future__ import annotations

import math
from typing import Callable

import torch

from distill.data import split_block
from losses import token_cross_entropy


@torch.no_grad()
def validation_loss(logits_fn: Callable[[torch.Tensor], torch.Tensor], blocks: torch.Tensor,
                    batch_size: int, accelerator, max_batches: int | None = None) -> dict[str, float]:
    """Mean next-token cross-entropy over ``blocks`` (num_blocks, block_size + 1).
    Each process takes every ``num_processes``-th batch; sums are reduced across them."""
    device = accelerator.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    starts = list(range(0, len(blocks), batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts[accelerator.process_index::accelerator.num_processes]:
        batch = split_block(blocks[start:start + batch_size].to(device))
        with accelerator.autocast():
            logits = logits_fn(batch["input_ids"])
        total += token_cross_entropy(logits, batch["labels"]).double().sum()
        count += (batch["labels"] != -100).sum()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    loss = (total / count.clamp(min=1)).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
