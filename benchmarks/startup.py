"""Time to first step of ``distill run``, with a cold and a warm cache.

Each repeat runs the recipe twice, in fresh processes, as a user would: first with an empty
``DISTILL_CACHE`` (cold: the corpus is read, the tokenizer trained and the blocks tokenised
and cached), then with the same cache (warm: tokenizer and blocks read from it). Evaluation
is off (``train.eval_every=0 train.eval_at_start=false train.eval_at_end=false``) and so are
checkpoints, and one step runs, so the process's wall time is start-up, one step and saving
the outputs. The time to first step is the run's own figure (``startup_s`` in its first
metrics row: from the process's start to its first optimizer step beginning), and its phases
come from the line the run prints (``distill: first step after ...``). Cold and warm runs
alternate, so drift in the machine's load hits both alike; medians and min-max over the
repeats are printed, and the warm/cold ratio of the medians.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 5 --recipe recipes/quickstart.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NO_EVALUATION = ("train.eval_every=0", "train.eval_at_start=false", "train.eval_at_end=false",
                 "train.checkpoint_every=0")
_PHASE = re.compile(r"(\w+) ([\d.]+) s")


def run_once(recipe: str, cache: Path, output_dir: Path, extra: list[str]) -> dict:
    """One ``distill run`` in a fresh process: its wall time, its time to first step and
    the phases of its start-up line."""
    env = {**os.environ, "DISTILL_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "distill", "run", recipe, "train.max_steps=1",
               *NO_EVALUATION, f"output_dir={output_dir}", *extra]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"distill run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    line = next(text for text in (done.stdout + done.stderr).splitlines()
                if text.startswith("distill: first step after"))
    phases = {name: float(seconds) for name, seconds in _PHASE.findall(line.split("(", 1)[1])}
    return {"wall_s": wall, "startup_s": rows[0]["startup_s"], "phases": phases, "line": line}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="cold + warm pairs")
    parser.add_argument("overrides", nargs="*", help="further key=value overrides")
    args = parser.parse_args(argv)
    import torch  # only for the version: the runs import it in their own processes

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start; {args.recipe}, 1 step, evaluation and "
          f"checkpoints off, {args.repeats} cold/warm pairs", flush=True)
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="distill-startup-") as scratch:
        for repeat in range(args.repeats):
            cache = Path(scratch) / f"cache-{repeat}"  # empty: the cold run fills it
            for kind in ("cold", "warm"):
                out = Path(scratch) / f"run-{repeat}-{kind}"
                result = run_once(args.recipe, cache, out, args.overrides)
                results[kind].append(result)
                print(f"run {2 * repeat + (kind == 'warm') + 1}/{2 * args.repeats} ({kind}): "
                      f"process {result['wall_s']:.2f} s; {result['line'][9:]}", flush=True)
    # The launch (interpreter, imports: the same work cold or warm) varies most with the
    # machine's load, so the time from run() to the first step and the data phase, which
    # the cache changes, are given on their own as well.
    figures = {
        "time to first step (process start -> first step)": lambda r: r["startup_s"],
        "  of it after the launch (interpreter, imports): recipe, data, models, ...":
            lambda r: r["startup_s"] - r["phases"].get("launch", 0.0),
        "  of it data (tokenizer and blocks)": lambda r: r["phases"].get("data", 0.0),
        "whole process (1 step, saving the outputs)": lambda r: r["wall_s"]}
    for title, figure in figures.items():
        values = {kind: [figure(r) for r in results[kind]] for kind in results}
        cold, warm = (statistics.median(values[kind]) for kind in ("cold", "warm"))
        print(f"{title}:\n    cold {spread(values['cold'])}\n    warm {spread(values['warm'])}"
              f"\n    warm / cold {warm / cold:.2f}x ({cold - warm:.2f} s saved)")


if __name__ == "__main__":
    main()
