"""Command line: ``distill run RECIPE [key=value ...] [--resume]``."""

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (UserError, TrainingStopped) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("distill: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
