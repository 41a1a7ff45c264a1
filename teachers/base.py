"""The interface the training loop calls on every teacher."""

from __future__ import annotations

from typing import Protocol, Union

import torch

from losses import TopK

# What a teacher hands the loss: full logits (batch, seq, V); its final hidden states
# (batch, seq, H) with its output head (V, H) for the memory-bounded fused path; or sparse
# top-k log-probabilities with a tail bucket (a cache).
TeacherOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor], TopK]


class Teacher(Protocol):
    """Where the soft targets come from.

    A frozen teacher (``trains`` false) answers ``outputs`` without gradients. A teacher
    that trains (codistillation) also carries its ``optimizer`` and ``scheduler``; the loop
    then runs its ``model`` with a hard-target objective beside the student and steps it.
    ``vocab_size`` is the number of rows of its output head (None for no teacher).
    ``runs_ahead`` says whether ``outputs`` may be called for the next micro-batch from a
    worker thread while the student trains (``teacher.prefetch``): frozen, and its forward
    runs no collectives.
    """

    trains: bool
    runs_ahead: bool
    vocab_size: int | None
    model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | None
    scheduler: object | None

    def prepare(self, accelerator, train_blocks: torch.Tensor) -> None:
        """Place the teacher (or fill its cache over ``train_blocks``); called once."""

    def outputs(self, batch: dict[str, torch.Tensor], hidden: bool) -> TeacherOutput | None:
        """Outputs for a micro-batch (``input_ids``, ``labels``, ``block_indices``);
        (hidden, head) when ``hidden`` is true and the teacher can give them."""


class NoTeacher:
    """``kind: none``: hard targets only (pretraining a teacher, or a baseline)."""

    trains = False
    runs_ahead = False  # nothing to run
    vocab_size = None
    model = None
    optimizer = None
    scheduler = None

    def prepare(self, accelerator, train_blocks: torch.Tensor) -> None:
        return None

    def outputs(self, batch: dict[str, torch.Tensor], hidden: bool) -> None:
        return None
