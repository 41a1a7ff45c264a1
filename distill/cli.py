"""Command line: ``distill run RECIPE [key=value ...] [--resume]`` and
``distill inspect NAME_OR_PATH [--json]`` (docs/inspect.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from distill.errors import TrainingStopped, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Teacher-student (co)distillation for language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="train a student from a recipe",
        description="Train a student from a YAML recipe; key=value overrides replace recipe "
                    "fields, e.g. train.max_steps=50 output_dir=runs/a seed=3.")
    run.add_argument("recipe", help="path to a YAML recipe (see recipes/)")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="dotted recipe overrides, e.g. train.max_steps=50")
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint in output_dir")
    inspect = commands.add_parser(
        "inspect", help="parameter counts, layer pattern and memory plan of a model",
        description="Total and active parameters, the layer pattern and a memory plan "
                    "(weights, training state, activations, logits, GPUs) of a preset, a "
                    "config file or a checkpoint directory; see docs/inspect.md.")
    inspect.add_argument("model", metavar="NAME_OR_PATH",
                         help="a preset (scout, maverick, behemoth, *-tiny), a YAML/JSON "
                              "config file or a directory holding config.json")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--gpu-memory-gib", type=float, default=80.0,
                         help="memory of one GPU in GiB (default 80)")
    inspect.add_argument("--context", type=int, default=8192,
                         help="tokens per sequence (default 8192)")
    inspect.add_argument("--batch", type=int, default=1,
                         help="sequences per GPU per micro-batch (default 1)")
    inspect.add_argument("--chunk-size", type=int, default=256,
                         help="tokens per chunk of the fused loss (default 256)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from distill.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from distill.train import run

    result = run(recipe, resume=args.resume)
    start = "" if result.first_val_loss is None else f"{result.first_val_loss:.4f} -> "
    print(f"done: {result.steps} steps, student validation loss {start}"
          f"{result.final_val_loss:.4f}; outputs in {result.output_dir}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json
    import os

    from distill.plan import describe, format_report

    report = describe(args.model, gpu_memory_gib=args.gpu_memory_gib, context=args.context,
                      batch=args.batch, chunk_size=args.chunk_size)
    try:
        print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    except BrokenPipeError:  # `distill inspect ... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _inspect(args) if args.command == "inspect" else _run(args)
    except (UserError, TrainingStopped) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("distill: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
