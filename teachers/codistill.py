"""A teacher that trains alongside the student (codistillation, Anil et al. 2018): its own
model, optimizer and learning-rate schedule, trained on the hard targets (and, with a
mutual weight, on the student's outputs too). The loop runs it beside the student in the
same pass. With ``snapshot_every`` the student learns from a frozen copy of the teacher
refreshed every N steps instead of its live weights."""

from __future__ import annotations

import copy

import torch

import students


class CodistillTeacher:
    trains = True
    runs_ahead = False  # its outputs depend on the step before

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                 scheduler, snapshot_every: int = 0, mutual: bool = False) -> None:
        self.model = model
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.snapshot_every = snapshot_every
        self.mutual = mutual  # whether it also learns from the student's outputs
        # A module, so accelerate checkpoints it (register_for_checkpointing) for exact resume.
        self.snapshot: torch.nn.Module | None = None
        if snapshot_every:
            self.snapshot = copy.deepcopy(model).eval().requires_grad_(False)

    def prepare(self, accelerator, train_blocks: torch.Tensor) -> None:
        # The loop prepares the live model with its objective, optimizer and schedule.
        if self.snapshot is not None:
            self.snapshot = self.snapshot.to(accelerator.device)
            accelerator.register_for_checkpointing(self.snapshot)

    def outputs(self, batch: dict[str, torch.Tensor], hidden: bool):
        """The snapshot's outputs (the live teacher's come from the loop's forward)."""
        if self.snapshot is None:
            raise RuntimeError("a live training teacher's outputs come from the loop's forward")
        with torch.no_grad():
            if hidden and students.fused_head(self.snapshot) is not None:
                states = students.decoder_of(self.snapshot)(
                    input_ids=batch["input_ids"]).last_hidden_state
                return states, students.fused_head(self.snapshot)
            return self.snapshot(input_ids=batch["input_ids"]).logits

    def after_step(self, step: int) -> None:
        """Refresh the snapshot every ``snapshot_every`` optimizer steps."""
        if self.snapshot is not None and step % self.snapshot_every == 0:
            with torch.no_grad():
                for target, source in zip(self.snapshot.parameters(), self.model.parameters()):
                    target.copy_(source)
