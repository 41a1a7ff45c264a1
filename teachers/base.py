"""The interface the training loop calls on every teacher."""

from __future__ import annotations

from typing import Protocol

import torch


class Teacher(Protocol):
    """Produces next-token logits for a batch; may train alongside the student.

    ``logits`` returns (batch, seq, vocab). When ``trains`` is true they carry the graph
    so the loop can add the teacher's own hard-target loss to the backward pass, and
    ``step`` applies the teacher's optimizer; the student always sees them detached.
    """

    trains: bool
    vocab_size: int
    model: torch.nn.Module

    def prepare(self, accelerator) -> None:
        """Hand the teacher's model (and optimizer) to accelerate; called once."""

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq) token ids -> (batch, seq, vocab) logits."""

    def step(self, accelerator, max_grad_norm: float) -> None:
        """Optimizer step after the loop's backward; a no-op for frozen teachers."""
