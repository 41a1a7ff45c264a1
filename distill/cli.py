"""Command line: ``distill run | compare | eval | inspect | serve-teacher`` (README.md); every
subcommand's ``-h`` describes its arguments, defaults and examples."""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from distill.errors import TrainingStopped, UserError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (the examples), and every flag's help
    ends with its default unless the text already says it: ``(default: 1)``, ``(default:
    off)`` for a switch. A flag whose default is None says in its own words what none means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "(default" in text or action.default in (
                None, argparse.SUPPRESS):
            return text
        shown = "off" if action.default is False else "%(default)s"
        return f"{text} (default: {shown})"


_RECIPE_HELP = "path to a YAML recipe (see recipes/; a run's own config.yaml is one too)"
_OVERRIDES_HELP = ("dotted recipe overrides, before or after the flags; values are YAML "
                   "(e.g. train.max_steps=50 'data.files=[a.txt,b.txt]'); "
                   "every field: docs/recipe-reference.md")

# The one line shown, with the usage, when a subcommand that needs a recipe gets none.
RECIPE_EXAMPLES = {
    "run": "distill run recipes/quickstart.yaml train.max_steps=50 output_dir=runs/a",
    "compare": "distill compare recipes/compare_schedules.yaml --jobs 2 train.max_steps=100",
}


