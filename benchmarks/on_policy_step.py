"""What an on-policy step costs against an off-policy one, for the same models in one run.

    (a) off-policy: the loop's own step with on_policy.fraction 0: draw_step (data rows),
                    a frozen teacher's forward, the student's LMWithObjective (fused CE +
                    forward KL) forward and backward, AdamW
    (b) on-policy:  the same step with fraction 1: draw_step first samples every row's
                    continuation from the student (distill/rollout.py: generate with a KV
                    cache, eval mode, no gradients), then the same teacher and student pass

Both run through ``distill.steps.draw_step`` and ``forward_backward``, taking turns step
by step; figures are medians of --steps steps after --warmup. The student starts from random
weights, so it rarely writes an end-of-text token: every row runs to --max-new-tokens, the
most generation can cost at these settings.

    python benchmarks/on_policy_step.py            # tiny presets on a CPU, about a minute
    python benchmarks/on_policy_step.py --device cuda --vocab 32768 --seq 1024 \
        --prompt-tokens 256 --max-new-tokens 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _setup(args):
    import torch
    from accelerate import Accelerator

    import losses
    import students
    from distill.data import BlockOrder
    from distill.rollout import Rollouts
    from teachers import LMWithObjective, Teacher, lm_outputs

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=args.device == "cpu")
    vocab = args.vocab
    teacher_lm = students.build_model(students.model_config(args.teacher, {}, vocab))
    teacher_lm = teacher_lm.to(accelerator.device).eval().requires_grad_(False)

    class Frozen(Teacher):  # what `kind: hf` does, without a checkpoint on disk
        def describe(self) -> str:
            return "frozen benchmark teacher"

        def outputs(self, batch):
            with torch.no_grad():
                return lm_outputs(teacher_lm, batch.input_ids, True, vocab)[0]

    objective = losses.Objective("forward_kl", losses.Schedule("constant", 0.5, 0.5),
                                 losses.Schedule("constant", 1.0, 1.0))
    student = LMWithObjective(students.build_model(students.model_config(args.student, {}, vocab)),
                              objective, fused=True, router_aux=False, vocab_rows=vocab)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    student, optimizer = accelerator.prepare(student, optimizer)
    blocks = torch.randint(0, vocab - 2, (args.batch * (args.warmup + args.steps) * 2 + 64,
                                          args.seq + 1))
    order = BlockOrder(len(blocks), args.batch, seed=0)
    section = SimpleNamespace(
        fraction=SimpleNamespace(kind="constant", start=1.0, end=1.0, warmup_steps=0,
                                 total_steps=1, warmup_start=None, rate=5.0, stages=4,
                                 decay_fraction=0.2),
        prompt_tokens=args.prompt_tokens, max_new_tokens=args.max_new_tokens,
        temperature=1.0, top_p=1.0)
    rollouts = Rollouts(section, seed=0, eos_id=vocab - 1, pad_id=vocab - 2, vocab_rows=vocab)
    return accelerator, student, optimizer, Frozen(), blocks, order, rollouts


def _step(accelerator, student, optimizer, teacher, blocks, order, rollouts, step):
    """One optimizer step of the loop; returns (seconds, generation seconds, sampled tokens)."""
    import torch

    from distill.prefetch import TeacherPrefetch
    from distill.steps import draw_step
    from distill.train import forward_backward

    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    drawn = draw_step(order, blocks, step, 1, accelerator, rollouts,
                      accelerator.unwrap_model(student).lm)
    forward_backward(accelerator, student, TeacherPrefetch(teacher, enabled=False),
                     drawn.micro_batches)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - start
    tokens = drawn.rollout.get("generated_tokens", 0)
    rate = drawn.rollout.get("generation_tokens_per_s", 0.0)
    return seconds, (tokens / rate if rate else 0.0), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default="behemoth-tiny")
    parser.add_argument("--student", default="scout-tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.prompt_tokens + args.max_new_tokens > args.seq + 1:
        parser.error("--prompt-tokens + --max-new-tokens must be at most --seq + 1")

    accelerator, student, optimizer, teacher, blocks, order, rollouts = _setup(args)
    off, on, generation, sampled = [], [], [], []
    for i in range(args.warmup + args.steps):
        a = _step(accelerator, student, optimizer, teacher, blocks, order, None, i)
        b = _step(accelerator, student, optimizer, teacher, blocks, order, rollouts, i)
        if i >= args.warmup:
            off.append(a[0])
            on.append(b[0])
            generation.append(b[1])
            sampled.append(b[2])
    t_off, t_on, t_gen = (statistics.median(x) for x in (off, on, generation))
    tokens = statistics.median(sampled)
    print(f"settings: {args.student} student, {args.teacher} teacher, vocab {args.vocab}, "
          f"{args.batch} x {args.seq} tokens per step, prompt {args.prompt_tokens}, "
          f"up to {args.max_new_tokens} new tokens, {args.device}, "
          f"{__import__('torch').get_num_threads()} threads; medians of {args.steps} steps")
    print(f"(a) off-policy step (fraction 0): {t_off * 1000:8.1f} ms")
    print(f"(b) on-policy step  (fraction 1): {t_on * 1000:8.1f} ms")
    print(f"    of which generation:          {t_gen * 1000:8.1f} ms "
          f"({tokens:.0f} sampled tokens, {tokens / t_gen:.0f} tokens/s)")
    print(f"ratio (b) / (a):                  {t_on / t_off:8.2f} x")
    print(f"generation's share of (b):        {t_gen / t_on:8.1%}")


if __name__ == "__main__":
    main()
