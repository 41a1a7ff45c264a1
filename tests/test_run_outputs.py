"""What a run tells its user and leaves behind: the start-up summary, an evaluation line per
evaluation, plain progress lines in a log file, elapsed_s and grad_norm in metrics.jsonl,
metrics.png, model cards that follow the run and the model, and a quiet save."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pytest
import torch

import students
from distill.metrics import MetricsLog, read_metrics
from distill.model_card import write_model_card
from distill.policies import eval_line
from distill.progress import StepProgress
from distill.recipe import load_recipe
from distill.run_plot import write_run_plot
from distill.summary import Counts, config_counts, model_counts, startup_lines
from tests.conftest import QUICKSTART, TINY_MODEL, run_cli, tiny_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the start-up summary

def _lines(**changes) -> list[str]:
    values = dict(device="cpu", processes=1, mixed_precision="no",
                  student=Counts(40480, 40480, 22048), student_name="`Llama4ForCausalLM`",
                  teacher_line="none: trained on the data's next tokens alone", teacher=None,
                  micro_batch_size=4, grad_accum_steps=2, block_size=32, max_steps=100,
                  start_step=0, train_blocks=400, validation_blocks=50, eval_every=25,
                  eval_batches=2, eval_batch_size=16)
    return startup_lines(**{**values, **changes})


def test_summary_states_the_global_batch_and_what_processes_did_to_it():
    one = _lines()
    # 4 x 2 x 1 = 8 sequences of 32 tokens = 256 tokens; 100 steps = 25,600 tokens
    assert "global batch 8 sequences x 32 tokens = 256 tokens per step (4 per micro-batch x 2 " \
           "accumulation)" in one
    assert "plan 100 steps, 25,600 tokens = 2.00 epochs of the 400 training blocks" in one
    two = _lines(processes=2)
    assert two[0] == "device cpu, 2 processes, mixed precision no"
    # the same recipe under a 2-process launch: 16 sequences, 512 tokens, twice the epochs
    assert ("global batch 16 sequences x 32 tokens = 512 tokens per step (4 per micro-batch x 2 "
            "accumulation x 2 processes: the launch's 2 processes multiply the recipe's 8 "
            "sequences per step by 2)") in two
    assert "plan 100 steps, 51,200 tokens = 4.00 epochs of the 400 training blocks" in two


def test_summary_names_models_and_evaluation_cadence():
    lines = _lines()
    assert lines[1] == ("student `Llama4ForCausalLM`: 40.48K parameters (40.48K trainable, "
                        "22.05K active per token)")
    assert lines[2] == "teacher: none: trained on the data's next tokens alone"
    # 2 batches of 16 = the first 32 of the 50 validation blocks
    assert lines[-1] == ("evaluation at step 0, every 25 steps and at the end, on the first 32 "
                         "of 50 validation blocks")
    assert _lines(eval_batches=None, eval_every=0)[-1] == \
        "evaluation at step 0 and at the end, on all 50 validation blocks"
    resumed = _lines(start_step=40)
    assert "plan 60 steps (resuming at step 40 of 100), 15,360 tokens = 1.20 epochs of the 400 " \
           "training blocks" in resumed
    assert resumed[-1].startswith("evaluation every 25 steps and at the end")
    served = _lines(teacher_line="`tiny` served at http://127.0.0.1:8000 (frozen, top-20 ...)")
    assert served[2] == "teacher: `tiny` served at http://127.0.0.1:8000 (frozen, top-20 ...)"
    cached = _lines(teacher_line="`t` (frozen, its cached top-64 outputs)",
                    teacher=Counts(3_210_000, active=2_030_000))
    assert cached[2] == ("teacher: `t` (frozen, its cached top-64 outputs); 3.21M parameters "
                         "(2.03M active per token)")


def test_parameter_counts_match_the_built_models():
    moe = students.model_config("scout-tiny", TINY_MODEL, vocab_size=50)
    model = students.build_model(moe)
    total = sum(p.numel() for p in model.parameters())
    # a token uses 1 of the 4 routed experts: 3 of 4 experts' gate/up/down per MoE layer idle
    idle = len(moe.moe_layers) * 3 * (3 * moe.hidden_size * moe.intermediate_size)
    assert config_counts(moe) == Counts(total, active=total - idle)
    model.get_input_embeddings().weight.requires_grad_(False)  # as a frozen part would be
    counts = model_counts(model)
    assert (counts.total, counts.trainable, counts.active) == \
        (total, total - 50 * moe.hidden_size, total - idle)
    dense = students.model_config("scout-tiny", {**TINY_MODEL, "moe_layers": []}, vocab_size=50)
    assert config_counts(dense) == \
        Counts(sum(p.numel() for p in students.build_model(dense).parameters()))
    assert config_counts(None) is None  # a served teacher: no model here


# ---------------------------------------------------------------- lines and progress

def test_eval_line_gives_loss_and_perplexity():
    assert eval_line(100, {"val_loss": 5.4321}) == \
        f"eval step 100: val_loss 5.4321 (ppl {math.exp(5.4321):.1f})"
    assert eval_line(7, {"val_loss": 2.0, "teacher_val_loss": 1.0}) == \
        "eval step 7: val_loss 2.0000 (ppl 7.4); teacher val_loss 1.0000 (ppl 2.7)"


def test_plain_progress_lines_at_an_interval_and_at_the_end(capsys):
    now = [0.0]
    stream = io.StringIO()
    progress = StepProgress(10, bar=False, interval=30.0, stream=stream, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = 10.0 * step  # 10 s per step
        progress.update({"loss": f"{1.0 / step:.3f}"})
    progress.write("eval step 10: val_loss 1.0000 (ppl 2.7)")
    lines = stream.getvalue().splitlines()
    # a line once 30 s passed since the last one (steps 3, 6, 9) and at the last step
    assert [line.split(",")[0] for line in lines] == [
        "distill: step 3/10 (30%)", "distill: step 6/10 (60%)", "distill: step 9/10 (90%)",
        "distill: step 10/10 (100%)"]
    # at step 3: 0.1 steps/s, 7 steps left = 70 s
    assert lines[0] == "distill: step 3/10 (30%), 0.10 steps/s, 30s elapsed, ~1m10s left, " \
                       "loss 0.333"
    assert lines[-1] == "distill: step 10/10 (100%), 0.10 steps/s, 1m40s elapsed, loss 0.100"
    assert "\r" not in stream.getvalue()
    assert capsys.readouterr().out == "eval step 10: val_loss 1.0000 (ppl 2.7)\n"
    silent = StepProgress(3, bar=False, enabled=False, stream=stream)
    silent.update()
    silent.write("not shown")
    assert capsys.readouterr().out == "" and len(stream.getvalue().splitlines()) == 4


def test_metrics_rows_carry_elapsed_seconds(tmp_path):
    import time

    log = MetricsLog(tmp_path / "metrics.jsonl", started=time.monotonic() - 5.0)
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": float("nan")})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [1.0, None]
    assert 5.0 <= rows[0]["elapsed_s"] <= rows[1]["elapsed_s"] < 5.0 + 600


# ---------------------------------------------------------------- gradient norm

def test_grad_norm_is_the_norm_before_clipping_and_clipping_zero_changes_nothing():
    from distill.train import _clip_gradients
    from tests.test_train import _fresh_accelerator

    accelerator = _fresh_accelerator(1)
    for max_norm, expected_grads in ((0.0, [3.0, 4.0, 0.0]), (1.0, [0.6, 0.8, 0.0]),
                                     (10.0, [3.0, 4.0, 0.0])):
        module = torch.nn.Linear(3, 1, bias=False)
        module.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
        # sqrt(3^2 + 4^2) = 5, reported before clipping whatever the threshold
        assert _clip_gradients(accelerator, module, max_norm) == pytest.approx(5.0)
        torch.testing.assert_close(module.weight.grad, torch.tensor([expected_grads]),
                                   rtol=1e-5, atol=1e-6)
        if max_norm == 0.0:
            assert module.weight.grad.tolist() == [[3.0, 4.0, 0.0]]  # exactly untouched


# ---------------------------------------------------------------- a whole run

@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, cache_dir):
    """A tiny codistillation run through the CLI; its stdout and stderr are not a terminal,
    as in a log file. Clipping at 0.05 so that grad_norm shows the norm before clipping."""
    out = tmp_path_factory.mktemp("outputs") / "run"
    result = run_cli("run", QUICKSTART, *tiny_overrides(out, cache_dir, **{
        "train.max_grad_norm": 0.05}))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_a_run_prints_its_summary_eval_lines_and_plain_progress(logged_run):
    out, result = logged_run
    lines = result.stdout.splitlines()
    # the tests' tiny recipe: 4 sequences x 1 accumulation x 1 process of 32 tokens, 12 steps
    assert "distill: device cpu, 1 process, mixed precision no" in lines
    assert "distill: global batch 4 sequences x 32 tokens = 128 tokens per step (4 per " \
           "micro-batch x 1 accumulation)" in lines
    assert any(line.startswith("distill: plan 12 steps, 1536 tokens = ") for line in lines)
    assert any(line.startswith("distill: teacher: codistillation with a `llama4_text` teacher")
               and "parameters" in line for line in lines)
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "val_loss" in r]
    expected = [eval_line(r["step"], r) for r in evals]
    assert [line for line in lines if line.startswith("eval step")] == expected
    assert [r["step"] for r in evals] == [0, 6, 12]
    # the summary comes before the first evaluation, the last evaluation before "done:"
    assert lines.index("distill: device cpu, 1 process, mixed precision no") < \
        lines.index(expected[0]) < lines.index(expected[-1]) < len(lines) - 1
    assert lines[-1].startswith("done: 12 steps")
    # stderr is no terminal: no carriage-return bar, a plain line at the last step
    assert "\r" not in result.stderr
    assert any(line.startswith("distill: step 12/12 (100%), ")
               for line in result.stderr.splitlines())
    assert "Writing model shards" not in result.stderr


def test_metrics_rows_carry_grad_norm_and_elapsed(logged_run):
    out, _ = logged_run
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 12
    for row in train_rows:
        # clipped at 0.05, logged before clipping: above the threshold at this stage
        assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0.05
    elapsed = [r["elapsed_s"] for r in rows]
    assert all(e >= 0 for e in elapsed) and elapsed == sorted(elapsed)


def test_every_run_directory_gets_a_plot(logged_run):
    out, _ = logged_run
    png = out / "metrics.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(out.glob("*.tmp"))


def test_a_plot_that_fails_warns_and_keeps_nothing_broken(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n'
                                            '{"step": 2, "loss": 1.0}\n')
    said = []
    assert write_run_plot(tmp_path, "t", warn=said.append) is False
    assert len(said) == 1 and "metrics.png not written" in said[0] and "line 2" in said[0]
    assert not (tmp_path / "metrics.png").exists()


def test_codistilled_cards_and_a_quiet_save(logged_run, tmp_path, capfd):
    out, _ = logged_run
    student_card = (out / "student" / "README.md").read_text()
    assert "\n# Codistilled student\n" in student_card
    assert "- codistillation\n- mixture-of-experts\n" in student_card
    teacher_card = (out / "teacher" / "README.md").read_text()
    assert "\n# Codistilled teacher\n" in teacher_card
    assert _front_tags(teacher_card) == ["codistillation", "mixture-of-experts"]
    assert f"`{out / 'config.yaml'}`" in student_card  # where config.yaml is

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.saving import save_model

    recipe = load_recipe(out / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    card = {"recipe": recipe, "metrics": {"val_loss": 1.0}, "role": "student",
            "teacher_line": "t", "adapter": False}
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_model(model, tokenizer, tmp_path / "saved", card)
    err = capfd.readouterr().err
    assert [str(w.message) for w in caught] == []
    assert err == ""  # no "Writing model shards" bar, no library warning
    assert (tmp_path / "saved" / "model.safetensors").exists()


# ---------------------------------------------------------------- model cards

def _card(tmp_path: Path, model, role="student", codistilled=False, shown=None,
          **overrides) -> str:
    recipe = load_recipe(QUICKSTART, [f"{k}={v}" for k, v in overrides.items()])
    directory = tmp_path / f"card-{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    write_model_card(directory, recipe, {"val_loss": 2.5}, role, "a teacher", model,
                     adapter=False, codistilled=codistilled, shown_path=shown)
    return (directory / "README.md").read_text()


def _front_tags(card: str) -> list[str]:
    import yaml

    return yaml.safe_load(card.split("---")[1])["tags"]


@pytest.fixture(scope="module")
def tiny_models():
    moe = students.build_model(students.model_config("scout-tiny", TINY_MODEL, vocab_size=50))
    dense = students.build_model(students.model_config(
        "scout-tiny", {**TINY_MODEL, "moe_layers": []}, vocab_size=50))
    return moe, dense


def test_card_titles_follow_the_run(tmp_path, tiny_models):
    moe, _ = tiny_models
    assert "\n# Codistilled student\n" in _card(tmp_path, moe, codistilled=True)
    assert "\n# Codistilled teacher\n" in _card(tmp_path, moe, role="teacher", codistilled=True)
    frozen = _card(tmp_path, moe, **{"teacher.kind": "none"})
    assert "\n# Pretrained model (no teacher)\n" in frozen
    assert "Distilled" not in frozen and "- **Loss:**" not in frozen
    # a frozen teacher that taught (the card reads the kind; the card needs no real path)
    recipe_kind_hf = _card(tmp_path, moe, **{"teacher.kind": "cached",
                                             "teacher.hf.name_or_path": "runs/t/student"})
    assert "\n# Distilled student\n" in recipe_kind_hf
    unused = _card(tmp_path, moe, **{"loss.soft_weight": 0.0})
    assert "\n# Student trained on the data alone (soft weight 0, no teacher signal)\n" in unused
    assert "a teacher, unused: the soft weight is 0 at every step" in unused


def test_card_tags_follow_the_model_and_the_run(tmp_path, tiny_models):
    moe, dense = tiny_models
    assert _front_tags(_card(tmp_path, moe, codistilled=True)) == [
        "distillation", "knowledge-distillation", "codistillation", "mixture-of-experts"]
    dense_card = _card(tmp_path, dense, **{"teacher.kind": "none"})
    assert _front_tags(dense_card) == ["causal-lm"]
    assert "dense (no experts)" in dense_card and "experts (" not in dense_card
    assert _front_tags(_card(tmp_path, dense, **{"teacher.kind": "cached",
                                                 "teacher.hf.name_or_path": "t"})) == \
        ["distillation", "knowledge-distillation"]


def test_card_paths_are_explained(tmp_path, tiny_models, monkeypatch):
    moe, _ = tiny_models
    monkeypatch.chdir(tmp_path)
    card = _card(tmp_path, moe, shown=Path("runs/a/student"))
    assert f"relative to `{tmp_path}`, the directory `distill run` was started in" in card
    assert "`../config.yaml`, beside this model's directory (`runs/a/config.yaml`)" in card
    assert 'from_pretrained("runs/a/student")' in card