def _subcommand(commands, name: str, help: str, description: str, examples: str,
                usage: str | None = None) -> argparse.ArgumentParser:
    # The description is wrapped here: the formatter keeps the epilog's examples as written.
    return commands.add_parser(name, help=help, description=textwrap.fill(description, 88),
                               epilog="examples:\n" + examples, usage=usage,
                               formatter_class=HelpFormatter)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's own parser, by name."""
    parser = argparse.ArgumentParser(
        prog="distill", description="Teacher-student (co)distillation for language models.",
        epilog="`distill COMMAND -h` describes a command's arguments. Example:\n  "
               + RECIPE_EXAMPLES["run"], formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _subcommand(
        commands, "run", help="train a student from a recipe",
        description="Train a student from a YAML recipe; key=value overrides replace recipe "
                    "fields (README.md, docs/recipe-reference.md).",
        examples="  distill run recipes/quickstart.yaml\n"
                 "  distill run recipes/quickstart.yaml train.max_steps=50 output_dir=runs/a "
                 "seed=3\n"
                 "  distill run runs/a/config.yaml --resume    # continue a stopped run",
        usage="%(prog)s [-h] RECIPE [key=value ...] [--resume]")
    run.add_argument("recipe", nargs="?", metavar="RECIPE", help=_RECIPE_HELP)
    run.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest complete checkpoint in output_dir, with "
                          "the recipe it ran (a changed recipe is refused)")
    inspect = _subcommand(
        commands, "inspect", help="parameter counts, layer pattern and memory plan of a model",
        description="Total and active parameters, the layer pattern and a memory plan "
                    "(weights, training state, activations, logits, GPUs) of a preset, a "
                    "config file, a checkpoint directory or a run directory (its student/); "
                    "see docs/inspect.md.",
        examples="  distill inspect behemoth\n"
                 "  distill inspect runs/quickstart --gpu-memory-gib 24 --context 4096\n"
                 "  distill inspect scout --json")
    inspect.add_argument("model", metavar="NAME_OR_PATH",
                         help="a preset (scout, maverick, behemoth, *-tiny), a YAML/JSON "
                              "config file, a directory holding config.json, or a run "
                              "directory (config.yaml and student/)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--gpu-memory-gib", type=float, default=80.0, metavar="GIB",
                         help="memory of one GPU in GiB")
    inspect.add_argument("--context", type=int, default=8192, metavar="TOKENS",
                         help="tokens per sequence")
    inspect.add_argument("--batch", type=int, default=1, metavar="N",
                         help="sequences per GPU per micro-batch")
    inspect.add_argument("--chunk-size", type=int, default=256, metavar="TOKENS",
                         help="tokens per chunk of the fused loss")
    compare = _subcommand(
        commands, "compare",
        help="run a recipe under several loss variants and seeds and compare them",
        description="Run the recipe's compare.variants under each of compare.seeds with the "
                    "same data order, step budget and validation positions; key=value "
                    "overrides (before or after the flags) apply to every variant. Run again "
                    "after an interruption: finished runs are kept while their recipe is "
                    "unchanged. See docs/compare.md.",
        examples="  distill compare recipes/compare_schedules.yaml --jobs 2\n"
                 "  " + RECIPE_EXAMPLES["compare"] + "\n"
                 "  distill compare recipes/compare_schedules.yaml --only hard_only,constant_0.7",
        usage="%(prog)s [-h] RECIPE [key=value ...] [--jobs N] [--only NAME[,NAME]] "
              "[--rerun-changed]")
    compare.add_argument("recipe", nargs="?", metavar="RECIPE",
                         help="a recipe with a compare section (see recipes/compare_*.yaml)")
    compare.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    compare.add_argument("--jobs", type=int, default=1, metavar="N",
                         help="runs in parallel processes")
    compare.add_argument("--only", action="append", metavar="NAME[,NAME]",
                         help="run (and report) only these variants of compare.variants, by "
                              "name; repeatable (default: every variant)")
    compare.add_argument("--rerun-changed", action="store_true",
                         help="delete and rerun the runs (and the teacher) whose resolved "
                              "recipe differs from the one asked for; without it such runs "
                              "are refused, naming the keys")
    evaluation = _subcommand(
        commands, "eval",
        help="validation loss, perplexity, calibration and agreement with a teacher",
        description="Evaluate a run directory (its student on its own validation split, "
                    "against its own hf/cached teacher) or a saved model directory.",
        examples="  distill eval runs/quickstart\n"
                 "  distill eval runs/quickstart/student --teacher runs/quickstart/teacher "
                 "--json")
    evaluation.add_argument("target", metavar="MODEL_OR_RUN_DIR", help="a run directory "
                            "(config.yaml and student/) or a saved model directory")
    evaluation.add_argument("--teacher", help="a teacher checkpoint to compare with (KL, "
                                              "top-1 agreement) (default: a run directory's "
                                              "own frozen teacher; none for a model)")
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
    serve = _subcommand(
        commands, "serve-teacher", help="serve a frozen teacher's log-probabilities over HTTP",
        description="Serve a transformers causal LM behind the subset of vLLM's OpenAI-"
                    "compatible API that `teacher.kind: served` uses (docs/serving.md). Stops "
                    "cleanly on Ctrl-C or SIGTERM.",
        examples="  distill serve-teacher runs/teacher-tiny/student --port 8000\n"
                 "  DISTILL_KEY=secret distill serve-teacher runs/quickstart/student "
                 "--host 0.0.0.0 --api-key-env DISTILL_KEY")
    serve.add_argument("model_dir", metavar="MODEL_DIR",
                       help="a checkpoint directory with its tokenizer (e.g. a run's student/)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind; 127.0.0.1 answers this machine only")
    serve.add_argument("--port", type=int, default=8000, help="port")
    serve.add_argument("--model", metavar="NAME",
                       help="the model's name in the API (default: MODEL_DIR)")
    serve.add_argument("--device", metavar="DEVICE",
                       help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    serve.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                       help="the weights' and computation's dtype")
    serve.add_argument("--max-logprobs", type=int, metavar="K",
                       help="largest prompt_logprobs a request may ask (default: the vocabulary)")
    serve.add_argument("--max-batch-tokens", type=int, default=16384, metavar="TOKENS",
                       help="prompt tokens per forward when requests are batched")
    serve.add_argument("--api-key-env", metavar="VAR",
                       help="require `Authorization: Bearer <key>`, the key read from "
                            "environment variable VAR (default: no key asked)")
    serve.add_argument("--log-every", type=float, default=10.0, metavar="SECONDS",
                       help="seconds between throughput lines")
    return parser, dict(commands.choices)


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
    from distill.startup import StartupClock, process_age_s

    clock = StartupClock(process_age_s())  # the time to first step counts the recipe too
    with clock.phase("recipe"):  # loaded and validated: its models built on the meta device
        recipe = load_recipe(args.recipe, args.overrides)
    args.output_dir = recipe.output_dir  # for the message after an interruption
    from distill.train import run

    result = run(recipe, resume=args.resume, clock=clock)
    if not result.main_process:
        return 0
    print(f"done: {result.steps} steps, {_validation_text(result)}; outputs in "
          f"{result.output_dir}")
    return 0


