"""Peak memory and time of the fused (chunked) divergence against the plain path.

The plain path materialises student and teacher logits (tokens, vocab) from the same
hidden states and calls ``losses.divergence``; the fused path calls
``losses.fused_divergence`` with the hidden states, output heads and a chunk size. Each
path runs in its own process, so its peak resident memory (ru_maxrss) is its own; the
figure is the peak above the process's memory once its inputs exist. Forward + backward.
Both children run with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_), so that
freed tensors leave the resident set at once and the peak reflects live tensors rather
than the allocator's dynamic threshold.

    python benchmarks/fused_loss.py                     # the issue's sizes, default chunk (256)
    python benchmarks/fused_loss.py --tokens 1024 --vocab 8192
    python benchmarks/fused_loss.py --device cuda      # peak from torch.cuda.max_memory_allocated
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


def _library_chunk_size() -> int:
    import inspect

    import losses

    return inspect.signature(losses.fused_divergence).parameters["chunk_size"].default



def measure(path: str, tokens: int, vocab: int, hidden: int, chunk_size: int, kind: str,
            repeats: int, device: str = "cpu") -> dict:
    import torch

    import losses

    torch.manual_seed(0)
    cuda = device == "cuda"
    student_hidden = torch.randn(tokens, hidden, device=device, requires_grad=True)
    student_head = (torch.randn(vocab, hidden, device=device) / hidden ** 0.5).requires_grad_()
    teacher_hidden = torch.randn(tokens, hidden, device=device)
    teacher_head = torch.randn(vocab, hidden, device=device) / hidden ** 0.5
    labels = torch.randint(0, vocab, (tokens,), device=device)
    labels[: tokens // 10] = -100

    def step() -> float:
        if path == "plain":
            student_logits = student_hidden @ student_head.t()        # (tokens, vocab)
            with torch.no_grad():
                teacher_logits = teacher_hidden @ teacher_head.t()    # (tokens, vocab)
            loss = losses.divergence(student_logits, teacher_logits, labels, kind)
        else:
            loss = losses.fused_divergence(student_hidden, student_head,
                                           (teacher_hidden, teacher_head), labels, kind,
                                           chunk_size=chunk_size)
        loss.backward()
        student_hidden.grad, student_head.grad = None, None
        return loss.item()

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before = rss_kib()
    start = time.perf_counter()
    value = step()
    first = time.perf_counter() - start
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        step()  # .item() inside synchronises the device
        times.append(time.perf_counter() - start)
    return {"path": path, "loss": value, "peak_mib": peak_mib,
            "seconds": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=512)
    # the library's default (loss.chunk_size), so the printed figures are the defaults'
    parser.add_argument("--chunk-size", type=int, default=_library_chunk_size())
    parser.add_argument("--kind", default="forward_kl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", choices=["plain", "fused"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens, args.vocab, args.hidden,
                                 args.chunk_size, args.kind, args.repeats, args.device)))
        return
    results = {}
    for path in ("plain", "fused"):
        out = subprocess.run([sys.executable, __file__, "--child", path,
                              *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                if k != "child"]],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}).stdout
        results[path] = json.loads(out.strip().splitlines()[-1])
    plain, fused = results["plain"], results["fused"]
    print(f"{args.kind}, {args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, "
          f"chunk {args.chunk_size}, forward + backward, median of {args.repeats}, {args.device}")
    print(f"{'path':<6} {'loss':>10} {'peak MiB':>10} {'seconds':>9}")
    for row in (plain, fused):
        print(f"{row['path']:<6} {row['loss']:>10.5f} {row['peak_mib']:>10.1f} {row['seconds']:>9.3f}")
    print(f"fused / plain: peak memory {fused['peak_mib'] / plain['peak_mib']:.3f} "
          f"(goal <= 0.100), time {fused['seconds'] / plain['seconds']:.3f} (goal <= 1.000)")


if __name__ == "__main__":
    main()
