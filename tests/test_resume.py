"""--resume is safe or refused, and checkpoints are verified before they load."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import pytest

import students
from distill.checkpoint import complete_checkpoints
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from tests.conftest import QUICKSTART, run_cli, tiny_overrides, untimed

SHORT = {"train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 0}


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{**SHORT, **extra}))


def _tree(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` and the sha256 of its bytes: 'nothing changed' means
    this is equal before and after."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _final(out: Path) -> float:
    return [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r][-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir: Path) -> Path:
    """A finished 6-step run with checkpoints at steps 3 and 6 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("resume") / "trained"
    run(_recipe(out, cache_dir))
    return out


@pytest.mark.parametrize("change, expected", [
    # the fault campaign's failures 1 (another width) and 2 (seed, data, a longer run whose
    # schedules follow train.max_steps); the old values are the recipe's, read off by hand
    ({"student.overrides.hidden_size": 64}, ["student.overrides.hidden_size: 32 -> 64"]),
    ({"seed": 5}, ["seed: 0 -> 5"]),
    ({"data.max_chars": 100_000}, ["data.max_chars: 150000 -> 100000"]),
    ({"train.max_steps": 12}, ["loss.soft_weight.total_steps: 6 -> 12",
                               "train.max_steps: 6 -> 12",
                               "train.max_steps may change on resume only where"]),
], ids=["width", "seed", "data", "longer"])
def test_resume_under_other_settings_is_refused_and_changes_nothing(
        trained: Path, cache_dir: Path, change: dict, expected: list[str]):
    before = _tree(trained)
    with pytest.raises(UserError) as refused:
        run(_recipe(trained, cache_dir, **change), resume=True)
    message = str(refused.value)
    for line in expected:
        assert line in message
    changed = [line for line in message.splitlines() if line.startswith("  ")]
    assert len(changed) == sum(" -> " in line for line in expected)  # and nothing else
    assert _tree(trained) == before


def test_resume_under_another_width_exits_2_without_a_traceback(trained: Path, cache_dir):
    before = _tree(trained)
    args = tiny_overrides(trained, cache_dir, **SHORT, **{"student.overrides.hidden_size": 64})
    result = run_cli("run", QUICKSTART, *args, "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "student.overrides.hidden_size: 32 -> 64" in result.stderr
    assert _tree(trained) == before


def test_settings_that_do_not_change_a_step_may_change_on_resume(trained: Path, tmp_path,
                                                                 cache_dir):
    out = tmp_path / "copy"  # elsewhere: output_dir may change too
    shutil.copytree(trained, out)
    shutil.rmtree(out / "checkpoints" / "step-00000006")  # resume from step 3
    shutil.rmtree(out / "student")
    run(_recipe(out, cache_dir, **{
        "train.log_every": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
        "train.keep_checkpoints": 3, "train.eval_batches": 1, "train.eval_batch_size": 8,
        "teacher.prefetch": "off", "train.on_nonfinite": "skip", "train.max_skipped_steps": 3}),
        resume=True)

    def losses(directory: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(directory / "metrics.jsonl")
                if "loss" in r}

    original = losses(trained)
    assert losses(out) == pytest.approx({s: original[s] for s in (1, 2, 3, 4, 6)}, rel=1e-6)
    assert [p.name for p in complete_checkpoints(out)] == [
        "step-00000003", "step-00000004", "step-00000006"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r] == \
        [0, 4, 6]


def test_a_changed_model_config_file_is_refused(tmp_path: Path, cache_dir: Path):
    """What the run built is compared too: here the recipe is the same, the file it names is not."""
    config_file = tmp_path / "student.json"
    config_file.write_text(json.dumps(students.PRESETS["scout-tiny"]))
    out = tmp_path / "run"
    extra = {"student.config_file": str(config_file), "train.max_steps": 3}
    run(_recipe(out, cache_dir, **extra))
    config_file.write_text(json.dumps({**students.PRESETS["scout-tiny"], "rms_norm_eps": 1e-3}))
    before = _tree(out)
    with pytest.raises(UserError, match=r"student\.config\.rms_norm_eps: 1e-05 -> 0\.001"):
        run(_recipe(out, cache_dir, **extra), resume=True)
    assert _tree(out) == before


def test_a_longer_run_resumes_without_a_jump_where_nothing_follows_max_steps(tmp_path, cache_dir):
    """With a constant learning rate and a soft-weight schedule that ends at a step of its
    own, a 6-step run resumed to 12 steps logs what an uninterrupted 12-step run logs."""
    fixed = {"train.lr_schedule": "constant", "loss.soft_weight.total_steps": 12}
    short, whole = tmp_path / "short", tmp_path / "whole"
    run(_recipe(short, cache_dir, **fixed))
    run(_recipe(short, cache_dir, **fixed, **{"train.max_steps": 12}), resume=True)
    run(_recipe(whole, cache_dir, **fixed, **{"train.max_steps": 12}))

    def steps(out: Path) -> list[dict]:
        return untimed([r for r in read_metrics(out / "metrics.jsonl") if "loss" in r])

    assert [r["step"] for r in steps(short)] == list(range(1, 13))
    for resumed, uninterrupted in zip(steps(short), steps(whole)):
        assert resumed == pytest.approx(uninterrupted, rel=1e-6)
    # and it cannot end before the step its checkpoint reached
    with pytest.raises(UserError, match="resumes from its checkpoint of step 12; use "
                                        r"train.max_steps >= 12"):
        run(_recipe(short, cache_dir, **fixed, **{"train.max_steps": 9}), resume=True)


def test_resume_without_a_checkpoint_is_refused_and_changes_nothing(tmp_path, cache_dir):
    """Failure 2: the run had no checkpoint; --resume used to start over, overwriting
    student/ and appending a second step-0 row."""
    out = tmp_path / "nockpt"
    run(_recipe(out, cache_dir, **{"train.max_steps": 2, "train.checkpoint_every": 0,
                                   "seed": 3}))
    before = _tree(out)
    with pytest.raises(UserError, match="holds no complete checkpoint.*nothing was changed"):
        run(_recipe(out, cache_dir, **{"train.max_steps": 4}), resume=True)
    assert _tree(out) == before
    # nothing there at all: refused, and not even the directory (or a lock file) is left
    missing = tmp_path / "missing" / "run"
    result = run_cli("run", QUICKSTART, *tiny_overrides(missing, cache_dir), "--resume")
    assert result.returncode == 2 and "holds no complete checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "missing").exists()


def test_resume_when_no_checkpoint_loads_is_refused_and_deletes_nothing(trained, tmp_path,
                                                                         cache_dir, capsys):
    """Failure 1: every checkpoint is corrupt; --resume used to train from scratch and then
    delete them."""
    out = tmp_path / "corrupt"
    shutil.copytree(trained, out)
    for checkpoint in complete_checkpoints(out):
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    before = _tree(out)
    with pytest.raises(UserError, match=r"none of the 2 checkpoints .* can be loaded "
                                        r"\(step-00000006: sha256 mismatch: model.safetensors; "
                                        r"step-00000003: sha256 mismatch: model.safetensors\); "
                                        "nothing was changed or deleted"):
        run(_recipe(out, cache_dir), resume=True)
    assert _tree(out) == before
    assert capsys.readouterr().out.count("falling back to the previous one") == 2


def test_checkpoints_carry_the_sha256_of_every_file(trained: Path):
    for checkpoint in complete_checkpoints(trained):
        listed = json.loads((checkpoint / "checksums.json").read_text())
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint.iterdir()
                 if p.name not in ("checksums.json", "trainer_state.json")}
        assert listed == files and "model.safetensors" in files


