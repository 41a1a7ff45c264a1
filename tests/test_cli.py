"""The command line a newcomer meets: overrides anywhere among the flags, a missing recipe
said as such, help for every argument, missing paths named before any work, and what an
interruption tells the user."""

from __future__ import annotations

import argparse

import pytest

from distill import cli
from distill.errors import UserError
from distill.recipe import load_recipe
from students import sources
from tests.conftest import QUICKSTART, run_cli, tiny_overrides


def _parse(argv: list[str]) -> dict:
    args = vars(cli.parse_args(argv))
    return {k: v for k, v in args.items() if k in ("command", "recipe", "overrides", "resume",
                                                   "jobs", "only")}


@pytest.mark.parametrize("argv, expected", [
    (["run", "R", "--resume", "train.max_steps=5"],
     {"recipe": "R", "overrides": ["train.max_steps=5"], "resume": True}),
    (["run", "R", "a=1", "--resume", "b=2"],
     {"recipe": "R", "overrides": ["a=1", "b=2"], "resume": True}),
    (["run", "--resume", "R", "a=1"], {"recipe": "R", "overrides": ["a=1"], "resume": True}),
    (["run", "R", "--resume", "--", "a=1"],
     {"recipe": "R", "overrides": ["a=1"], "resume": True}),
    (["compare", "R", "--jobs", "2", "train.max_steps=100"],
     {"recipe": "R", "overrides": ["train.max_steps=100"], "jobs": 2, "only": None}),
    (["compare", "R", "a=1", "--only", "x,y", "b=2", "--jobs", "3", "c=3"],
     {"recipe": "R", "overrides": ["a=1", "b=2", "c=3"], "jobs": 3, "only": ["x,y"]}),
])
def test_overrides_may_come_before_between_and_after_the_flags(argv, expected):
    parsed = _parse(argv)
    assert parsed["command"] == argv[0]
    assert {k: parsed[k] for k in expected} == expected


@pytest.mark.parametrize("argv, flag", [
    (["run", "R", "a=1", "--bogus"], "--bogus"),
    (["run", "R", "a=1", "--bogus", "b=2"], "--bogus"),
    (["compare", "R", "--jobs", "2", "a=1", "--jbos", "3"], "--jbos"),
    (["run", "R", "--resume", "-x", "a=1"], "-x"),
])
def test_an_unknown_flag_anywhere_is_an_error_naming_it_alone(argv, flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: distill {argv[0]} " in err  # the subcommand's usage, not the top level's
    assert err.strip().endswith(f"error: unrecognized arguments: {flag}")


@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_missing_recipe_is_said_as_such_with_an_example(command, capsys):
    for argv in ([command], [command, "--resume" if command == "run" else "--jobs=2"]):
        with pytest.raises(SystemExit) as stopped:
            cli.parse_args(argv)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert "a recipe is required" in err and f"distill {command} recipes/" in err
        assert "arguments are required" not in err  # argparse's words: 'recipe, key=value'


def test_an_override_in_the_recipe_s_place_is_named(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["run", "train.max_steps=5", "--resume"])
    err = capsys.readouterr().err
    assert "'train.max_steps=5' is a key=value override; name the recipe first" in err


def test_no_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "a command is required: run, inspect, compare, eval, serve-teacher" in err


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return cli._parser()[1]


@pytest.mark.parametrize("name", ["run", "compare", "eval", "inspect", "serve-teacher"])
def test_every_argument_of_every_subcommand_has_help_and_its_default(name: str):
    sub = _subparsers()[name]
    text = sub.format_help()
    for action in sub._actions:
        assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
        if action.option_strings and action.default not in (None, argparse.SUPPRESS):
            # the rendered line of this flag states its default
            rendered = sub._get_formatter()._expand_help(action)  # the text -h prints
            assert "(default" in rendered, f"{name} {action.option_strings}: {rendered!r}"
            if action.default is False:  # a switch
                assert rendered.endswith("(default: off)")
    assert "examples:\n  distill " + name in text
    assert "usage: distill " + name in text


def test_compare_help_shows_only_and_its_default():
    text = " ".join(_subparsers()["compare"].format_help().split())
    assert "--only NAME[,NAME] run (and report) only these variants" in text
    assert "(default: every variant)" in text and "--jobs N runs in parallel processes " \
        "(default: 1)" in text


# ---- local paths and hub names, before any work

@pytest.mark.parametrize("name, local", [
    ("/checkpoints/llama4-behemoth", True), ("./ckpt", True), ("../ckpt", True),
    ("~/models/x", True), ("runs/teacher-tiny/student", True), ("ckpt/", True),
    ("has space", True), (r"C:\models\x", True),
    ("gpt2", False), ("meta-llama/Llama-4-Scout-17B-16E", False), ("checkpoints/behemoth", False),
])
def test_what_looks_like_a_local_path(name: str, local: bool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no 'checkpoints/' here
    assert sources.looks_local(name) is local


def test_an_org_name_beside_a_directory_of_that_name_is_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not sources.looks_local("checkpoints/behemoth")
    (tmp_path / "checkpoints").mkdir()
    assert sources.looks_local("checkpoints/behemoth")


def test_check_exists_names_the_key_and_says_what_is_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"^teacher.hf.name_or_path: could not load "
                       r"'\./nope': it does not exist \(no such file or directory: "
                       + str(tmp_path / "nope")):
        sources.check_exists("./nope", "teacher.hf.name_or_path")
    with pytest.raises(FileNotFoundError, match=r"'org/model': it is neither a local path .* "
                       r"nor a model in the local Hugging Face cache, and the hub cannot be "
                       r"asked \(offline mode: HF_HUB_OFFLINE is set\)"):
        sources.check_exists("org/model", "student.name_or_path")
    # a snapshot in the hub cache loads offline: accepted
    (tmp_path / "hub" / "models--org--model" / "snapshots" / "abc").mkdir(parents=True)
    sources.check_exists("org/model", "student.name_or_path")
    sources.check_exists(str(tmp_path), "student.name_or_path")  # an existing path


def test_a_missing_teacher_path_is_refused_before_any_data_or_model_work(tmp_path, cache_dir,
                                                                         monkeypatch):
    import distill.train as train

    def must_not_run(*args, **kwargs):
        raise AssertionError("data or models were built before the path was checked")

    monkeypatch.setattr(train, "load_corpus", must_not_run)
    monkeypatch.setattr(train, "build_models", must_not_run)
    missing = tmp_path / "checkpoints" / "behemoth"
    out = tmp_path / "out"
    for key, extra in [("teacher.hf.name_or_path", {"teacher.kind": "hf",
                                                    "teacher.hf.name_or_path": missing}),
                       ("teacher.hf.name_or_path", {"teacher.kind": "cached",
                                                    "teacher.hf.name_or_path": missing}),
                       ("data.tokenizer", {"data.tokenizer": missing}),
                       ("student.name_or_path", {"student.init": "pretrained",
                                                 "student.name_or_path": missing})]:
        recipe = load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **extra))
        with pytest.raises(UserError, match=rf"^{key}: could not load '{missing}': it does "
                                            "not exist"):
            train.run(recipe)
        assert not out.exists()


