"""A teacher that trains on the hard targets alongside the student (codistillation,
Anil et al. 2018): its own model, optimizer and learning-rate schedule. The loop runs it
beside the student in the same pass and hands the student its outputs, detached."""

from __future__ import annotations

import torch


class CodistillTeacher:
    trains = True

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.optimizer = optimizer
        self.scheduler = scheduler

    def prepare(self, accelerator) -> None:
        return None  # the loop prepares the model with its objective, optimizer and schedule

    def outputs(self, input_ids: torch.Tensor, hidden: bool):
        raise RuntimeError("a training teacher's outputs come from the loop's forward pass")
