"""How close the distillation step is to its floor, for the same models in one run.

    (a) floor:        a frozen teacher's inference forward + the student's hard-label
                      training step (transformers' own loss), AdamW step included
    (b) distillation: the toolkit's step: the same teacher forward (hidden states + head),
                      the student's LMWithObjective (fused CE + forward KL), AdamW step
    (c) overlap:      (b) with the teacher's forward for the next micro-batch running
                      ahead while the student trains on this one, through the loop's own
                      ``distill.prefetch.TeacherPrefetch`` (a worker thread; on CUDA its own stream)

Goal: (b) <= 1.15 x (a). Times are medians of --steps steps after --warmup, (a) and (b)
taking turns step by step in one process, (c) on CPU with its own (a) in another (on CUDA
all three in one); each path's peak memory is measured in a process of its own (on CPU
ru_maxrss above the memory once models and inputs exist, with glibc's mmap threshold
pinned; on CUDA max_memory_allocated).

    python benchmarks/step_efficiency.py                  # tiny presets, about a minute
    python benchmarks/step_efficiency.py --device cuda --dtype bfloat16 \
        --vocab 32768 --batch 8 --seq 1024                # peak from max_memory_allocated
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rss_kib  # noqa: E402


def _setup(args):
    import torch

    import losses
    import students
    from losses.outputs import HiddenStates, Logits
    from teachers import LMWithObjective

    torch.manual_seed(0)
    device, vocab = torch.device(args.device), args.vocab
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    teacher = students.build_model(students.model_config(args.teacher, {}, vocab))
    teacher = teacher.to(device, dtype).eval().requires_grad_(False)
    student_lm = students.build_model(students.model_config(args.student, {}, vocab)).to(device)
    objective = losses.Objective("forward_kl", losses.Schedule("constant", 0.5, 0.5),
                                 losses.Schedule("constant", 1.0, 1.0), chunk_size=args.chunk_size)
    student = LMWithObjective(student_lm, objective, fused=True, router_aux=False,
                              vocab_rows=vocab)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batches = [torch.randint(0, vocab, (args.batch, args.seq + 1), device=device)
               for _ in range(4)]
    tokens = args.batch * args.seq

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bfloat16")

    def teacher_outputs(path, ids):
        with torch.no_grad():
            if path == "floor":
                return Logits(teacher(input_ids=ids).logits)
            states = teacher.model(input_ids=ids).last_hidden_state
            return HiddenStates(states, teacher.lm_head.weight)

    class FrozenTeacher:  # what the toolkit's TeacherPrefetch calls
        def outputs(self, batch):
            return teacher_outputs("distill", batch.input_ids)

    def train_step(path, ids, labels, teacher_out):
        with autocast():
            if path == "floor":  # the student alone on the hard labels
                logits = student_lm(input_ids=ids).logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(),
                                                         labels.reshape(-1))
            else:
                loss = student(ids, labels, teacher_out, 0, tokens)[0].total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batches, tokens, teacher_outputs, train_step, FrozenTeacher(), autocast


def measure(paths: list[str], args) -> dict:
    """Median step time of each path, the paths taking turns step by step in this one
    process (so machine noise hits them alike); peak memory when only one path runs."""
    import torch

    from distill.prefetch import TeacherPrefetch
    from teachers import MicroBatch

    batches, tokens, teacher_outputs, train_step, frozen, autocast = _setup(args)
    cuda = args.device == "cuda"
    prefetch = TeacherPrefetch(frozen, enabled="overlap" in paths,
                               context=autocast, device=torch.device(args.device))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    before = torch.cuda.memory_allocated() if cuda else rss_kib() * 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {path: [] for path in paths}
    micro_batches = [MicroBatch(block[:, :-1], block[:, 1:], torch.arange(len(block)))
                     for block in batches]  # what get() matches
    for i in range(args.warmup + args.steps):
        for path in paths:
            mb = micro_batches[i % len(batches)]
            labels = batches[i % len(batches)][:, 1:]
            start = time.perf_counter()
            if path != "overlap":
                with autocast():
                    teacher_out = teacher_outputs(path, mb.input_ids)
            else:  # this step's teacher output was computed during the previous step
                teacher_out = prefetch.get(mb)
                prefetch.submit(micro_batches[(i + 1) % len(batches)])
            train_step(path, mb.input_ids, labels, teacher_out)
            if path == "overlap":
                prefetch.wait()  # the prefetch ends within this step: no spill into others
            sync()
            if i >= args.warmup:
                times[path].append(time.perf_counter() - start)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2 ** 20
    prefetch.close()
    return {path: {"path": path, "seconds": statistics.median(times[path]), "peak_mib": peak,
                   "tokens_per_s": tokens / statistics.median(times[path])} for path in paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="behemoth-tiny")
    parser.add_argument("--student", default="scout-tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: the teacher in bf16, the student under bf16 autocast")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child.split(","), args)))
        return

    def child(paths: str, env: dict) -> dict:
        argv = [sys.executable, __file__, "--child", paths] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    # Time on CPU: floor and distill in turn in one process; overlap against its own floor in a
    # second process (once a second thread has run torch ops, both threads' OpenMP pools
    # compete and every path in that process slows down). Memory: each path alone in its
    # own process, with glibc's mmap threshold pinned so that freed tensors leave the
    # resident set at once.
    # On CUDA the host threads do not compete for compute, so all three take turns in one.
    if args.device == "cuda":
        results = child("floor,distill,overlap", dict(os.environ))
        results["overlap"]["floor_seconds"] = results["floor"]["seconds"]
    else:
        results = child("floor,distill", dict(os.environ))
        with_thread = child("floor,overlap", dict(os.environ))
        results["overlap"] = with_thread["overlap"]
        results["overlap"]["floor_seconds"] = with_thread["floor"]["seconds"]
    for path in results:
        results[path]["peak_mib"] = child(
            path, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})[path]["peak_mib"]
    print(f"teacher {args.teacher} (frozen), student {args.student}, vocab {args.vocab}, "
          f"batch {args.batch} x {args.seq}, median of {args.steps} steps, "
          f"{args.device} ({os.cpu_count()} CPUs), {args.dtype}")
    print(f"{'path':<9} {'ms/step':>9} {'tokens/s':>9} {'peak MiB':>9}")
    for row in results.values():
        print(f"{row['path']:<9} {1000 * row['seconds']:>9.1f} {row['tokens_per_s']:>9.0f} "
              f"{row['peak_mib']:>9.1f}")
    floor = results["floor"]
    print(f"distill / floor: time {results['distill']['seconds'] / floor['seconds']:.3f} "
          f"(goal <= 1.150), peak memory {results['distill']['peak_mib'] / floor['peak_mib']:.3f}")
    overlap = results["overlap"]
    # What a user gets with teacher.prefetch on against off: step time, absolute. On CPU the
    # overlap runs in a process of its own, where the worker thread's OpenMP pool slows
    # every path, its floor included (printed, for that reason).
    ratio = overlap["seconds"] / results["distill"]["seconds"]
    print(f"overlap / distill: time {ratio:.3f} ({'faster' if ratio < 1 else 'slower'} with "
          f"prefetch), peak memory {overlap['peak_mib'] / results['distill']['peak_mib']:.3f}; "
          f"floor in the overlap's process {1000 * overlap['floor_seconds']:.1f} ms")

if __name__ == "__main__":
    main()
