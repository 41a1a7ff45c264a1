"""A teacher that trains alongside the student (codistillation, Anil et al. 2018).

It owns its model, objective, optimizer and learning-rate schedule, trained on the hard
targets (and, with a mutual weight, on the student's outputs too: deep mutual learning,
Zhang et al. 2018). Each micro-batch it runs its own forward and backward before the
student's and hands the student its live outputs; with ``snapshot_every`` the student reads
a frozen copy of the teacher refreshed every N optimizer steps instead.
"""

from __future__ import annotations

import contextlib
import copy
from collections import defaultdict

import torch

import losses
import students
from losses.outputs import ModelOutput
from teachers.base import MicroBatch, Placement, Teacher, TeacherSetup
from teachers.forward import LMWithObjective, lm_outputs


class CodistillTeacher(Teacher):
    runs_ahead = False  # its outputs depend on the step before

    def __init__(self, lm: torch.nn.Module, setup: TeacherSetup, lr: float,
                 mutual_weight: float = 0.0, snapshot_every: int = 0) -> None:
        self.lm = lm
        self.config = lm.config
        self.vocab_size = lm.get_output_embeddings().weight.shape[0]
        self.vocab_rows = setup.vocab_rows
        self.max_grad_norm = setup.max_grad_norm
        self.mutual = mutual_weight > 0  # whether it also learns from the student's outputs
        self.objective = losses.hard_target_objective(setup.chunk_size, mutual_weight)
        self.optimizer, self.scheduler = setup.make_optimizer(lm, lr)
        self.snapshot_every = snapshot_every
        # A module, so accelerate checkpoints it (register_for_checkpointing) for exact resume.
        self.snapshot: torch.nn.Module | None = None
        if snapshot_every:
            self.snapshot = copy.deepcopy(lm).eval().requires_grad_(False)
        self.module: torch.nn.Module | None = None  # the prepared LM + objective
        self.accelerator = None
        self.hidden = False
        self._student_outputs = None
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))

    def describe(self) -> str:
        config = self.config
        return (f"codistillation with a `{config.model_type}` teacher ({config.num_hidden_layers} "
                f"layers, hidden {config.hidden_size}) trained alongside (mutual learning "
                f"{'on' if self.mutual else 'off'}, snapshot every "
                f"{self.snapshot_every or 'step (live)'})")

    def prepare(self, placement: Placement) -> None:
        accelerator = self.accelerator = placement.accelerator
        self.hidden = placement.hidden and students.fused_head(self.lm) is not None
        self._student_outputs = placement.student_outputs
        if self.mutual and self._student_outputs is None:
            raise ValueError("a mutually learning teacher needs the student's outputs")
        module = LMWithObjective(self.lm, self.objective, self.hidden, router_aux=False,
                                 vocab_rows=self.vocab_rows)
        self.module, self.optimizer, self.scheduler = accelerator.prepare(
            module, self.optimizer, self.scheduler)
        if self.snapshot is not None:
            self.snapshot = self.snapshot.to(accelerator.device)
            accelerator.register_for_checkpointing(self.snapshot)

    def outputs(self, batch: MicroBatch) -> ModelOutput:
        """Learn from ``batch`` (forward and backward), then answer with the live
        teacher's outputs, or the snapshot's."""
        accelerator = self.accelerator
        peer = self._student_outputs(batch.input_ids) if self.mutual else None
        # The loop's accumulate() covers the student only: skip this module's gradient
        # all-reduce on the micro-batches that do not end an optimizer step, as it would.
        sync = contextlib.nullcontext() if accelerator.sync_gradients \
            else accelerator.no_sync(self.module)
        with sync:
            # It learns the data: on-policy rows' sampled tokens are the student's text, not
            # targets (hard_labels ignores them), and the step's data tokens normalise it.
            terms, own = self.module(batch.input_ids, batch.hard_labels, peer, batch.step,
                                     batch.hard_step_tokens)
            # accelerate divides by the accumulation steps and DDP averages over processes;
            # the loss is already the step's token mean: undo both (as the student does).
            scale = accelerator.gradient_accumulation_steps * accelerator.num_processes
            accelerator.backward(terms.total * scale)
        self._sums["teacher_ce"] = self._sums["teacher_ce"] + terms.terms["ce"]
        if self.mutual:
            self._sums["teacher_kd"] = self._sums["teacher_kd"] + terms.terms["kd"]
        if self.snapshot is None:
            return own
        with torch.no_grad():
            return lm_outputs(self.snapshot, batch.input_ids, self.hidden, self.vocab_rows)[0]

    def load_weights(self) -> torch.nn.Module:
        return self.lm

    def step_terms(self) -> dict[str, torch.Tensor]:
        sums, self._sums = dict(self._sums), defaultdict(lambda: torch.zeros(()))
        return sums

    def optimizer_step(self, step: int) -> None:
        if self.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.refresh_snapshot(step)

    def refresh_snapshot(self, step: int) -> None:
        """Copy the live weights into the snapshot every ``snapshot_every`` steps."""
        if self.snapshot is not None and step % self.snapshot_every == 0:
            with torch.no_grad():
                for target, source in zip(self.snapshot.parameters(), self.lm.parameters()):
                    target.copy_(source)

    def discard_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def trained_model(self) -> torch.nn.Module:
        return self.lm


def build(cfg, setup: TeacherSetup) -> CodistillTeacher:
    section = cfg.codistill
    lm = students.build_model(setup.model_config(section.model), setup.efficient_moe)
    return CodistillTeacher(lm, setup, section.lr, section.mutual_weight, section.snapshot_every)


def check(cfg) -> None:
    if cfg.prefetch == "on":
        raise ValueError("teacher.prefetch: 'on' needs a frozen teacher; a codistilled teacher "
                         "changes every step, so its outputs cannot be computed ahead. Use "
                         "'auto' or 'off'.")
