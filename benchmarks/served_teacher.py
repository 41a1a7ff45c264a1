"""What a served teacher costs against the same teacher in process.

Trains the same student from the same small teacher four ways, in one run of this script:
    hf                 the teacher in the training process (`teacher.kind: hf`), no prefetch
    served             the teacher behind `distill serve-teacher` on 127.0.0.1, one request
                       per micro-batch answered before the student's pass (prefetch off)
    served+ahead       the same with the next micro-batch's request in flight while the
                       student trains (`teacher.prefetch: on`, the default for `served`)
and prints steps per second of each (the median of its logged steps after the first, over
two rounds taken in turn, hf / served / served+ahead / hf / ...), their ratios, and the bytes
per token that cross the wire (request and response bodies of one micro-batch).

    python benchmarks/served_teacher.py [--steps 24] [--top-k 20] [--micro-batch 8] [--pin]

On one machine the server and the trainer share the cores, so `served` pays the teacher's
forward plus HTTP and JSON on top of the in-process forward's cost, and running ahead can
only hide what does not compete for the CPU (the wait on the socket). The figures are for
that machine; a real deployment puts the server on GPUs of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


def _recipe(out: Path, cache: Path, args, **extra) -> object:
    from distill.recipe import load_recipe

    values = {"output_dir": str(out), "data.cache_dir": str(cache), "data.max_chars": 400_000,
              "data.block_size": args.block_size, "train.micro_batch_size": args.micro_batch,
              "train.eval_every": 0, "train.eval_batches": 1, "train.checkpoint_every": 0,
              "train.warmup_steps": 0, **extra}
    return load_recipe(QUICKSTART, [f"{k}={v}" for k, v in values.items()])


def _steps_per_s(out: Path, tokens_per_step: int) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")][1:]  # not the first
    return statistics.median(speeds) / tokens_per_step


def _wire_bytes_per_token(url: str, blocks, top_k: int) -> float:
    import httpx

    prompts = [block.tolist() for block in blocks]
    body = json.dumps({"model": "teacher", "prompt": prompts, "max_tokens": 1,
                       "prompt_logprobs": top_k}).encode()
    response = httpx.post(f"{url}/v1/completions", content=body, timeout=120,
                          headers={"content-type": "application/json"})
    response.raise_for_status()
    return (len(body) + len(response.content)) / sum(map(len, prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 1 and trainer on CPU 0, one thread each: the "
                             "teacher on hardware of its own, as a deployment has it")
    args = parser.parse_args()
    if args.pin:
        import torch

        os.sched_setaffinity(0, {0})
        torch.set_num_threads(1)

    from distill.corpus import load_corpus
    from distill.data import prepare_data
    from distill.serve import free_port, launch, stop_server
    from distill.train import run

    work = Path(tempfile.mkdtemp(prefix="served-bench-"))
    cache = work / "cache"
    # The teacher: the quickstart's student architecture, pretrained a few steps on hard labels.
    run(_recipe(work / "teacher", cache, args, **{"teacher.kind": "none",
                                                  "train.max_steps": 20}))
    teacher = str(work / "teacher" / "student")
    port = free_port()
    pinned = {"OMP_NUM_THREADS": "1"} if args.pin else {}
    server = launch(teacher, port, "--model", "teacher", "--log-every", "3600", env=pinned)
    if args.pin:
        os.sched_setaffinity(server.pid, {1})
    url = f"http://127.0.0.1:{port}"
    tokens_per_step = args.micro_batch * args.block_size
    common = {"data.tokenizer": teacher, "train.max_steps": args.steps}
    modes = {
        "hf": {"teacher.kind": "hf", "teacher.hf.name_or_path": teacher,
               "teacher.prefetch": "off"},
        "served": {"teacher.kind": "served", "teacher.served.urls": f"[{url}]",
                   "teacher.served.model": "teacher", "teacher.served.top_k": args.top_k,
                   "teacher.prefetch": "off"},
        "served+ahead": {"teacher.kind": "served", "teacher.served.urls": f"[{url}]",
                         "teacher.served.model": "teacher",
                         "teacher.served.top_k": args.top_k, "teacher.prefetch": "on"},
    }
    speeds: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for round_ in range(2):
            for mode, settings in modes.items():
                out = work / f"{mode}-{round_}"
                run(_recipe(out, cache, args, **common, **settings))
                speeds[mode].append(_steps_per_s(out, tokens_per_step))
        recipe = _recipe(work / "probe", cache, args, **common, **modes["served"])
        data = prepare_data(recipe.data, load_corpus(recipe.data))
        wire = _wire_bytes_per_token(url, data.train[: args.micro_batch], args.top_k)
    finally:
        stop_server(server)

    print(f"\nteacher: the quickstart student's architecture ({teacher}); student: the "
          f"quickstart's; {args.micro_batch} x {args.block_size} tokens per step, top_k "
          f"{args.top_k}, {args.steps} steps, {os.cpu_count()} CPUs, server on 127.0.0.1"
          + (" (pinned: server on CPU 1, trainer on CPU 0)" if args.pin else ""))
    print(f"{'mode':14s} {'steps/s':>8s}  (two rounds)")
    median = {mode: statistics.median(values) for mode, values in speeds.items()}
    for mode, values in speeds.items():
        print(f"{mode:14s} {median[mode]:8.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"served / hf:               {median['served'] / median['hf']:.2f}x steps/s")
    print(f"served+ahead / hf:         {median['served+ahead'] / median['hf']:.2f}x steps/s")
    print(f"served+ahead / served:     {median['served+ahead'] / median['served']:.2f}x steps/s")
    print(f"on the wire: {wire:.0f} bytes per token (request + response JSON, top_k "
          f"{args.top_k}); a float32 logit row would be {4 * len(data.tokenizer)} bytes")


if __name__ == "__main__":
    main()
