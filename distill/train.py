"""The training loop: one function, read top to bottom.

Build everything, ``accelerator.prepare``, then a plain loop in which each optimizer step
gathers its micro-batches, counts their valid target tokens, and runs forward/backward
inside ``accelerator.accumulate``. The same code runs on one CPU and on many GPUs.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

import losses
import students
import teachers
from distill.build import build_models, write_init_report
from distill.checkpoint import (
    complete_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from distill.config import Recipe
from distill.corpus import load_corpus
from distill.data import BlockOrder, cache_root, prepare_data, split_block
from distill.errors import TrainingStopped, UserError
from distill.evaluation import evaluate_lm
from distill.lock import OutputDirLock
from distill.metrics import MetricsLog
from distill.model_card import write_model_card
from distill.modules import LMWithObjective
from distill.recipe import dump_recipe
from teachers.prefetch import TeacherPrefetch


@dataclass
class RunResult:
    output_dir: Path
    first_val_loss: float | None
    final_val_loss: float
    steps: int
    main_process: bool = True


def _check_output_dir(output_dir: Path, resume: bool) -> None:
    used = (output_dir / "metrics.jsonl").exists() or complete_checkpoints(output_dir)
    if used and not resume:
        raise UserError(f"output_dir {output_dir} already holds a run; pass --resume to "
                        "continue it, or choose another output_dir.")


def _save_student(student, tokenizer, output_dir: Path, recipe: Recipe, metrics: dict) -> None:
    """save_pretrained (and a model card) into a staging directory, then rename: student/
    is whole or absent."""
    target = output_dir / "student"
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".staging-student-"))
    student.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_model_card(staging, recipe, metrics, adapter=recipe.student.peft is not None,
                     shown_path=target)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _optimizer_and_schedule(model, lr: float, train):
    from transformers import get_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]  # adapters only under peft
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=train.weight_decay)
    name = "constant_with_warmup" if train.lr_schedule == "constant" else train.lr_schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=train.max_steps)
    return optimizer, scheduler


def forward_backward(accelerator, student, teacher, teacher_module, micro_batches: list[dict],
                     step: int, step_tokens: int, fused: bool,
                     prefetch: TeacherPrefetch | None = None,
                     following: dict | None = None) -> tuple[dict, dict]:
    """Forward and backward over one optimizer step's micro-batches; gradients accumulate
    in the modules. ``teacher_module`` is the training teacher's module (None for a frozen
    teacher). A frozen teacher's outputs come through ``prefetch``, which starts each next
    micro-batch's (``following``: the next step's first) before the student's pass on this
    one. Returns this process's share of each logged term, and the step's scalars."""
    if prefetch is None:
        prefetch = TeacherPrefetch(teacher, fused, enabled=False)
    # accelerate's backward divides by gradient_accumulation_steps and DDP averages over
    # processes; the loss is already a sum over the step's tokens divided by the step's
    # token count, so undo both to get exactly that gradient.
    loss_scale = accelerator.gradient_accumulation_steps * accelerator.num_processes
    modules = [student] if teacher_module is None else [student, teacher_module]
    mutual = teacher_module is not None and teacher.mutual
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
    scalars: dict[str, float] = {}
    upcoming = [*micro_batches[1:], following]
    for mb, next_mb in zip(micro_batches, upcoming):
        ids, labels = mb["input_ids"], mb["labels"]
        with accelerator.accumulate(*modules), accelerator.autocast():
            loss = 0.0
            if teacher_module is None:
                teacher_out = prefetch.get(mb)
                prefetch.submit(next_mb)
            else:  # the teacher learns the hard targets (and the student) in the same pass
                peer = student(ids, None, None, step, step_tokens, outputs_only=True)[1] \
                    if mutual else None
                teacher_terms, teacher_out = teacher_module(ids, labels, peer, step, step_tokens)
                if teacher.snapshot is not None:  # the student reads the frozen snapshot
                    teacher_out = teacher.outputs(mb, hidden=fused)
                loss = teacher_terms.total
                sums["teacher_ce"] = sums["teacher_ce"] + teacher_terms.terms["ce"]
                if mutual:
                    sums["teacher_kd"] = sums["teacher_kd"] + teacher_terms.terms["kd"]
            out, _ = student(ids, labels, teacher_out, step, step_tokens)
            accelerator.backward((loss + out.total) * loss_scale)
        for name, value in out.terms.items():
            sums[name] = sums[name] + value
        scalars = out.scalars
    return sums, scalars


def _use_prefetch(mode: str, teacher, device: torch.device) -> bool:
    """Run the teacher one micro-batch ahead where it can (see ``Teacher.runs_ahead``): on
    CUDA by default; the recipe check refuses 'on' for teachers that cannot."""
    return teacher.runs_ahead and (mode == "on" or (mode == "auto" and device.type == "cuda"))


def _use_fused(mode: str, student_lm, teacher) -> bool:
    """Whether both sides can give hidden states and a plain head (a cache gives top-k
    log-probabilities, which the fused path takes as they are)."""
    teacher_ok = teacher.model is None or isinstance(teacher, teachers.CachedTeacher) or \
        students.fused_head(teacher.model) is not None
    possible = students.fused_head(student_lm) is not None and teacher_ok
    if mode == "on" and not possible:
        raise UserError("loss.fused: 'on' needs teacher and student with plain linear output "
                        "heads and a base model that returns hidden states; use 'auto' or 'off'.")
    return mode == "on" or (mode == "auto" and possible)


def _use_cpu(requested: bool) -> bool:
    """accelerate goes distributed on CPU (gloo) only with cpu=True: under torchrun on a
    machine without GPUs, ask for it, so `torchrun --nproc_per_node N -m distill run ...`
    trains with DDP without any other setting."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return requested or (launched and not torch.cuda.is_available())


