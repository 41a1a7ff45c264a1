"""Command line: ``distill run RECIPE [key=value ...] [--resume]`` and
``distill inspect NAME_OR_PATH [--json]`` (docs/inspect.md)."""

from __future__ import annotations

import argparse
import signal
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
    compare = commands.add_parser(
        "compare", help="run a recipe under several loss variants and seeds and compare them",
        description="Run the recipe's compare.variants under each of compare.seeds with the "
                    "same data order, step budget and validation positions; key=value "
                    "overrides (before or after the flags) apply to every variant. Run again "
                    "after an interruption: finished runs are kept while their recipe is "
                    "unchanged. See docs/compare.md.")
    compare.add_argument("recipe")
    compare.add_argument("overrides", nargs="*", metavar="key=value")
    compare.add_argument("--jobs", type=int, default=1,
                         help="runs in parallel processes (default 1)")
    compare.add_argument("--only", action="append", metavar="NAME[,NAME]",
                         help="run (and report) only these variants; repeatable")
    compare.add_argument("--rerun-changed", action="store_true",
                         help="delete and rerun the runs (and the teacher) whose resolved "
                              "recipe differs from the one asked for (refused by default)")
    evaluation = commands.add_parser(
        "eval", help="validation loss, perplexity, calibration and agreement with a teacher",
        description="Evaluate a run directory (its student on its own validation split, "
                    "against its own hf/cached teacher) or a saved model directory.")
    evaluation.add_argument("target", metavar="MODEL_OR_RUN_DIR")
    evaluation.add_argument("--teacher", help="a teacher checkpoint to compare with (KL, "
                                              "top-1 agreement)")
    evaluation.add_argument("--data", help="a recipe (its validation split, batches as its "
                                           "runs evaluate) or a file, folder or glob (every "
                                           "document of it, read as data.files reads it)")
    evaluation.add_argument("--batches", type=int, default=None,
                            help="evaluate at most N batches (default: a run directory's own "
                                 "final evaluation, train.eval_batch_size x "
                                 "train.eval_batches; all of --data FILE; 16 of 16 "
                                 "sequences otherwise)")
    evaluation.add_argument("--json", action="store_true", help="print one JSON object")
    evaluation.add_argument("--trust-remote-code", action="append", default=[], metavar="PATH",
                            help="a model or tokenizer path whose own Python code (auto_map) "
                                 "may run when it loads; repeat for several (default: none)")
    serve = commands.add_parser(
        "serve-teacher", help="serve a frozen teacher's log-probabilities over HTTP",
        description="Serve a transformers causal LM behind the subset of vLLM's OpenAI-"
                    "compatible API that `teacher.kind: served` uses (docs/serving.md). Stops "
                    "cleanly on Ctrl-C or SIGTERM.")
    serve.add_argument("model_dir", metavar="MODEL_DIR",
                       help="a checkpoint directory with its tokenizer (e.g. a run's student/)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="the model's name in the API (default: MODEL_DIR)")
    serve.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    serve.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    serve.add_argument("--max-logprobs", type=int,
                       help="largest prompt_logprobs a request may ask (default: the vocabulary)")
    serve.add_argument("--max-batch-tokens", type=int, default=16384,
                       help="prompt tokens per forward when requests are batched (default 16384)")
    serve.add_argument("--api-key-env", metavar="VAR",
                       help="require `Authorization: Bearer <key>`, the key read from VAR")
    serve.add_argument("--log-every", type=float, default=10.0, metavar="SECONDS",
                       help="seconds between throughput lines (default 10)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    from distill.compare import run_comparison

    if args.jobs < 1:
        raise UserError(f"--jobs: got {args.jobs}; must be >= 1.")
    only = [name.strip() for value in args.only or [] for name in value.split(",")
            if name.strip()] or None
    out = run_comparison(args.recipe, args.overrides, args.jobs, only, args.rerun_changed)
    print(f"comparison written to {out}/ (report.md, comparison.md/.csv/.png, "
          "comparison_seeds.csv)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from distill.eval_command import evaluate_target

    if args.batches is not None and args.batches < 1:
        raise UserError(f"--batches: got {args.batches}; must be >= 1.")
    result = evaluate_target(args.target, args.teacher, args.data, args.batches,
                             args.trust_remote_code)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>16}  {value:.4f}" if isinstance(value, float) else f"{key:>16}  {value}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from distill.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from distill.train import run

    result = run(recipe, resume=args.resume)
    if not result.main_process:
        return 0
    start = "" if result.first_val_loss is None else f"{result.first_val_loss:.4f} -> "
    print(f"done: {result.steps} steps, student validation loss {start}"
          f"{result.final_val_loss:.4f}; outputs in {result.output_dir}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json
    import os

    from distill.plan import describe
    from distill.plan_report import format_report

    report = describe(args.model, gpu_memory_gib=args.gpu_memory_gib, context=args.context,
                      batch=args.batch, chunk_size=args.chunk_size)
    try:
        print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    except BrokenPipeError:  # `distill inspect ... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, torchrun stopping its workers) raised in the main
    thread: the run unwinds as on Ctrl-C (locks released, partial writes removed), and its
    checkpoints stay resumable."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _serve_teacher(args: argparse.Namespace) -> int:
    from distill.serve import serve

    for flag, value in (("--port", args.port), ("--max-logprobs", args.max_logprobs),
                        ("--max-batch-tokens", args.max_batch_tokens),
                        ("--log-every", args.log_every)):
        if value is not None and not value > 0:
            raise UserError(f"{flag}: got {value}; must be > 0.")
    serve(args.model_dir, args.host, args.port, args.model, args.device, args.dtype,
          args.max_logprobs, args.max_batch_tokens, args.api_key_env, args.log_every)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides allowed after the flags as well as
    before them (``distill compare R --jobs 2 train.max_steps=100``). argparse's
    ``parse_intermixed_args`` does not support subcommands, and a plain parse fills the
    overrides with the positionals before the first flag only, leaving the rest over: those
    that are overrides are appended in order, anything else is still an error."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides") and not any(e.startswith("-") for e in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        commands = {"inspect": _inspect, "eval": _eval, "compare": _compare, "run": _run,
                    "serve-teacher": _serve_teacher}
        return commands[args.command](args)
    except (UserError, TrainingStopped) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # 128 + the signal's number, as a shell reports a process that signal ended: 130 for
        # SIGINT (Ctrl-C), 143 for SIGTERM, so a scheduler can tell which one stopped the run.
        print("distill: interrupted; resume with --resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
