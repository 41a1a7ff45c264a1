"""The loss head against its peers: generalized JSD from hidden states, forward + backward.

Three implementations of the same loss, beta 0.5 (teacher weight in the mixture), T = 1,
mean over the tokens whose label is not -100, gradients with respect to the student's
hidden states and output head:

- TRL 1.16's ``GKDTrainer.generalized_jsd_loss`` on materialised logits (the student's from
  hidden @ head.T with autograd, the teacher's likewise without gradient);
- Liger-Kernel 0.8.5's ``LigerFusedLinearJSDLoss`` (chunked; ``compiled=False``, its CPU
  path; ``weight_hard_loss=0``, ``weight_soft_loss=1`` so it computes the JSD alone);
- ours: ``losses.fused_divergence(..., kind="jsd", beta=0.5)`` at the library's default
  chunk size (``--chunk-size`` to change it).

It first checks that the three agree (loss and both gradients, max abs / rel difference),
then times them interleaved in one process (round by round, so the machine's load falls
on all three alike; glibc's allocator as it comes) and reports the median and min-max of the repeats; then each one's
peak resident memory above its inputs, each in its own process with glibc's mmap
threshold pinned (as ``benchmarks/fused_loss.py`` does), so freed tensors leave the
resident set at once. TRL and Liger are benchmark-only dependencies (the ``bench``
extra: ``pip install -e .[bench]``).

    python benchmarks/loss_head_peers.py                    # the issue's shape, CPU
    python benchmarks/loss_head_peers.py --tokens 1024 --vocab 8192 --repeats 3
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

PEERS = ("trl", "liger", "ours")
BETA = 0.5


def _missing(package: str) -> SystemExit:
    return SystemExit(f"benchmarks/loss_head_peers.py needs {package} (a benchmark-only "
                      f"dependency): pip install -e .[bench]")


def make_inputs(tokens: int, vocab: int, hidden: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(tokens, hidden, generator=generator).requires_grad_()
    student_head = (torch.randn(vocab, hidden, generator=generator) / hidden ** 0.5).requires_grad_()
    teacher_hidden = torch.randn(tokens, hidden, generator=generator)
    teacher_head = torch.randn(vocab, hidden, generator=generator) / hidden ** 0.5
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[: tokens // 10] = -100  # a tenth ignored, as padding or prompt would be
    return student_hidden, student_head, teacher_hidden, teacher_head, labels


def make_step(peer: str, chunk_size: int | None):
    """A function (inputs) -> loss tensor for ``peer``; its backward is the caller's."""
    import torch

    if peer == "trl":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        try:
            from trl.experimental.gkd import GKDTrainer
        except ImportError as error:
            raise _missing("trl==1.16.0") from error

        def trl_step(sh, sw, th, tw, labels):
            student_logits = (sh @ sw.t()).unsqueeze(0)                 # (1, tokens, V)
            with torch.no_grad():
                teacher_logits = (th @ tw.t()).unsqueeze(0)             # (1, tokens, V)
            return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits,
                                                   labels.unsqueeze(0), beta=BETA)
        return trl_step
    if peer == "liger":
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
        except ImportError as error:
            raise _missing("liger-kernel==0.8.5") from error
        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA,
                                        ignore_index=-100, temperature=1.0, compiled=False)

        def liger_step(sh, sw, th, tw, labels):
            return liger(sh, sw, th, tw, labels)
        return liger_step

    import losses

    extra = {} if chunk_size is None else {"chunk_size": chunk_size}

    def our_step(sh, sw, th, tw, labels):
        return losses.fused_divergence(sh, sw, (th, tw), labels, kind="jsd", beta=BETA,
                                       **extra)
    return our_step


def run_once(step, inputs) -> tuple[float, object, object]:
    """One forward + backward; returns (loss, grad_hidden, grad_head) and clears grads."""
    sh, sw = inputs[0], inputs[1]
    loss = step(*inputs)
    loss.backward()
    grads = (sh.grad, sw.grad)
    sh.grad, sw.grad = None, None
    return loss.item(), *grads