def _validation_text(result) -> str:
    """The final line's account of the validation loss: ``student validation loss A -> B``,
    or what was not evaluated (train.eval_at_start / train.eval_at_end false, or a resumed
    run, which has no step-0 evaluation of its own)."""
    first, final = result.first_val_loss, result.final_val_loss
    if final is None:
        if first is None:
            return "no validation loss (train.eval_at_end: false)"
        return (f"student validation loss {first:.4f} at the start, no final evaluation "
                "(train.eval_at_end: false)")
    start = "" if first is None else f"{first:.4f} -> "
    return f"student validation loss {start}{final:.4f}"


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
    """SIGTERM (a scheduler's stop, `kill`, torchrun stopping its workers) or SIGHUP raised
    in the main thread: the run unwinds as on Ctrl-C (locks released, partial writes
    removed), and its checkpoints stay resumable."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = int(signum)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


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
    """The command line, with ``key=value`` overrides allowed before, between and after the
    flags (``distill compare R --jobs 2 train.max_steps=100``). argparse's intermixed parsing
    does not support subcommands, so the subcommand is picked here and its own parser parses
    the rest intermixed: errors then show that subcommand's usage, and an unknown flag is
    named alone."""
    parser, subcommands = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.error(f"a command is required: {', '.join(subcommands)}; for example\n  "
                     f"{RECIPE_EXAMPLES['run']}\n`distill COMMAND -h` describes each.")
    if argv[0] not in subcommands:
        return parser.parse_args(argv)  # top-level help, or argparse's unknown-command error
    name, sub = argv[0], subcommands[argv[0]]
    args, extras = sub.parse_known_intermixed_args(argv[1:])
    if flags := [e for e in extras if e.startswith("-")]:
        sub.error(f"unrecognized arguments: {' '.join(flags)}")
    if extras:  # never reached: intermixed parsing gives every positional a place
        sub.error(f"unrecognized arguments: {' '.join(extras)}")
    args.command = name
    if name in RECIPE_EXAMPLES:
        _require_recipe(sub, name, args)
    return args


def _require_recipe(sub: argparse.ArgumentParser, name: str, args: argparse.Namespace) -> None:
    """The recipe is the first positional: say so, with an example, when it is missing or
    when an override stands in its place (argparse alone would call `key=value` required,
    or look for a recipe file named 'train.max_steps=5')."""
    if args.recipe is None:
        sub.error(f"a recipe is required: distill {name} RECIPE [key=value ...]; for "
                  f"example\n  {RECIPE_EXAMPLES[name]}")
    if "=" in args.recipe and not Path(args.recipe).exists():
        sub.error(f"the first argument is the recipe file, but {args.recipe!r} is a key=value "
                  f"override; name the recipe first, for example\n  {RECIPE_EXAMPLES[name]}")


def _interrupted(args: argparse.Namespace) -> str:
    """What to do after Ctrl-C, SIGTERM or SIGHUP, by command: only a run with a complete
    checkpoint can be resumed (before its first one, --resume has nothing to start from)."""
    if args.command == "compare":
        return "run the same command again: finished runs are kept"
    if args.command != "run":
        return "stopped"
    output_dir = getattr(args, "output_dir", None)
    from distill.checkpoint import complete_checkpoints

    if output_dir is None or not complete_checkpoints(Path(output_dir)):
        where = "" if output_dir is None else f" in {output_dir}"
        return (f"no checkpoint was written yet{where}, so there is nothing to resume; "
                "remove that directory (or choose another output_dir) and run again")
    return "resume with --resume"


def _install_signal_handlers() -> None:
    """SIGTERM (and SIGHUP: the terminal closed) unwind as Ctrl-C does: the lock released,
    partial writes removed, checkpoints resumable. A SIGHUP that is ignored (``nohup``)
    stays ignored."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _raise_terminated)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _install_signal_handlers()
    try:
        commands = {"inspect": _inspect, "eval": _eval, "compare": _compare, "run": _run,
                    "serve-teacher": _serve_teacher}
        return commands[args.command](args)
    except (UserError, TrainingStopped) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # 128 + the signal's number, as a shell reports a process that signal ended: 130 for
        # SIGINT (Ctrl-C), 143 for SIGTERM, 129 for SIGHUP, so a scheduler can tell which one
        # stopped the run.
        print(f"distill: interrupted; {_interrupted(args)}", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
