"""The training loop: one function, read top to bottom.

Build everything, ``accelerator.prepare``, then a plain loop in which each optimizer step
gathers its micro-batches, counts their valid target tokens, and runs forward/backward
inside ``accelerator.accumulate``. The same code runs on one CPU and on many GPUs.
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

import losses
import students
from distill.build import blocks_read, build_models, write_init_report
from distill.checkpoint import (complete_checkpoints, last_complete, load_latest_checkpoint,
                               remove_leftovers, require_checkpoint, save_checkpoint,
                               writes_to)
from distill.config import Recipe
from distill.corpus import load_corpus
from distill.data import BlockOrder, cache_root, prepare_data
from distill.errors import TrainingStopped, UserError
from distill.files import write_atomic
from distill.fingerprint import built_fingerprint, check_built, check_recipe, write_fingerprint
from distill.lock import OutputDirLock
from distill.metrics import MetricsLog
from distill.policies import NonFiniteGuard, Validator
from distill.prefetch import TeacherPrefetch
from distill.progress import StepProgress
from distill.recipe import check_sources, dump_recipe
from distill.rollout import Rollouts
from distill.run_plot import write_run_plot
from distill.saving import save_outputs
from distill.startup import StartupClock, process_age_s
from distill.steps import DrawnStep, draws_ahead, draw_step
from distill.summary import print_startup_summary, run_summary
from distill.teacher_use import unused_teacher_reason
from teachers import (LMWithObjective, MicroBatch, Placement, Teacher, TeacherRefused,
                      TeacherUnavailable)


@dataclass
class RunResult:
    output_dir: Path
    first_val_loss: float | None   # None: not evaluated (train.eval_at_start false, resume)
    final_val_loss: float | None   # None: not evaluated (train.eval_at_end false)
    steps: int
    main_process: bool = True


def _check_output_dir(output_dir: Path, resume: bool) -> None:
    checkpoints = complete_checkpoints(output_dir)
    if resume or not (checkpoints or (output_dir / "metrics.jsonl").exists()):
        return
    if checkpoints:
        raise UserError(f"output_dir {output_dir} already holds a run; pass --resume to "
                        "continue it, or choose another output_dir.")
    # A run stopped before its first checkpoint (or one without checkpoints): --resume has
    # nothing to start from, so do not suggest it; its files are the user's to remove.
    raise UserError(f"output_dir {output_dir} already holds a run (metrics.jsonl) but no "
                    "checkpoint to resume from; choose another output_dir, or remove this one "
                    "to start over.")


def _optimizer_and_schedule(model, lr: float, train):
    from transformers import get_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]  # adapters only under peft
    # The fused kernel: one pass over all parameters per step instead of a chain of foreach
    # ops (torch has it on CPU, CUDA, MPS and XPU; elsewhere torch's default).
    fused = all(p.device.type in ("cpu", "cuda", "mps", "xpu") and p.is_floating_point()
                for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=train.weight_decay,
                                  fused=fused or None)
    name = "constant_with_warmup" if train.lr_schedule == "constant" else train.lr_schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=train.max_steps)
    return optimizer, scheduler


def forward_backward(accelerator, student, teacher: TeacherPrefetch,
                     micro_batches: list[MicroBatch],
                     following: MicroBatch | None = None,
                     soft_targets: bool = True) -> tuple[dict, dict]:
    """Forward and backward over one optimizer step's micro-batches; gradients accumulate
    in the modules. The teacher's outputs come through ``teacher`` (a prefetcher: it starts
    each next micro-batch's, ``following`` being the next step's first, before the
    student's pass on this one; a teacher that trains learns inside that call). Returns
    this process's share of each logged term, and the step's scheduled scalars. With
    ``soft_targets`` false (the loss weights them by 0 throughout) the teacher still runs
    (a teacher that trains learns there) but the student's loss gets no teacher outputs,
    so it computes no soft term it would multiply by 0."""
    # accelerate's backward divides by gradient_accumulation_steps and DDP averages over
    # processes; the loss is already a sum over the step's tokens divided by the step's
    # token count, so undo both to get exactly that gradient.
    loss_scale = accelerator.gradient_accumulation_steps * accelerator.num_processes
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
    scalars: dict[str, float] = {}
    for mb, next_mb in zip(micro_batches, [*micro_batches[1:], following]):
        with accelerator.accumulate(student), accelerator.autocast():
            teacher_out = teacher.get(mb)
            teacher.submit(next_mb)
            out, _ = student(mb.input_ids, mb.labels, teacher_out if soft_targets else None,
                             mb.step, mb.step_tokens, generated=mb.generated)
            accelerator.backward(out.total * loss_scale)
        for name, value in out.terms.items():
            sums[name] = sums[name] + value
        scalars = out.scalars
    return sums, scalars


def _reduce_terms(accelerator, shares: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's logged terms summed over processes, as floats: one tensor, one all-reduce
    and one copy to the host for all of them (a reduce and a ``float()`` per term were one
    collective and one host synchronisation each, every step). float64 where the device
    has it, so that counts and sums stay exact; MPS has no float64."""
    if not shares:
        return {}
    dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
    stacked = torch.stack([v.detach().to(accelerator.device, dtype).reshape(())
                           for v in shares.values()])
    return dict(zip(shares, accelerator.reduce(stacked, "sum").tolist()))


