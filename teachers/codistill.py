"""A teacher that trains on the hard targets alongside the student (codistillation,
Anil et al. 2018): it has its own model, optimizer and learning-rate schedule."""

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
        self.model, self.optimizer, self.scheduler = accelerator.prepare(
            self.model, self.optimizer, self.scheduler)
        self.model.train()

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def step(self, accelerator, max_grad_norm: float) -> None:
        if max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
