"""The interface the training loop calls on every teacher."""

from __future__ import annotations

from typing import Protocol, Union

import torch

# What a teacher hands the loss: full logits (batch, seq, V), or its final hidden states
# (batch, seq, H) with its output head (V, H) for the memory-bounded fused path.
TeacherOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


class Teacher(Protocol):
    """Where the soft targets come from.

    A frozen teacher (``trains`` false) answers ``outputs`` without gradients. A teacher
    that trains (codistillation) also carries its ``optimizer`` and ``scheduler``; the loop
    then runs its ``model`` with a hard-target objective beside the student and steps it.
    """

    trains: bool
    vocab_size: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: object | None

    def prepare(self, accelerator) -> None:
        """Place a frozen teacher's model on the device (training teachers: the loop)."""

    def outputs(self, input_ids: torch.Tensor, hidden: bool) -> TeacherOutput:
        """(batch, seq) token ids -> logits, or (hidden, head) when ``hidden`` is true."""