def _use_prefetch(mode: str, teacher: Teacher, device: torch.device) -> bool:
    """Run the teacher one micro-batch ahead where it can (see ``Teacher.runs_ahead``): by
    default on CUDA, or where the teacher mostly waits on I/O (on a CPU a teacher that
    computes would compete with the student for the same cores); the recipe check refuses
    'on' for teachers that cannot."""
    auto = device.type == "cuda" or teacher.waits_on_io
    return teacher.runs_ahead and (mode == "on" or (mode == "auto" and auto))


def _use_fused(mode: str, student_lm) -> bool:
    """Whether the loss takes the student's hidden states and head (a teacher then answers
    with its own where it can, and with logits or top-k otherwise: the fused path takes
    every teacher output)."""
    possible = students.fused_head(student_lm) is not None
    if mode == "on" and not possible:
        raise UserError("loss.fused: 'on' needs a student with a plain linear output head and "
                        "a base model that returns hidden states; use 'auto' or 'off'.")
    return mode == "on" or (mode == "auto" and possible)


def _use_cpu(requested: bool) -> bool:
    """accelerate goes distributed on CPU (gloo) only with cpu=True: under torchrun on a
    machine without GPUs, ask for it, so `torchrun --nproc_per_node N -m distill run ...`
    trains with DDP without any other setting."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return requested or (launched and not torch.cuda.is_available())


def _clip_gradients(accelerator, student, max_norm: float) -> float | None:
    """Clip the student's gradients to ``max_norm`` (0: no clipping) and return their total
    norm before clipping, the figure logged as ``grad_norm``. accelerate's clip_grad_norm_
    unscales fp16 gradients first and knows sharded (FSDP) parameters; with an infinite
    threshold the clip factor is clamped to 1, so the gradients stay as they are. None where
    the backend returns no norm (DeepSpeed clips inside its own step)."""
    norm = accelerator.clip_grad_norm_(student.parameters(),
                                       max_norm if max_norm > 0 else float("inf"))
    return None if norm is None else float(norm)


def run(recipe: Recipe, resume: bool = False, clock: StartupClock | None = None) -> RunResult:
    """Train as ``distill run`` does. The first process holds the output directory's lock
    (every process of a launch shares the directory). ``clock``: the start-up clock the
    caller began (the CLI's times loading the recipe); by default one starts here."""
    clock = clock or StartupClock(process_age_s())  # the time to first step
    output_dir = Path(recipe.output_dir)
    _check_output_dir(output_dir, resume)
    check_sources(recipe)  # missing checkpoints and unreachable hub names, before any work
    try:
        if int(os.environ.get("RANK", "0")) != 0:
            return _train(recipe, resume, clock)
        with OutputDirLock(output_dir):
            return _train(recipe, resume, clock)
    except TeacherUnavailable as exc:  # a served teacher stopped answering, past its retries
        traceback.clear_frames(exc.__traceback__)  # as below: let the models go
        raise TrainingStopped(f"teacher: {exc}. The run stopped; its last complete checkpoint "
                              f"is intact ({last_complete(output_dir)}): run again with "
                              "--resume once the server answers.") from None
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


def _train(recipe: Recipe, resume: bool, clock: StartupClock) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.monotonic()  # metrics rows' elapsed_s count from here (this process)
    train = recipe.train
    output_dir = Path(recipe.output_dir)
    if resume:  # refused before anything is built or written when it cannot be safe
        require_checkpoint(output_dir)
        check_recipe(output_dir, recipe)
    # Schedules count optimizer steps, so the scheduler must step once per optimizer step
    # whatever the number of processes (accelerate's default steps it num_processes times).
    accelerator = Accelerator(gradient_accumulation_steps=train.grad_accum_steps,
                              mixed_precision=train.mixed_precision, cpu=_use_cpu(train.cpu),
                              step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(output_dir)  # under the lock (see run): no write of ours is under way
    set_seed(recipe.seed)

    # ---- build: data, teacher and student, the student's objective and optimizer
    with clock.phase("data") as phase, accelerator.main_process_first():
        # the first process trains and caches the tokenizer and the blocks
        data = prepare_data(recipe.data, load_corpus(recipe.data), recipe.trust_remote_code,
                            verbose=main)
        phase["note"] = "from cache" if data.from_cache else "read and tokenised"
    with clock.phase("models"):
        models = build_models(recipe, data.tokenizer, lambda model, lr:
                              _optimizer_and_schedule(model, lr, train),
                              cache_root(recipe.data), announce=main)
    teacher = models.teacher
    fused = _use_fused(recipe.loss.fused, models.student)
    aux = recipe.loss.router_aux_weight
    objective = losses.build_objective(recipe.loss, on_policy_loss=recipe.on_policy.loss,
                                      max_steps=train.max_steps)
    student = LMWithObjective(models.student, objective, fused,
                              router_aux=max(aux.start, aux.end) > 0,
                              vocab_rows=models.vocab_rows)
    optimizer, scheduler = _optimizer_and_schedule(student, train.lr, train)
    built = built_fingerprint(data.tokenizer, data.train, data.validation,
                              models.student.config, teacher.identity(), data.digests)
    if resume:
        check_built(output_dir, built)

    # ---- prepare: the student on accelerate, then the teacher (placed, cache filled, or
    # its own module and optimizer prepared), then the prefetcher and the data order
    with clock.phase("prepare"):
        student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
        try:  # a cache computes only the blocks this run reads (all steps, all processes)
            teacher.prepare(Placement(
                accelerator, data.train, hidden=fused, train_digest=data.digests["train"],
                student_outputs=lambda ids: student(ids, None, None, 0, 1,
                                                    outputs_only=True)[1],
                blocks_read=lambda: blocks_read(len(data.train), train, recipe.seed,
                                                accelerator.num_processes)))
        except TeacherRefused as exc:
            raise UserError(str(exc)) from None
    soft_targets = unused_teacher_reason(recipe) is None
    prefetch = TeacherPrefetch(teacher, _use_prefetch(recipe.teacher.prefetch, teacher,
                                                      accelerator.device),
                               context=accelerator.autocast, device=accelerator.device)
    if main and prefetch.enabled:
        where = "its own CUDA stream" if accelerator.device.type == "cuda" else "a worker thread"
        print(f"distill: teacher prefetch on: the teacher runs one micro-batch ahead on {where}")
    order = BlockOrder(len(data.train), train.micro_batch_size, recipe.seed,
                       accelerator.process_index, accelerator.num_processes)
    # On-policy rollouts (off: None, and every step is drawn as it always was). They sample
    # from the unwrapped student: the same module, without DDP's hooks and collectives.
    rollouts = Rollouts(recipe.on_policy, recipe.seed, data.tokenizer.eos_token_id,
                        data.tokenizer.pad_token_id, models.vocab_rows, train.max_steps) \
        if recipe.on_policy.active() else None
    student_lm = accelerator.unwrap_model(student).lm
    step_rows = train.micro_batch_size * train.grad_accum_steps * accelerator.num_processes

    start_step, tokens_seen, first_val_loss = 0, 0, None
    if resume:  # a UserError, having changed nothing, when no checkpoint loads
        state = load_latest_checkpoint(accelerator, output_dir)
        start_step, tokens_seen = state["step"], state["tokens"]
        first_val_loss = state.get("first_val_loss")
        order.load_state_dict(state["data_order"])
        if start_step > train.max_steps:
            raise UserError(f"train.max_steps: got {train.max_steps}, but the run resumes from "
                            f"its checkpoint of step {start_step}; use train.max_steps >= "
                            f"{start_step}.")
    # ---- from here on the run writes into output_dir
    log = MetricsLog(output_dir / "metrics.jsonl", enabled=main, started=started)
    log.truncate_after(start_step, train.max_steps)
    if main:
        with writes_to("the run's record (config.yaml, run_fingerprint.json)", output_dir):
            write_fingerprint(output_dir, recipe, built)
            write_atomic(output_dir / "config.yaml", dump_recipe(recipe))
            write_init_report(models.init_report, output_dir)
    if main:
        print_startup_summary(run_summary(recipe, accelerator, models.student, teacher, data,
                                          start_step))
    progress = StepProgress(train.max_steps, start_step, enabled=main)
    evaluate = Validator(accelerator, data.validation, train.eval_batch_size,
                         train.eval_batches, log, teacher, say=progress.write)
    if start_step == 0 and train.eval_at_start:
        with clock.phase("evaluation"):
            first_val_loss = evaluate(student, 0, tokens_seen)

    def refresh_plot() -> None:  # metrics.png, after each evaluation (never fails the run)
        if main:
            write_run_plot(output_dir, f"{output_dir}: losses, weights and learning rate",
                           warn=progress.write)

    # ---- the loop: one optimizer step per iteration
    guard = NonFiniteGuard(train.on_nonfinite, train.max_skipped_steps, output_dir)
    last_time, last_tokens = time.perf_counter(), tokens_seen
    upcoming: DrawnStep | None = None
    startup_s: float | None = None  # logged in the first step's row
    for step in range(start_step, train.max_steps):
        if step == start_step:
            startup_s = round(clock.total_s(), 3)
            progress.write(f"distill: {clock.line()}")
        drawn = upcoming or draw_step(order, data.train, step, train.grad_accum_steps,
                                      accelerator, rollouts, student_lm)
        micro_batches = drawn.micro_batches
        order_state = order.state_dict()  # the data position after this step: checkpointed
        # With prefetch the next step's batches are drawn now, so that the teacher can start
        # on the first of them during this step's last student pass (not for a step that
        # generates: see draws_ahead).
        upcoming = draw_step(order, data.train, step + 1, train.grad_accum_steps, accelerator,
                             rollouts, student_lm) \
            if draws_ahead(prefetch, rollouts, step + 1, train.max_steps, step_rows) else None
        sums, scalars = forward_backward(accelerator, student, prefetch, micro_batches,
                                         upcoming.micro_batches[0] if upcoming else None,
                                         soft_targets)
        # Terms are per-process shares of the step mean: sum them across processes.
        terms = losses.finish_step_terms(
            _reduce_terms(accelerator, {**sums, **teacher.step_terms()}))
        step_tokens = micro_batches[0].step_tokens
        skipped = guard.skip_reason(terms, step_tokens, step)
        if skipped is not None:
            optimizer.zero_grad(set_to_none=True)  # drop this step's gradients
            teacher.discard_step()
            log.write({"step": step + 1, "tokens": tokens_seen, "skipped": skipped})
            progress.write(f"distill: step {step + 1} skipped: {skipped}")
            progress.update()
            continue
        lr = scheduler.get_last_lr()[0]
        grad_norm = _clip_gradients(accelerator, student, train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.optimizer_step(step + 1)
        accelerator.unwrap_model(student).objective.update({**terms, **scalars})
        tokens_seen += step_tokens
        done = step + 1

        now = time.perf_counter()
        tokens_per_s = (tokens_seen - last_tokens) / max(now - last_time, 1e-9)
        last_time, last_tokens = now, tokens_seen
        if done % train.log_every == 0 or done == train.max_steps:
            log.write({"step": done, "tokens": tokens_seen, "lr": lr, **terms, **scalars,
                       **drawn.rollout, "tokens_per_s": tokens_per_s,
                       **({} if grad_norm is None else {"grad_norm": grad_norm}),
                       **({} if startup_s is None else {"startup_s": startup_s})})
            startup_s = None
        progress.update({"loss": f"{terms['loss']:.3f}", "ce": f"{terms['ce']:.3f}",
                         "kd": f"{terms.get('kd', 0.0):.3f}", "tok/s": f"{tokens_per_s:.0f}"})
        # the last step's evaluation is the final one (or none: train.eval_at_end false)
        if train.eval_every and done % train.eval_every == 0 and done != train.max_steps:
            evaluate(student, done, tokens_seen)
            refresh_plot()
        if train.checkpoint_every and done % train.checkpoint_every == 0:
            save_checkpoint(accelerator, output_dir, done,
                            {"tokens": tokens_seen, "data_order": order_state,
                             "first_val_loss": first_val_loss}, train.keep_checkpoints)
    progress.close()
    prefetch.close()

    # ---- outputs: the final evaluation, the plot, the student and any model the teacher
    # trained
    final_val_loss = evaluate(student, train.max_steps, tokens_seen) \
        if train.eval_at_end else None
    refresh_plot()
    if main:
        # without a final evaluation, an earlier evaluation's figures are not the final ones
        evaluated = evaluate.last if train.eval_at_end \
            else {"val_loss": "not evaluated (train.eval_at_end: false)"}
        final = {"steps": train.max_steps, "tokens": tokens_seen, **evaluated}
        save_outputs(accelerator.unwrap_model(student).lm, teacher, data.tokenizer,
                     output_dir, recipe, final)
    accelerator.wait_for_everyone()
    return RunResult(output_dir=output_dir, first_val_loss=first_val_loss,
                     final_val_loss=final_val_loss, steps=train.max_steps, main_process=main)
