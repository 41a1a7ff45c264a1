"""The loop: gradient accumulation, end-to-end CLI runs, resume after SIGKILL, NaN stops."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import losses
import students
from distill.checkpoint import complete_checkpoints
from distill.errors import TrainingStopped, UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from teachers.codistill import CodistillTeacher
from tests.conftest import REPO, TINY_MODEL, run_cli, tiny_overrides, untimed

QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


def _fresh_accelerator(grad_accum: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(gradient_accumulation_steps=grad_accum, cpu=True)


def _step_gradients(micro_batches: list[tuple], grad_accum: int, step_tokens: int, fused: bool):
    from distill.prefetch import TeacherPrefetch
    from distill.train import forward_backward
    from teachers import LMWithObjective, MicroBatch, Placement, TeacherSetup

    accelerator = _fresh_accelerator(grad_accum)
    config = students.model_config("scout-tiny", TINY_MODEL, vocab_size=50)
    torch.manual_seed(0)
    objective = losses.Objective("forward_kl", losses.Schedule("constant", 0.4, 0.4),
                                 losses.Schedule("constant", 2.0, 2.0), chunk_size=7)
    student = accelerator.prepare(LMWithObjective(students.build_model(config), objective,
                                                  fused, router_aux=False, vocab_rows=50))
    teacher_lm = students.build_model(config)

    def sgd(model, lr):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    # The teacher trains (codistillation): its gradients come from its own pass.
    teacher = CodistillTeacher(teacher_lm, TeacherSetup(vocab_rows=50, make_optimizer=sgd,
                                                        chunk_size=5), lr=0.0)
    teacher.prepare(Placement(accelerator, torch.zeros(1, 11, dtype=torch.long), hidden=fused))
    batches = [MicroBatch(ids, labels, torch.arange(len(ids)), 0, step_tokens)
               for ids, labels in micro_batches]
    forward_backward(accelerator, student, TeacherPrefetch(teacher, enabled=False), batches)
    student_lm = accelerator.unwrap_model(student).lm
    return ([p.grad.clone() for p in student_lm.parameters()],
            [p.grad.clone() for p in teacher_lm.parameters()], student_lm, teacher_lm)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_one_by_eight_equals_eight_by_one_and_the_plain_formula(fused: bool):
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (8, 10))
    labels = torch.randint(0, 50, (8, 10))
    for row in range(8):  # unequal numbers of valid targets per sequence
        labels[row, : row + 1] = -100
    step_tokens = int((labels != -100).sum())
    whole = [(ids, labels)]
    split = [(ids[i:i + 1], labels[i:i + 1]) for i in range(8)]
    s1, t1, student, teacher = _step_gradients(whole, 1, step_tokens, fused)
    s8, t8, _, _ = _step_gradients(split, 8, step_tokens, fused)
    for a, b in zip(s1 + t1, s8 + t8):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # Independent reference: the step's loss written out over all valid tokens at once.
    student.zero_grad()
    teacher.zero_grad()
    valid = labels != -100
    s_logits, t_logits = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    ce = torch.nn.functional.cross_entropy(s_logits[valid], labels[valid])
    p = torch.log_softmax(t_logits.detach()[valid] / 2.0, -1)
    q = torch.log_softmax(s_logits[valid] / 2.0, -1)
    kd = (p.exp() * (p - q)).sum(-1).mean()
    teacher_ce = torch.nn.functional.cross_entropy(t_logits[valid], labels[valid])
    (0.6 * ce + 0.4 * 4.0 * kd + teacher_ce).backward()
    reference = [p.grad for p in student.parameters()] + [p.grad for p in teacher.parameters()]
    for a, b in zip(s1 + t1, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cli_run_writes_every_output(finished_run: Path):
    rows = read_metrics(finished_run / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 25))
    for key in ("step", "tokens", "lr", "loss", "ce", "kd", "soft_weight", "temperature"):
        assert key in train_rows[0]
    assert [r["step"] for r in eval_rows] == [0, 6, 12, 18, 24]
    assert all("val_ppl" in r for r in eval_rows)
    assert eval_rows[-1]["val_loss"] < eval_rows[0]["val_loss"] - 0.5
    # the soft weight follows the quickstart's linear schedule 0.2 -> 0.7 over 24 steps
    assert train_rows[12]["soft_weight"] == pytest.approx(0.2 + 0.5 * 12 / 24)
    assert train_rows[0]["tokens"] == 4 * 32

    resolved = load_recipe(finished_run / "config.yaml")
    assert resolved.train.max_steps == 24 and resolved.loss.soft_weight.total_steps is None
    assert [p.name for p in complete_checkpoints(finished_run)] == ["step-00000018",
                                                                  "step-00000024"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(finished_run / "student")
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "student")
    assert type(model).__name__ == "Llama4ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 512


def test_a_codistilled_teacher_is_saved_beside_the_student(finished_run: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(finished_run / "teacher")
    assert len(AutoTokenizer.from_pretrained(finished_run / "teacher")) == 512
    # the quickstart's teacher: 4 layers of width 32 (the tests' tiny overrides), 4 experts
    assert (teacher.config.num_hidden_layers, teacher.config.hidden_size,
            teacher.config.num_local_experts) == (4, 32, 4)
    card = (finished_run / "teacher" / "README.md").read_text()
    params = sum(p.numel() for p in teacher.parameters())
    assert "# Codistilled teacher" in card
    assert f"4 layers, hidden size 32, 4 experts (1 per token), vocabulary 512, {params:,} " \
           "parameters" in card
    last = [r for r in read_metrics(finished_run / "metrics.jsonl") if "val_loss" in r][-1]
    assert f"| val_loss | {last['teacher_val_loss']:.4f} |" in card
    # it teaches like any pretrained checkpoint: its logits are those of the saved weights
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(teacher(input_ids=ids).logits).all()
    assert "# Codistilled student" in (finished_run / "student" / "README.md").read_text()


def test_second_run_in_same_output_dir_is_refused(finished_run: Path, cache_dir):
    result = run_cli("run", QUICKSTART, *tiny_overrides(finished_run, cache_dir))
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigkill_then_resume_matches_uninterrupted(finished_run: Path, tmp_path, cache_dir):
    out = tmp_path / "killed"
    args = ["run", QUICKSTART, *tiny_overrides(out, cache_dir, **{"train.max_steps": 24})]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not complete_checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "student").exists()

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = [r for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    expected = [r for r in read_metrics(finished_run / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in final] == [r["step"] for r in expected]
    assert final[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], rel=1e-6, abs=1e-6)

    # resuming a finished run re-evaluates it without duplicating a row
    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [(r["step"], "val_loss" in r) for r in read_metrics(out / "metrics.jsonl")]
    assert len(steps) == len(set(steps))


def test_frozen_hf_teacher_from_a_saved_checkpoint(finished_run: Path, tmp_path, cache_dir):
    student_dir = finished_run / "student"
    out = tmp_path / "hf"
    recipe = load_recipe(QUICKSTART, tiny_overrides(
        out, cache_dir, **{"teacher.kind": "hf", "teacher.hf.name_or_path": str(student_dir),
                           "data.tokenizer": str(student_dir), "train.max_steps": 4,
                           "train.checkpoint_every": 0}))
    from distill.train import run

    result = run(recipe)
    rows = read_metrics(out / "metrics.jsonl")
    assert "teacher_ce" not in rows[1] and rows[1]["kd"] > 0
    assert result.final_val_loss < result.first_val_loss


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, cache_dir, monkeypatch):
    import distill.train as train_module
    from teachers import LMWithObjective

    real_forward = LMWithObjective.forward

    def poisoned(self, input_ids, labels, teacher, step, step_tokens, **kwargs):
        # The student's logits turn NaN from the 8th optimizer step on.
        terms, mine = real_forward(self, input_ids, labels, teacher, step, step_tokens, **kwargs)
        if teacher is not None and step >= 7:
            terms.total = terms.total * float("nan")
            terms.terms["ce"] = terms.terms["ce"] * float("nan")
        return terms, mine

    monkeypatch.setattr(LMWithObjective, "forward", poisoned)
    out = tmp_path / "nan"
    recipe = load_recipe(QUICKSTART, tiny_overrides(out, cache_dir))
    with pytest.raises(TrainingStopped, match=r"non-finite ce \(nan\) at step 8"):
        train_module.run(recipe)
    kept = complete_checkpoints(out)
    assert [p.name for p in kept] == ["step-00000006"]
    state = json.loads((kept[0] / "trainer_state.json").read_text())
    assert state["step"] == 6


def test_same_seed_same_run(tmp_path, cache_dir):
    from distill.train import run

    results = []
    for name in ("a", "b"):
        recipe = load_recipe(QUICKSTART, tiny_overrides(
            tmp_path / name, cache_dir, **{"train.max_steps": 5, "train.checkpoint_every": 0}))
        run(recipe)
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        results.append(untimed(rows))
    assert results[0] == results[1]


def test_resume_without_checkpoint_and_missing_output_dir_ok(tmp_path, cache_dir):
    with pytest.raises(UserError, match="already holds a run"):
        out = tmp_path / "x"
        out.mkdir()
        (out / "metrics.jsonl").write_text("")
        from distill.train import run

        run(load_recipe(QUICKSTART, tiny_overrides(out, cache_dir)))


@pytest.mark.parametrize("overrides", [
    {"loss.adaptive": "teacher_confidence", "loss.divergence": "jsd", "loss.beta.kind": "linear",
     "loss.beta.start": 0.1, "loss.beta.end": 0.9},
    {"loss.adaptive": "loss_balance", "loss.divergence": "akl", "loss.fused": "off"},
    {"loss.adaptive": "uncertainty", "loss.divergence": "skew_kl", "train.grad_accum_steps": 2,
     "loss.router_aux_weight": 0.01},
    {"loss.adaptive": "taid", "loss.divergence": "todi", "loss.taid.rate": 0.1,
     "loss.todi_sharpness": 2.0, "train.grad_accum_steps": 2},
], ids=["confidence-jsd", "balance-akl-plain", "uncertainty-skew-aux", "taid-todi"])
def test_adaptive_strategies_run_end_to_end_and_log_their_weights(tmp_path, cache_dir, overrides):
    from distill.train import run

    out = tmp_path / "run"
    recipe = load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 2, **overrides}))
    run(recipe)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 4
    for row in rows:
        assert row["soft_weight"] >= 0.0 and row["hard_weight"] >= 0.0
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    strategy = overrides["loss.adaptive"]
    if strategy in ("teacher_confidence", "taid"):  # the schedule's weights, kept exactly
        for row in rows:
            assert row["soft_weight"] == pytest.approx(row["soft_weight_scheduled"], abs=1e-5)
            assert row["soft_weight"] + row["hard_weight"] == pytest.approx(1.0, abs=1e-5)
    if strategy == "loss_balance":  # the total kept, the split moved after the first step
        assert rows[0]["soft_weight"] == pytest.approx(rows[0]["soft_weight_scheduled"])
        assert rows[-1]["soft_weight"] != pytest.approx(rows[-1]["soft_weight_scheduled"])
        assert all(r["soft_weight"] + r["hard_weight"] == pytest.approx(1.0) for r in rows)
    if strategy == "uncertainty":
        assert rows[-1]["log_var_hard"] != 0.0 and "router_aux" in rows[-1]
        assert rows[0]["router_aux_weight"] == 0.01
    if strategy == "teacher_confidence":
        assert rows[-1]["beta"] > rows[0]["beta"]
    if strategy == "taid":
        t = [r["taid_t"] for r in rows]
        assert t[0] == 0.4 and all(b > a for a, b in itertools.pairwise(t)) and t[-1] < 1.0