def test_changed_bytes_in_the_newest_checkpoint_are_caught_and_it_falls_back(
        trained: Path, tmp_path: Path, cache_dir: Path, capsys):
    """Failure 8: 2,000 random byte changes in the newest weights' tensor data (the
    safetensors header left whole, so the file still loads) went unnoticed."""
    out = tmp_path / "flipped"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "student")
    weights = out / "checkpoints" / "step-00000006" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header length, header
    rng = random.Random(0)
    for position in rng.sample(range(header, len(data)), 2000):
        data[position] ^= 1 + rng.randrange(255)  # never 0: every byte really changes
    weights.write_bytes(bytes(data))
    run(_recipe(out, cache_dir), resume=True)
    printed = capsys.readouterr().out
    assert f"checkpoint {weights.parent} cannot be loaded (sha256 mismatch: model.safetensors); " \
           "falling back to the previous one" in printed
    assert _final(out) == pytest.approx(_final(trained), rel=1e-6)
    # the new step-6 checkpoint replaced the damaged one
    assert json.loads((weights.parent / "checksums.json").read_text())["model.safetensors"] == \
        hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.parametrize("adaptive, settings", [
    ("taid", {"loss.taid.rate": 0.2, "loss.taid.momentum": 0.5, "loss.taid.total_steps": 1000}),
    ("loss_balance", {"loss.balance_momentum": 0.5}),
])
def test_a_stateful_strategy_resumes_exactly(tmp_path: Path, cache_dir: Path, adaptive: str,
                                             settings: dict):
    """The strategy's state (taid's t, momentum and last soft term; loss_balance's running
    averages) lives in buffers of the objective inside the student's module: the checkpoint
    of step 3 holds it, and the resumed steps log what the uninterrupted run logged."""
    from safetensors.torch import load_file

    settings = {"loss.adaptive": adaptive, **settings}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(_recipe(whole, cache_dir, **settings))
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")  # resume from step 3
    shutil.rmtree(resumed / "student")
    run(_recipe(resumed, cache_dir, **settings), resume=True)

    def steps(out: Path) -> list[dict]:
        return untimed([r for r in read_metrics(out / "metrics.jsonl") if "loss" in r])

    assert [r["step"] for r in steps(resumed)] == list(range(1, 7))
    for again, uninterrupted in zip(steps(resumed), steps(whole)):
        assert again == pytest.approx(uninterrupted, rel=1e-6)
    saved = load_file(whole / "checkpoints" / "step-00000003" / "model.safetensors")
    names = {"taid": ["t", "momentum", "previous", "steps"], "loss_balance": ["ema", "updates"]}
    for name in names[adaptive]:
        assert f"objective.strategy.{name}" in saved
    rows = steps(whole)
    if adaptive == "taid":  # t moved by the adaptive rule, above the floor of 0.4 + 0.6 n / 1000
        assert saved["objective.strategy.steps"].item() == 3
        assert rows[3]["taid_t"] == pytest.approx(saved["objective.strategy.t"].item())
        assert rows[0]["taid_t"] == 0.4 and rows[3]["taid_t"] > 0.4 + 0.6 * 3 / 1000 + 0.1
    else:  # the weights left the schedule's after the first update
        assert rows[0]["soft_weight"] == pytest.approx(rows[0]["soft_weight_scheduled"])
        assert rows[3]["soft_weight"] != pytest.approx(rows[3]["soft_weight_scheduled"])
        assert rows[3]["soft_weight"] + rows[3]["hard_weight"] == pytest.approx(1.0)