def run(recipe: Recipe, resume: bool = False) -> RunResult:
    """Train as ``distill run`` does. The first process holds the output directory's lock
    (every process of a launch shares the directory)."""
    output_dir = Path(recipe.output_dir)
    _check_output_dir(output_dir, resume)
    try:
        if int(os.environ.get("RANK", "0")) != 0:
            return _train(recipe, resume)
        with OutputDirLock(output_dir):
            return _train(recipe, resume)
    except BaseException as error:
        # The finished frames of the traceback still hold the DDP-wrapped models: let them go.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Free the training objects, then destroy the process group, while the interpreter is
    whole. DDP's reducer holds the gloo or NCCL group and its worker threads; left to
    interpreter shutdown, a process could abort ("terminate called without an active
    exception") after its training had finished, failing the whole launch."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _train(recipe: Recipe, resume: bool) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    train = recipe.train
    output_dir = Path(recipe.output_dir)
    # Schedules count optimizer steps, so the scheduler must step once per optimizer step
    # whatever the number of processes (accelerate's default steps it num_processes times).
    accelerator = Accelerator(gradient_accumulation_steps=train.grad_accum_steps,
                              mixed_precision=train.mixed_precision, cpu=_use_cpu(train.cpu),
                              step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)

    with accelerator.main_process_first():  # the first process trains and caches the tokenizer
        data = prepare_data(recipe.data, load_corpus(recipe.data))
    tokenizer = data.tokenizer

    models = build_models(recipe, tokenizer, lambda model, lr: _optimizer_and_schedule(
        model, lr, train), cache_root(recipe.data))
    teacher = models.teacher
    fused = _use_fused(recipe.loss.fused, models.student, teacher)
    aux = recipe.loss.router_aux_weight
    student = LMWithObjective(models.student, losses.build_objective(recipe.loss), fused,
                              router_aux=max(aux.start, aux.end) > 0,
                              vocab_rows=models.vocab_rows)
    optimizer, scheduler = _optimizer_and_schedule(student, train.lr, train)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    trained = [(student, optimizer, scheduler)]
    teacher_module = None
    if teacher.trains:
        teacher_module = LMWithObjective(
            teacher.model, losses.hard_target_objective(recipe.loss.chunk_size,
                                                        recipe.teacher.mutual_weight),
            fused, router_aux=False, vocab_rows=models.vocab_rows)
        prepared = accelerator.prepare(teacher_module, teacher.optimizer, teacher.scheduler)
        teacher_module = prepared[0]
        trained.append(prepared)
    teacher.prepare(accelerator, data.train)
    if main:
        write_init_report(models.init_report, output_dir)
    prefetch = TeacherPrefetch(teacher, fused, _use_prefetch(recipe.teacher.prefetch, teacher,
                                                             accelerator.device),
                               context=accelerator.autocast, device=accelerator.device)
    if main and prefetch.enabled:
        where = "its own CUDA stream" if accelerator.device.type == "cuda" else "a worker thread"
        print(f"distill: teacher prefetch on: the teacher runs one micro-batch ahead on {where}")
    order = BlockOrder(len(data.train), train.micro_batch_size, recipe.seed,
                       accelerator.process_index, accelerator.num_processes)

    start_step, tokens_seen, first_val_loss = 0, 0, None
    state = load_latest_checkpoint(accelerator, output_dir) if resume else None
    if state is not None:
        start_step, tokens_seen = state["step"], state["tokens"]
        first_val_loss = state.get("first_val_loss")
        order.load_state_dict(state["data_order"])
    log = MetricsLog(output_dir / "metrics.jsonl", enabled=main)
    log.truncate_after(start_step, train.max_steps)
    if main:
        (output_dir / "config.yaml").write_text(dump_recipe(recipe))

    last_eval: dict = {}

    def evaluate(step: int) -> float:
        student.eval()
        row = evaluate_lm(accelerator.unwrap_model(student).lm, data.validation, accelerator,
                          train.eval_batch_size, train.eval_batches, expert_load=True)
        row["val_tokens"] = row.pop("tokens")  # a row's "tokens" counts training tokens seen
        if teacher.trains:
            teacher.model.eval()
            row["teacher_val_loss"] = evaluate_lm(
                teacher.model, data.validation, accelerator, train.eval_batch_size,
                train.eval_batches)["val_loss"]
            teacher.model.train()
        student.train()
        log.write({"step": step, "tokens": tokens_seen, **row})
        last_eval.update(row)
        return row["val_loss"]

    if start_step == 0:
        first_val_loss = evaluate(0)
    bar = tqdm(total=train.max_steps, initial=start_step, disable=not main, desc="distill")
    student.train()
    last_time, last_tokens = time.perf_counter(), tokens_seen
    skipped_in_a_row = 0
    def draw_step() -> list[dict]:
        micro_batches = []
        for _ in range(train.grad_accum_steps):
            indices = order.next_indices()
            micro_batches.append({**split_block(data.train[indices].to(accelerator.device)),
                                  "block_indices": indices})
        return micro_batches

    upcoming: list[dict] | None = None
    for step in range(start_step, train.max_steps):
        micro_batches = upcoming if upcoming is not None else draw_step()
        order_state = order.state_dict()  # the data position after this step: checkpointed
        # With prefetch the next step's batches are drawn now, so that the teacher can start
        # on the first of them during this step's last student pass.
        upcoming = draw_step() if prefetch.enabled and step + 1 < train.max_steps else None
        local_tokens = sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)
        step_tokens = int(accelerator.reduce(
            torch.tensor(local_tokens, device=accelerator.device), "sum"))
        sums, scalars = forward_backward(accelerator, student, teacher, teacher_module,
                                         micro_batches, step, step_tokens, fused, prefetch,
                                         upcoming[0] if upcoming else None)
        # Terms are per-process shares of the step mean: sum them across processes.
        terms = {k: float(accelerator.reduce(v.to(accelerator.device), "sum"))
                 for k, v in sums.items()}
        bad = next(((k, v) for k, v in terms.items() if not math.isfinite(v)), None)
        if bad is not None or step_tokens == 0:
            reason = "no valid target tokens" if bad is None else \
                f"non-finite {bad[0]} ({bad[1]})"
            skipped_in_a_row += 1
            if bad is not None and (train.on_nonfinite == "stop"
                                    or skipped_in_a_row > train.max_skipped_steps):
                raise TrainingStopped(
                    f"{reason} at step {step + 1}; the run stopped before the optimizer step. "
                    f"Last good checkpoint: {(complete_checkpoints(output_dir) or ['none'])[-1]}")
            for _, module_optimizer, _ in trained:  # drop this step's gradients
                module_optimizer.zero_grad(set_to_none=True)
            log.write({"step": step + 1, "tokens": tokens_seen, "skipped": reason})
            print(f"distill: step {step + 1} skipped: {reason}")
            bar.update(1)
            continue
        skipped_in_a_row = 0
        lr = scheduler.get_last_lr()[0]
        for module, module_optimizer, module_scheduler in trained:
            if train.max_grad_norm > 0:
                accelerator.clip_grad_norm_(module.parameters(), train.max_grad_norm)
            module_optimizer.step()
            module_scheduler.step()
            module_optimizer.zero_grad(set_to_none=True)
        accelerator.unwrap_model(student).objective.update({**terms, **scalars})
        if teacher.trains:
            teacher.after_step(step + 1)
        tokens_seen += step_tokens
        done = step + 1

        now = time.perf_counter()
        tokens_per_s = (tokens_seen - last_tokens) / max(now - last_time, 1e-9)
        last_time, last_tokens = now, tokens_seen
        if done % train.log_every == 0 or done == train.max_steps:
            log.write({"step": done, "tokens": tokens_seen, "lr": lr, **terms, **scalars,
                       "tokens_per_s": tokens_per_s})
        bar.set_postfix({"loss": f"{terms['loss']:.3f}", "ce": f"{terms['ce']:.3f}",
                         "kd": f"{terms.get('kd', 0.0):.3f}", "tok/s": f"{tokens_per_s:.0f}"},
                        refresh=False)
        bar.update(1)
        if train.eval_every and done % train.eval_every == 0 and done != train.max_steps:
            evaluate(done)
        if train.checkpoint_every and done % train.checkpoint_every == 0:
            save_checkpoint(accelerator, output_dir, done,
                            {"tokens": tokens_seen, "data_order": order_state,
                             "first_val_loss": first_val_loss}, train.keep_checkpoints)
    bar.close()
    prefetch.close()
    final_val_loss = evaluate(train.max_steps)
    if main:
        final = {"steps": train.max_steps, "tokens": tokens_seen, **last_eval}
        _save_student(accelerator.unwrap_model(student).lm, tokenizer, output_dir, recipe, final)
    accelerator.wait_for_everyone()
    return RunResult(output_dir=output_dir, first_val_loss=first_val_loss,
                     final_val_loss=final_val_loss, steps=train.max_steps, main_process=main)
