"""Time of transformers' Llama4TextMoe forward against ``students.moe.efficient_moe_forward``.

Two measurements, each in this one process, each the median of several repeats after
warm-up, baseline and efficient runs interleaved so that drift in the machine's speed
hits both alike:

1. one MoE layer (16 experts, top-1 by default), forward + backward with respect to the
   input and all weights; goal: speed-up >= 3.0x;
2. one training step (forward + backward + AdamW step) of a tiny Scout-style student,
   a ``Llama4ForCausalLM`` with MoE in every layer (the ``scout-tiny`` preset, widened),
   with transformers' forward and after ``enable_efficient_moe``.

    python benchmarks/moe_forward.py
    python benchmarks/moe_forward.py --tokens 1024 --repeats 3 --skip-model
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import Llama4ForCausalLM, Llama4TextConfig
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

from students.moe import (
    EfficientLlama4TextMoe,
    efficient_moe_forward,
    enable_efficient_moe,
)
from students.presets import PRESETS

GOAL = 3.0


def repeat_times(steps: dict[str, Callable[[], None]], warmup: int,
                 repeats: int) -> dict[str, list[float]]:
    """Wall time in seconds of each step in every repeat; steps alternate within every
    repeat (so repeat i of each is measured under the same load)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def spread_text(times: dict[str, list[float]]) -> tuple[dict[str, float], float, str]:
    """Medians, the median speed-up (transformers / efficient) and its text with the range
    of the per-repeat speed-ups (repeat i of each, measured side by side)."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = [a / b for a, b in zip(times["transformers"], times["efficient"])]
    ratio = medians["transformers"] / medians["efficient"]
    return medians, ratio, (f"{ratio:.2f}x (per-repeat range {min(ratios):.2f}-"
                            f"{max(ratios):.2f}x over {len(ratios)} repeats)")


def bench_layer(args: argparse.Namespace) -> tuple[float, float]:
    torch.manual_seed(0)
    config = Llama4TextConfig(hidden_size=args.hidden, intermediate_size=args.expert_dim,
                              num_local_experts=args.experts, num_experts_per_tok=args.top_k)
    moe = Llama4TextMoe(config)
    with torch.no_grad():  # transformers initialises expert weights only in post_init
        for param in moe.parameters():
            param.normal_(0.0, 0.02)
    x = torch.randn(args.tokens, args.hidden, requires_grad=True)  # (tokens, hidden)
    grad_out = torch.randn(args.tokens, args.hidden)

    def step(forward) -> Callable[[], None]:
        def run() -> None:
            moe.zero_grad(set_to_none=True)
            x.grad = None
            out, _ = forward(moe, x)
            out.backward(grad_out)
        return run

    with torch.no_grad():
        diff = (Llama4TextMoe.forward(moe, x)[0] - efficient_moe_forward(moe, x)[0]).abs().max()
    times, ratio, ratio_text = spread_text(repeat_times(
        {"transformers": step(Llama4TextMoe.forward), "efficient": step(efficient_moe_forward)},
        args.warmup, args.repeats))
    print(f"MoE layer forward+backward: {args.tokens} tokens, hidden {args.hidden}, expert "
          f"intermediate {args.expert_dim}, {args.experts} experts, top-{args.top_k}, float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} after "
          f"{args.warmup} warm-up")
    print(f"  transformers Llama4TextMoe.forward: {times['transformers'] * 1e3:9.1f} ms")
    print(f"  efficient_moe_forward:              {times['efficient'] * 1e3:9.1f} ms")
    print(f"  speed-up: {ratio_text} (goal >= {GOAL:.1f}x: "
          f"{'met' if ratio >= GOAL else 'NOT met'}); max |output difference| {diff:.2e}")
    return times["transformers"], times["efficient"]


def bench_model(args: argparse.Namespace) -> tuple[float, float]:
    overrides = {"hidden_size": args.model_hidden, "num_hidden_layers": args.model_layers,
                 "num_attention_heads": 4, "num_key_value_heads": 2,
                 "head_dim": args.model_hidden // 4, "intermediate_size": args.model_expert_dim,
                 "intermediate_size_mlp": 2 * args.model_expert_dim,
                 "num_local_experts": args.experts, "num_experts_per_tok": args.top_k,
                 "interleave_moe_layer_step": 1, "vocab_size": args.vocab,
                 "bos_token_id": None, "eos_token_id": 0, "pad_token_id": None}
    torch.manual_seed(0)
    # Built with transformers directly: students.build_model may already patch the MoE.
    baseline = Llama4ForCausalLM(Llama4TextConfig(**{**PRESETS["scout-tiny"], **overrides})).train()
    assert not any(isinstance(m, EfficientLlama4TextMoe) for m in baseline.modules())
    efficient = copy.deepcopy(baseline)
    patched = enable_efficient_moe(efficient)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step(model) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(input_ids=input_ids, labels=input_ids).loss.backward()
            optimizer.step()
        return run

    times, _, ratio_text = spread_text(repeat_times(
        {"transformers": step(baseline), "efficient": step(efficient)},
        args.warmup, args.repeats))
    params = sum(p.numel() for p in baseline.parameters())
    print(f"Training step (forward+backward+AdamW) of a Scout-style Llama4ForCausalLM: "
          f"{args.model_layers} layers all MoE ({patched} patched), hidden {args.model_hidden}, "
          f"expert intermediate {args.model_expert_dim}, {args.experts} experts, top-{args.top_k}, "
          f"vocab {args.vocab}, batch {args.batch} x {args.seq} tokens, "
          f"{params / 1e6:.1f}M parameters")
    print(f"  transformers MoE forward: {times['transformers'] * 1e3:9.1f} ms")
    print(f"  enable_efficient_moe:     {times['efficient'] * 1e3:9.1f} ms")
    print(f"  speed-up: {ratio_text}")
    return times["transformers"], times["efficient"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens through the layer")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--expert-dim", type=int, default=1024, help="expert intermediate size")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--model-hidden", type=int, default=256)
    parser.add_argument("--model-expert-dim", type=int, default=512)
    parser.add_argument("--model-layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-model", action="store_true", help="only the single layer")
    args = parser.parse_args(argv)
    # Other processes on the machine distort both timings; the load average shows them.
    print(f"torch {torch.__version__}, grouped_mm available: "
          f"{hasattr(torch.nn.functional, 'grouped_mm')}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    bench_layer(args)
    if not args.skip_model:
        bench_model(args)


if __name__ == "__main__":
    main()
