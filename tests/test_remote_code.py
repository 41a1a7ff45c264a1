"""No code from a model unless asked: a checkpoint whose config or tokenizer names modules of
its own (auto_map) is refused with its path and how to allow it, never prompts, never runs;
the recipe's `trust_remote_code` lists the paths allowed, and only those."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import students
import teachers
from distill.data import load_tokenizer
from distill.errors import UserError
from distill.recipe import load_recipe
from tests.conftest import QUICKSTART, REPO, tiny_overrides


def _planted(directory: Path, marker: Path, tokenizer: bool = False) -> Path:
    """A checkpoint whose config.json (or tokenizer_config.json) maps the auto classes to
    modules of its own; importing them writes ``marker``."""
    directory.mkdir(parents=True)
    code = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
            "from transformers import PretrainedConfig, PreTrainedTokenizerFast\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_lm'\n"
            "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    (directory / "evil.py").write_text(code)
    if tokenizer:  # a tokenizer of a class transformers does not have
        (directory / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "EvilTokenizer",
            "auto_map": {"AutoTokenizer": [None, "evil.EvilTokenizer"]}}))
    else:
        (directory / "config.json").write_text(json.dumps({
            "model_type": "evil_lm", "vocab_size": 512,
            "auto_map": {"AutoConfig": "evil.EvilConfig",
                         "AutoModelForCausalLM": "evil.EvilModel"}}))
    return directory


def test_a_model_with_its_own_code_is_refused_even_when_someone_answers_yes(
        tmp_path: Path, cache_dir: Path):
    marker = tmp_path / "MARKER"
    evil = _planted(tmp_path / "evil", marker)
    args = ["run", QUICKSTART, *tiny_overrides(tmp_path / "out", cache_dir),
            "teacher.kind=hf", f"teacher.hf.name_or_path={evil}"]
    # transformers asks on the terminal when trust_remote_code is left unset; "y" on stdin
    # used to answer it, and the planted module ran.
    result = subprocess.run([sys.executable, "-m", "distill", *args], input="y\n" * 4,
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "[y/N]" not in result.stdout
    message = result.stderr.strip()
    assert message.count("\n") == 0
    assert message.startswith("distill: error: teacher.hf.name_or_path")
    assert f"{evil} needs its own Python code" in message and "evil.py" in message
    assert "`trust_remote_code`" in message
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # refused before any work


def test_every_loader_refuses_it(tmp_path: Path, cache_dir: Path, monkeypatch):
    marker = tmp_path / "MARKER"
    evil = _planted(tmp_path / "evil", marker)
    evil_tokenizer = _planted(tmp_path / "evil-tokenizer", marker, tokenizer=True)
    with pytest.raises(ValueError, match="needs its own Python code"):
        students.load_pretrained(str(evil))                       # hf teacher, student
    with pytest.raises(ValueError, match="needs its own Python code"):
        teachers.CachedTeacher(str(evil), 4, tmp_path / "c", 1, 512)   # its AutoConfig
    for path in (evil, evil_tokenizer):
        with pytest.raises(UserError, match=r"data.tokenizer: .* needs its own Python code"):
            load_tokenizer(load_recipe(QUICKSTART, [f"data.tokenizer={path}"]).data, None)
    with pytest.raises(UserError, match="student.name_or_path: .*trust_remote_code"):
        load_recipe(QUICKSTART, ["student.init=pretrained", f"student.name_or_path={evil}"])
    # a hub model's files are not checked beforehand: transformers' own refusal under
    # trust_remote_code=False is what stops it, reworded the same way
    monkeypatch.setattr(students.sources, "custom_code", lambda path: None)
    with pytest.raises(students.sources.CustomCodeRefused, match="`trust_remote_code`"):
        students.load_pretrained(str(evil))
    assert not marker.exists()


def test_trust_remote_code_allows_exactly_the_paths_it_names(tmp_path: Path, monkeypatch):
    """Only the refusal runs for real; whether the code would run is read off the argument
    transformers gets (the planted module is never imported)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    evil = _planted(tmp_path / "evil", tmp_path / "MARKER")
    plain = tmp_path / "plain"
    plain.mkdir()
    calls: list[tuple[str, object]] = []

    def record(cls, name_or_path, *args, **kwargs):
        calls.append((str(name_or_path), kwargs.get("trust_remote_code", "unset")))
        raise OSError("recorded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(record))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(record))
    monkeypatch.chdir(tmp_path)  # the recipe may name the path relatively: the same path
    recipe = load_recipe(QUICKSTART, ["teacher.kind=hf", f"teacher.hf.name_or_path={evil}",
                                      f"data.tokenizer={evil}", "trust_remote_code=[./evil]"])
    assert recipe.trust_remote_code == ["./evil"]
    setup = teachers.TeacherSetup(vocab_rows=512,
                                  trust_remote_code=tuple(recipe.trust_remote_code))
    for teacher_path in (str(evil), str(plain)):
        recipe.teacher.hf.name_or_path = teacher_path
        with pytest.raises(OSError, match="recorded"):
            teachers.build(recipe.teacher, setup)
    with pytest.raises(UserError, match="recorded"):
        load_tokenizer(recipe.data, None, recipe.trust_remote_code)
    # True for the named path only; every other load says False, never leaves it unset
    assert calls == [(str(evil), True), (str(plain), False), (str(evil), True)]
    with pytest.raises(UserError, match="needs its own Python code"):
        load_recipe(QUICKSTART, ["teacher.kind=hf", f"teacher.hf.name_or_path={evil}",
                                 f"trust_remote_code=[{plain}]"])