def compare_and_time(args) -> None:
    import torch

    inputs = make_inputs(args.tokens, args.vocab, args.hidden)
    steps = {peer: make_step(peer, args.chunk_size) for peer in PEERS}
    # Agreement: every peer against TRL (float64-free; fp32 throughout).
    results = {peer: run_once(steps[peer], inputs) for peer in PEERS}
    ref_loss, ref_gh, ref_gw = results["trl"]
    print("agreement with TRL (max abs diff / max abs diff relative to TRL's max abs value):")
    for peer in ("liger", "ours"):
        loss, gh, gw = results[peer]
        line = [f"loss {abs(loss - ref_loss):.2e}"]
        for name, got, ref in (("grad hidden", gh, ref_gh), ("grad head", gw, ref_gw)):
            diff = (got - ref).abs().max().item()
            line.append(f"{name} {diff:.2e} / {diff / ref.abs().max().item():.2e}")
        print(f"  {peer:<6} " + ", ".join(line))
    del results
    times: dict[str, list[float]] = {peer: [] for peer in PEERS}
    for _ in range(args.repeats):  # interleaved: one of each per round
        for peer in PEERS:
            start = time.perf_counter()
            run_once(steps[peer], inputs)
            times[peer].append(time.perf_counter() - start)
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))


def peak_memory(args) -> None:
    """In a process of its own: one forward + backward of ``args.child``."""
    inputs = make_inputs(args.tokens, args.vocab, args.hidden)
    step = make_step(args.child, args.chunk_size)
    before = rss_kib()
    loss, _, _ = run_once(step, inputs)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"peer": args.child, "loss": loss, "peak_mib": peak}))


def _child(args, *extra: str, pin_mmap: bool) -> str:
    """Run this script with ``extra`` flags; ``pin_mmap`` for the memory children only:
    timing runs with the allocator as a user's run has it."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if k not in ("child", "timing") and v is not None]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"} if pin_mmap else None
    return subprocess.run([sys.executable, __file__, *flags, *extra], check=True,
                          capture_output=True, text=True, env=env).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="ours: tokens per chunk (default: the library's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory(args)
        return
    if args.timing:
        compare_and_time(args)
        return
    print(f"generalized JSD (beta {BETA}), {args.tokens} tokens, vocabulary {args.vocab}, "
          f"hidden {args.hidden}, fp32, forward + backward, CPU; ours at chunk "
          f"{args.chunk_size or 'default'}")
    timing_out = _child(args, "--timing", pin_mmap=False)
    *agreement, last = timing_out.strip().splitlines()
    print("\n".join(agreement))
    timing = json.loads(last)
    peaks = {peer: json.loads(_child(args, f"--child={peer}", pin_mmap=True).strip().splitlines()[-1])
             for peer in PEERS}
    print(f"{args.repeats} interleaved repeats, {timing['threads']} torch threads")
    print(f"{'peer':<6} {'loss':>10} {'peak MiB':>10} {'median s':>9} {'min-max s':>13}")
    medians = {}
    for peer in PEERS:
        ts = timing["times"][peer]
        medians[peer] = statistics.median(ts)
        print(f"{peer:<6} {peaks[peer]['loss']:>10.6f} {peaks[peer]['peak_mib']:>10.1f} "
              f"{medians[peer]:>9.3f} {min(ts):>6.3f}-{max(ts):<6.3f}")
    for peer, goal_time, goal_mem in (("trl", 0.5, 0.10), ("liger", 0.75, None)):
        mem = peaks["ours"]["peak_mib"] / peaks[peer]["peak_mib"]
        mem_goal = f" (goal <= {goal_mem:.2f})" if goal_mem else ""
        # each round's own ratio: its three runs shared the machine's load of the moment
        rounds = [o / t for o, t in zip(timing["times"]["ours"], timing["times"][peer])]
        print(f"ours / {peer}: time {medians['ours'] / medians[peer]:.3f} "
              f"(goal <= {goal_time:.2f}; per round median {statistics.median(rounds):.3f}, "
              f"{min(rounds):.3f}-{max(rounds):.3f}), peak memory {mem:.3f}{mem_goal}")


if __name__ == "__main__":
    main()