def test_an_uncached_hub_dataset_offline_is_refused_at_once(tmp_path, cache_dir, monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    import distill.train as train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(train, "load_corpus", lambda *a, **k: pytest.fail("data was read"))
    recipe = load_recipe(QUICKSTART, tiny_overrides(tmp_path / "out", cache_dir, **{
        "data.source": "hub", "data.hub_name": "org/corpus"}))
    with pytest.raises(UserError, match=r"^data.hub_name: dataset 'org/corpus' is not in the "
                                        r"local caches .* \(offline mode: HF_HUB_OFFLINE"):
        train.run(recipe)
    # in datasets' own cache (its 'org___name' folder): left to datasets to load
    (tmp_path / "datasets" / "org___corpus").mkdir(parents=True)
    sources.check_hub_dataset("org/corpus")


def test_the_shipped_gpu_recipe_fails_on_its_missing_teacher_path_first(tmp_path):
    result = run_cli("run", "recipes/behemoth_to_maverick.yaml", f"output_dir={tmp_path / 'o'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "teacher.hf.name_or_path: could not load '/checkpoints/llama4-behemoth': it does " \
           "not exist" in result.stderr
    assert "Retrying" not in result.stderr  # no hub look-up at all
    assert not (tmp_path / "o").exists()


# ---- what an interruption says

def test_interrupted_says_whether_resume_can_work(tmp_path):
    out = tmp_path / "run"
    args = argparse.Namespace(command="run", output_dir=str(out))
    assert "no checkpoint was written yet" in cli._interrupted(args)
    (out / "checkpoints" / "step-00000003").mkdir(parents=True)
    (out / "checkpoints" / "step-00000003" / "trainer_state.json").write_text("{}")
    assert cli._interrupted(args) == "resume with --resume"
    assert "run the same command again" in cli._interrupted(argparse.Namespace(command="compare"))


def test_a_run_stopped_before_its_first_checkpoint_is_not_told_to_resume(tmp_path):
    from distill.train import _check_output_dir

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "val_loss": 8.3}\n')
    with pytest.raises(UserError, match="holds a run .metrics.jsonl. but no checkpoint to "
                                        "resume from; choose another output_dir, or remove"):
        _check_output_dir(tmp_path, resume=False)


# ---- one way to call the toolkit in the docs

def test_readme_and_docs_call_the_toolkit_one_way():
    """Every command in a shell block of README.md and docs/ calls it from .venv by its path
    (the README's first lines do): no bare `distill ...`, `python ...`, `torchrun ...`.
    Lines the toolkit prints (`distill: ...`, `distill serve-teacher: ...`) are output."""
    import re

    from tests.conftest import REPO

    bare = re.compile(r"^(\$ )?(distill (?![\w-]+: )|python3? |torchrun |accelerate |pytest )")
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        fence = None  # the language of the open code block, None outside one
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
            elif fence in ("bash", "sh", "console", "") and bare.match(line):
                found.append(f"{doc.name}: {line}")
    assert found == []
