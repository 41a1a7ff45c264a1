"""On-policy distillation, the loop side: the recipe section and its checks, which rows are
generated and how they are masked, the sampler, the loop (fraction 0 changes nothing, 1x8
== 8x1, exact resume, prefetch, DDP) and `distill compare`'s live teacher."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import losses
import students
from distill.compare import plan
from distill.data import BlockOrder
from distill.errors import UserError
from distill.fingerprint import recipe_fingerprint
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.rollout import (Rollouts, chosen_rows, continuation_lengths, generated_count,
                             rollout_rows)
from distill.train import run
from losses.outputs import HiddenStates, Logits
from teachers import MicroBatch
from tests.conftest import QUICKSTART, REPO, TINY_MODEL, tiny_overrides, untimed

# Short rollouts that fit the tests' 32-token blocks.
SHORT = {"on_policy.prompt_tokens": 8, "on_policy.max_new_tokens": 16}
# Keys whose values are wall-clock measurements.


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 0, "train.eval_every": 0, **SHORT,
        **extra}))


def _rows(out: Path) -> list[dict]:
    return untimed(read_metrics(out / "metrics.jsonl"))


def _train_rows(out: Path) -> list[dict]:
    return [row for row in _rows(out) if "loss" in row]


def _val_losses(out: Path) -> list[float]:
    return [row["val_loss"] for row in _rows(out) if "val_loss" in row]


def _section(fraction=0.5, prompt_tokens=4, max_new_tokens=12, temperature=1.0, top_p=1.0):
    schedule = SimpleNamespace(kind="constant", start=fraction, end=fraction, warmup_steps=0,
                               total_steps=1, warmup_start=None, rate=5.0, stages=4,
                               decay_fraction=0.2)
    return SimpleNamespace(fraction=schedule, prompt_tokens=prompt_tokens,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def _tiny_lm(vocab: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    return students.build_model(students.model_config("scout-tiny", TINY_MODEL, vocab_size=vocab))


# ---- the recipe section


@pytest.mark.parametrize("settings, message", [
    ({"teacher.kind": "cached", "teacher.hf.name_or_path": "x", "on_policy.fraction": 0.5},
     r"on_policy\.fraction: teacher\.kind 'cached' cannot grade.*a cache cannot score text"),
    ({"teacher.kind": "none", "on_policy.fraction": 1.0},
     r"on_policy\.fraction: teacher\.kind 'none' has no teacher to grade"),
    ({"on_policy.fraction": 1.5}, r"on_policy\.fraction\.start: got 1\.5; must be in \[0, 1\]"),
    ({"on_policy.fraction": "{kind: linear, start: 0.0, end: -0.5}"},
     r"on_policy\.fraction\.end: got -0\.5"),
    ({"on_policy.temperature": 0}, r"on_policy\.temperature: got 0\.0; must be > 0"),
    ({"on_policy.top_p": 0}, r"on_policy\.top_p: got 0\.0; must be in \(0, 1\]"),
    ({"on_policy.top_p": 1.5}, r"on_policy\.top_p: got 1\.5; must be <= 1"),
    ({"on_policy.prompt_tokens": 0}, r"on_policy\.prompt_tokens: got 0; must be >= 1"),
    ({"on_policy.fraction": 0.5, "on_policy.prompt_tokens": 20, "on_policy.max_new_tokens": 14},
     (r"on_policy\.max_new_tokens: prompt_tokens \(20\) \+ max_new_tokens \(14\) = 34 must be "
      r"at most data\.block_size \+ 1 = 33")),
    ({"on_policy.loss": "sampeld"}, r"on_policy\.loss: got 'sampeld'.*Did you mean 'sampled'"),
])
def test_on_policy_settings_that_cannot_work_are_refused(settings, message, tmp_path, cache_dir):
    with pytest.raises(UserError, match=message):
        load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **settings))


def test_the_section_off_checks_no_fit_and_leaves_the_fingerprint_as_before(tmp_path, cache_dir):
    # Off, lengths that would not fit a 32-token block are not its business (nor the teacher).
    off = load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **{
        "on_policy.prompt_tokens": 30, "on_policy.max_new_tokens": 30, "teacher.kind": "none"}))
    assert not off.on_policy.active()
    assert not any(key.startswith("on_policy") for key in recipe_fingerprint(off))
    on = load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **SHORT, **{
        "on_policy.fraction": "{kind: linear, start: 0.0, end: 0.5}"}))
    assert on.on_policy.active() and on.on_policy.fraction.total_steps is None
    assert recipe_fingerprint(on)["on_policy.fraction.total_steps"] == 12  # train.max_steps
    assert recipe_fingerprint(on)["on_policy.fraction.end"] == 0.5
    # a constant schedule is its start, whatever its end says
    assert not load_recipe(QUICKSTART, tiny_overrides(tmp_path, cache_dir, **{
        "on_policy.fraction": "{kind: constant, start: 0.0, end: 1.0}"})).on_policy.active()


# ---- which rows, and how they are masked


@pytest.mark.parametrize("fraction, rows, expected", [
    (0.0, 8, 0), (1.0, 8, 8), (0.5, 8, 4), (0.3, 8, 2), (0.0625, 8, 1), (0.1875, 8, 2),
    (0.5, 3, 2), (0.01, 8, 0)])
def test_the_count_is_the_fraction_of_the_steps_rows_rounded_half_up(fraction, rows, expected):
    assert generated_count(fraction, rows) == expected


def test_the_generated_rows_are_the_same_blocks_in_every_layout_of_a_step():
    """1x8, 8x1, and 2 processes x 2x2 (or 4x1, 1x4): for each step, the same blocks
    are generated, at the same places of the step (which seed their samples)."""
    def generated(micro_batch_size, accum, world, fraction, steps=3):
        orders = [BlockOrder(64, micro_batch_size, 7, rank, world) for rank in range(world)]
        found = []
        for _ in range(steps):
            step = {}
            count = generated_count(fraction, micro_batch_size * accum * world)
            for rank, order in enumerate(orders):
                indices = [order.next_indices() for _ in range(accum)]
                for j, i, place in chosen_rows(count, micro_batch_size, accum, rank, world):
                    step[place] = int(indices[j][i])
            found.append(step)
        return found

    for fraction in (0.25, 0.5, 0.625, 1.0):
        reference = generated(8, 1, 1, fraction)
        assert [len(step) for step in reference] == [generated_count(fraction, 8)] * 3
        assert sorted(reference[0]) == list(range(generated_count(fraction, 8)))
        for layout in ((1, 8, 1), (2, 2, 2), (4, 1, 2), (1, 4, 2), (2, 1, 4)):
            assert generated(*layout, fraction) == reference, (layout, fraction)


def test_a_continuation_ends_at_its_first_end_of_text_even_when_pad_is_end_of_text():
    eos = 9
    new = torch.tensor([[5, 9, 9, 9],   # ends second; generate pads with 9 (pad == eos)
                        [9, 9, 9, 9],   # ends at once
                        [5, 6, 7, 8],   # no end: ran to the output's length
                        [5, 6, 9, 3]])  # ends third; what follows is never read
    lengths = continuation_lengths(new, eos)
    assert lengths.tolist() == [2, 1, 4, 3]
    prompts = torch.tensor([[1, 2, 9], [1, 2, 3], [1, 2, 3], [9, 2, 3]])  # eos in a prompt: no end
    out = rollout_rows(prompts, new, lengths, pad_id=eos, block_len=9)
    # Rows of 9 tokens: prompt, continuation, padding (9); label t is token t + 1, valid up to
    # the continuation's end (P - 1 + length), sampled from P - 1 = 2 on.
    tokens = [[1, 2, 9, 5, 9, 9, 9, 9, 9], [1, 2, 3, 9, 9, 9, 9, 9, 9],
              [1, 2, 3, 5, 6, 7, 8, 9, 9], [9, 2, 3, 5, 6, 9, 9, 9, 9]]
    ends = [4, 3, 6, 5]
    assert out["input_ids"].tolist() == [row[:-1] for row in tokens]
    assert out["labels"].tolist() == [[tok if t < end else -100 for t, tok in enumerate(row[1:])]
                                      for row, end in zip(tokens, ends)]
    assert out["generated"].tolist() == [[2 <= t < end for t in range(8)] for end in ends]
    # with a pad token of its own, what follows the end is that pad
    other = rollout_rows(prompts[3:], new[3:], lengths[3:], pad_id=0, block_len=9)
    assert other["input_ids"].tolist() == [[9, 2, 3, 5, 6, 9, 0, 0]]
    # no end-of-text token known: every sampled token counts
    assert continuation_lengths(new, None).tolist() == [4, 4, 4, 4]


# ---- the sampler


def test_sampling_draws_from_the_tempered_nucleus():
    """The processors' argmax (Gumbel-max) against the distribution written out by hand:
    softmax(z / T) over the fewest top tokens holding top_p of the mass, renormalised."""
    rollouts = Rollouts(_section(temperature=0.7, top_p=0.8), 0, None, None, vocab_rows=5)
    z = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    p = [math.exp(v / 0.7) for v in z.tolist()]
    p = [v / sum(p) for v in p]                                  # 0.768, 0.184, 0.044, ...
    assert p[0] < 0.8 <= p[0] + p[1]                             # the nucleus: two tokens
    expected = [p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1]), 0.0, 0.0, 0.0]
    processors = rollouts.processors([torch.Generator().manual_seed(1)])
    draws = 4000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts[processors(None, z[None].clone()).argmax()] += 1
    assert (counts / draws).tolist() == pytest.approx(expected, abs=0.025)
    assert counts[2:].sum() == 0
    # a head padded beyond the tokenizer never samples a padding row
    limited = Rollouts(_section(), 0, None, None, vocab_rows=3).processors(
        [torch.Generator().manual_seed(2)])
    assert all(limited(None, torch.tensor([[0.0, 0.0, 0.0, 50.0, 50.0]])).argmax() < 3
               for _ in range(50))


def test_generate_with_a_kv_cache_samples_what_a_plain_loop_samples():
    """The student's generate call (KV cache, efficient MoE forward) against a loop that
    runs the whole sequence every token, with the same seeds: the same tokens."""
    lm = _tiny_lm()
    rollouts = Rollouts(_section(temperature=0.9, top_p=0.95, max_new_tokens=10), 0, 63, 62, 64)
    prompts = torch.randint(0, 64, (3, 5))
    seeds = [11, 12, 13]
    lm.train()
    sampled = rollouts.sample(lm, prompts, seeds)
    assert lm.training  # back to train mode
    lengths = continuation_lengths(sampled, 63)
    processors = rollouts.processors([torch.Generator().manual_seed(s) for s in seeds])
    sequence = prompts
    lm.eval()
    with torch.no_grad():
        for _ in range(10):
            logits = lm(input_ids=sequence).logits[:, -1].float()
            chosen = processors(sequence, logits).argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, chosen], 1)
    plain = sequence[:, 5:]
    for row in range(3):
        n = int(lengths[row])
        assert sampled[row, :n].tolist() == plain[row, :n].tolist()
    # settings a checkpoint's generation_config may carry do not bend the samples, and the
    # model keeps its own generation_config
    own = lm.generation_config
    own.repetition_penalty, own.no_repeat_ngram_size, own.suppress_tokens = 5.0, 2, [1, 2, 3]
    assert torch.equal(rollouts.sample(lm, prompts, seeds), sampled)
    assert lm.generation_config is own


def test_a_student_with_adapters_samples_as_the_merged_model_does():
    """A peft student (what ``unwrap_model(student).lm`` is under ``student.peft``): its
    samples are those of the same weights without adapters at zero (LoRA starts at zero),
    and the generation settings of both wrapper and base model are left as they were."""
    from students.init import apply_peft

    rollouts = Rollouts(_section(max_new_tokens=6), 0, 63, 62, 64)
    prompts = torch.randint(0, 64, (2, 4))
    plain = rollouts.sample(_tiny_lm(), prompts, [1, 2])
    adapted = apply_peft(_tiny_lm(), {"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                      "target_modules": ["q_proj", "v_proj"]})
    base_config = adapted.get_base_model().generation_config
    assert torch.equal(rollouts.sample(adapted, prompts, [1, 2]), plain)
    assert adapted.get_base_model().generation_config is base_config


def test_a_steps_rollouts_do_not_depend_on_how_it_is_split():
    lm = _tiny_lm()
    rollouts = Rollouts(_section(fraction=0.5), seed=3, eos_id=63, pad_id=62, vocab_rows=64)
    blocks = torch.randint(0, 62, (8, 17))

    def joined(parts):
        return {key: torch.cat([p[key] if p[key] is not None
                                else torch.zeros_like(p["labels"], dtype=torch.bool)
                                for p in parts]) for key in ("input_ids", "labels", "generated")}

    whole, stats = rollouts.rewrite(lm, 5, [blocks], 0, 1)
    whole = joined(whole)
    eight, stats8 = rollouts.rewrite(lm, 5, [blocks[i:i + 1] for i in range(8)], 0, 1)
    assert stats8.tokens == stats.tokens and stats.rows == 4
    for key, value in joined(eight).items():
        assert torch.equal(value, whole[key]), key
    # two processes, two micro-batches of two each: rank r's j-th holds rows (2j + r) * 2 + i
    ranks = {}
    for rank in (0, 1):
        mbs = [blocks[(2 * j + rank) * 2:(2 * j + rank) * 2 + 2] for j in (0, 1)]
        parts, _ = rollouts.rewrite(lm, 5, mbs, rank, 2)
        ranks[rank] = parts
    order = [ranks[0][0], ranks[1][0], ranks[0][1], ranks[1][1]]
    for key, value in joined(order).items():
        assert torch.equal(value, whole[key]), key
    # the first four rows are rollouts of their own prompts; the rest is the data
    assert torch.equal(whole["input_ids"][:4, :4], blocks[:4, :4])
    assert not whole["generated"][4:].any() and whole["generated"][:4, 3].all()
    assert torch.equal(whole["input_ids"][4:], blocks[4:, :-1])
    assert torch.equal(whole["labels"][4:], blocks[4:, 1:])
    # another step samples other tokens
    other = joined(rollouts.rewrite(lm, 6, [blocks], 0, 1)[0])
    assert not torch.equal(other["input_ids"][:4], whole["input_ids"][:4])


# ---- the loss and a teacher that learns the data


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_sampled_tokens_carry_no_hard_cross_entropy(fused: bool):
    torch.manual_seed(0)
    hidden, head = torch.randn(2, 6, 8), torch.randn(20, 8)
    labels = torch.randint(0, 20, (2, 6))
    labels[1, 5] = -100
    generated = torch.zeros(2, 6, dtype=torch.bool)
    generated[0, 3:] = True
    generated[1, 2:5] = True
    objective = losses.Objective("forward_kl", losses.Schedule("constant", 0.0, 0.0),
                                 losses.Schedule("constant", 1.0, 1.0), chunk_size=5)
    student = HiddenStates(hidden, head) if fused else Logits(hidden @ head.T)
    # a teacher grades the generated positions (soft weight 0 here: only the hard term counts)
    teacher = Logits(torch.randn(2, 6, 20))
    out = objective(student, teacher, labels, step=0, step_tokens=11, generated=generated)
    data = labels.masked_fill(generated, -100).reshape(-1)
    expected = F.cross_entropy((hidden @ head.T).reshape(-1, 20), data, reduction="sum") / 11
    assert float(out.total) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.terms["hard_weight"]) == pytest.approx(int((data != -100).sum()) / 11)


def test_a_codistilled_teacher_learns_the_data_positions_only():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from teachers import Placement, TeacherSetup
    from teachers.codistill import CodistillTeacher

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    lm = _tiny_lm(vocab=50)

    def sgd(model, lr):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    teacher = CodistillTeacher(lm, TeacherSetup(vocab_rows=50, make_optimizer=sgd), lr=0.0)
    teacher.prepare(Placement(accelerator, torch.zeros(1, 11, dtype=torch.long)))
    ids, labels = torch.randint(0, 50, (2, 10)), torch.randint(0, 50, (2, 10))
    generated = torch.zeros(2, 10, dtype=torch.bool)
    generated[0, 4:] = True
    batch = MicroBatch(ids, labels, torch.arange(2), 0, step_tokens=20, generated=generated,
                       step_data_tokens=14)
    assert batch.hard_labels.tolist() == labels.masked_fill(generated, -100).tolist()
    with torch.no_grad():
        logits = lm(input_ids=ids).logits
    expected = F.cross_entropy(logits.reshape(-1, 50), batch.hard_labels.reshape(-1),
                               reduction="sum") / 14
    teacher.outputs(batch)
    assert float(teacher.step_terms()["teacher_ce"]) == pytest.approx(float(expected), rel=1e-5)
    plain = MicroBatch(ids, labels, torch.arange(2), 0, 20)
    assert plain.hard_labels is labels and plain.hard_step_tokens == 20


# ---- the loop


def test_fraction_zero_trains_exactly_as_without_the_section(tmp_path: Path, cache_dir: Path):
    common = {"train.eval_every": 2}
    run(_recipe(tmp_path / "without", cache_dir, **common))
    run(_recipe(tmp_path / "zero", cache_dir, **common, **{
        "on_policy.fraction": 0, "on_policy.temperature": 0.3, "on_policy.top_p": 0.5,
        "on_policy.prompt_tokens": 3}))
    assert _rows(tmp_path / "zero") == _rows(tmp_path / "without")
    assert not any("generated_tokens" in row for row in _rows(tmp_path / "zero"))
    fingerprints = [json.loads((tmp_path / name / "run_fingerprint.json").read_text())["recipe"]
                    for name in ("without", "zero")]
    assert fingerprints[0] == fingerprints[1]


def test_an_on_policy_run_logs_its_figures_and_resumes_exactly(tmp_path: Path, cache_dir: Path):
    """A fraction rising from 0 to 1 over 6 steps, with a codistilled teacher (it learns the
    data positions, grades the samples); killed after step 3 and resumed: the same end."""
    extra = {"on_policy.fraction": "{kind: linear, start: 0.0, end: 1.0}",
             "train.max_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 3}
    full = tmp_path / "full"
    run(_recipe(full, cache_dir, **extra))
    rows = _train_rows(full)
    assert [row["step"] for row in rows] == list(range(1, 7))
    tokens_before = 0
    for row in rows:
        fraction = (row["step"] - 1) / 6                   # linear, 0 at step 0, 1 at step 6
        assert row["on_policy_fraction"] == pytest.approx(fraction)
        generated_rows = math.floor(fraction * 4 + 0.5)     # of the step's 4 rows
        if generated_rows == 0:
            assert row["generated_tokens"] == 0 and row["mean_generated_length"] == 0
        else:
            assert 0 < row["mean_generated_length"] <= 16
            assert row["generated_tokens"] == pytest.approx(
                row["mean_generated_length"] * generated_rows)
        # each generated row has 7 prompt targets and its sampled ones instead of 32
        step_tokens = (4 - generated_rows) * 32 + 7 * generated_rows + row["generated_tokens"]
        assert row["tokens"] - tokens_before == step_tokens
        tokens_before = row["tokens"]
        assert row["teacher_ce"] > 0 and math.isfinite(row["loss"])
    timed = [r for r in read_metrics(full / "metrics.jsonl") if r.get("generated_tokens")]
    assert timed and all(r["generation_tokens_per_s"] > 0 for r in timed)

    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    shutil.rmtree(partial / "checkpoints" / "step-00000006")
    shutil.rmtree(partial / "student")
    shutil.rmtree(partial / "teacher")
    run(_recipe(partial, cache_dir, **extra), resume=True)
    assert _val_losses(partial)[-1] == pytest.approx(_val_losses(full)[-1], rel=1e-6)
    resumed = _train_rows(partial)
    assert [r["generated_tokens"] for r in resumed] == [r["generated_tokens"] for r in rows]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_one_by_eight_equals_eight_by_one_with_on_policy_on(tmp_path: Path, cache_dir: Path):
    # The router's load-balancing loss is computed per micro-batch (as transformers does),
    # so it alone depends on the split: off here, to compare what the split must not change.
    common = {"on_policy.fraction": 0.5, "train.max_steps": 3, "train.eval_every": 0,
              "train.warmup_steps": 1, "loss.router_aux_weight": 0.0}
    run(_recipe(tmp_path / "one", cache_dir, **common, **{"train.micro_batch_size": 8}))
    run(_recipe(tmp_path / "eight", cache_dir, **common, **{"train.micro_batch_size": 1,
                                                            "train.grad_accum_steps": 8}))
    one, eight = _train_rows(tmp_path / "one"), _train_rows(tmp_path / "eight")
    assert [r["generated_tokens"] for r in one] == [r["generated_tokens"] for r in eight]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in eight]
    assert all(r["generated_tokens"] > 0 for r in one)
    assert _val_losses(tmp_path / "eight") == pytest.approx(_val_losses(tmp_path / "one"),
                                                            rel=1e-5)


@pytest.fixture(scope="module")
def frozen_teacher(tmp_path_factory, cache_dir) -> Path:
    """A tiny model saved with its tokenizer (a 2-step run without teacher): an hf teacher."""
    out = tmp_path_factory.mktemp("teacher")
    run(load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "teacher.kind": "none", "train.max_steps": 2, "train.checkpoint_every": 0,
        "train.eval_every": 0})))
    return out / "student"


def test_prefetch_never_draws_a_generating_step_ahead(frozen_teacher: Path, tmp_path: Path,
                                                      cache_dir: Path, monkeypatch):
    """With prefetch on, a step drawn early would be generated by the student before the
    step ahead of it updated it: the loop draws such a step in its turn, so prefetch on
    and off sample from the same weights and train alike (the fraction is 0 for steps 0-1,
    0.5 for steps 2-3)."""
    from distill.steps import draws_ahead

    seen: list[tuple[int, float]] = []  # (step, the student's weights) at each generation
    rewrite = Rollouts.rewrite

    def recording(self, lm, step, rows, rank, world_size):
        parts, stats = rewrite(self, lm, step, rows, rank, world_size)
        if stats.rows:
            weights = sum(float(p.detach().double().abs().sum()) for p in lm.parameters())
            seen.append((step, weights))
        return parts, stats

    monkeypatch.setattr(Rollouts, "rewrite", recording)
    common = {"teacher.kind": "hf", "teacher.hf.name_or_path": str(frozen_teacher),
              "data.tokenizer": str(frozen_teacher), "train.eval_every": 2,
              "on_policy.fraction": "{kind: step, start: 0.0, end: 1.0, stages: 2}"}
    runs, weights = {}, {}
    for mode in ("on", "off"):
        seen.clear()
        recipe = _recipe(tmp_path / mode, cache_dir, **common, **{"teacher.prefetch": mode})
        run(recipe)
        runs[mode], weights[mode] = _rows(tmp_path / mode), list(seen)
    assert [step for step, _ in weights["on"]] == [2, 3]
    assert weights["on"] == weights["off"]  # the same weights wrote the same steps
    assert [r.get("generated_tokens") for r in runs["on"] if "loss" in r][:2] == [0, 0]
    assert all(r["generated_tokens"] > 0 for r in runs["on"] if "loss" in r and r["step"] > 2)
    assert [r["tokens"] for r in runs["on"]] == [r["tokens"] for r in runs["off"]]
    assert _val_losses(tmp_path / "on") == pytest.approx(_val_losses(tmp_path / "off"), rel=1e-5)

    rollouts = Rollouts(recipe.on_policy, 0, None, None, 64, recipe.train.max_steps)
    prefetch = SimpleNamespace(enabled=True)
    assert [draws_ahead(prefetch, rollouts, s, 4, 4) for s in range(1, 5)] == \
        [True, False, False, False]
    assert draws_ahead(prefetch, None, 1, 4, 4)
    assert not draws_ahead(SimpleNamespace(enabled=False), None, 1, 4, 4)


def test_a_served_teacher_grades_the_samples_as_the_same_model_in_process_does(
        teacher_server: str, finished_run: Path, tmp_path: Path, cache_dir: Path):
    """Every row written by the student (fraction 1): the served teacher's top-k at the
    whole vocabulary, with the log-probabilities of the sampled tokens, trains the student
    as the same model run in process (`hf`) does."""
    model = str(finished_run / "student")
    common = {"data.tokenizer": model, "on_policy.fraction": 1.0, "train.max_steps": 3,
              "train.eval_every": 0, "train.warmup_steps": 1}
    run(_recipe(tmp_path / "served", cache_dir, **common, **{
        "teacher.kind": "served", "teacher.served.urls": f"[{teacher_server}]",
        "teacher.served.top_k": 512, "teacher.served.batch_size": 2}))
    run(_recipe(tmp_path / "hf", cache_dir, **common, **{
        "teacher.kind": "hf", "teacher.hf.name_or_path": model}))
    served, hf = _train_rows(tmp_path / "served"), _train_rows(tmp_path / "hf")
    assert [r["generated_tokens"] for r in served] == [r["generated_tokens"] for r in hf]
    assert all(r["generated_tokens"] > 0 for r in served)
    assert [r["kd"] for r in served] == pytest.approx([r["kd"] for r in hf], rel=1e-4)
    assert _val_losses(tmp_path / "served") == pytest.approx(_val_losses(tmp_path / "hf"),
                                                             rel=1e-5)


def test_two_processes_generate_their_own_rows_and_match_one(tmp_path: Path, cache_dir: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = {"on_policy.fraction": 0.5, "train.max_steps": 3, "train.eval_every": 0,
              "train.warmup_steps": 1}
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "distill",
         "run", QUICKSTART, *tiny_overrides(ddp, cache_dir, **SHORT, **common,
                                            **{"train.micro_batch_size": 2,
                                               "train.checkpoint_every": 0})],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    run(_recipe(tmp_path / "single", cache_dir, **common, **{"train.micro_batch_size": 4}))
    two, one = _train_rows(ddp), _train_rows(tmp_path / "single")
    assert [r["generated_tokens"] for r in two] == [r["generated_tokens"] for r in one]
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    assert all(r["generated_tokens"] > 0 for r in two)
    assert _val_losses(ddp) == pytest.approx(_val_losses(tmp_path / "single"), rel=1e-4)


# ---- distill compare


def test_compare_keeps_a_live_teacher_when_a_variant_samples(tmp_path: Path):
    _, variants = plan(str(REPO / "recipes" / "compare_on_policy.yaml"), [])
    assert {v.recipe.teacher.kind for v in variants} == {"hf"}
    assert [v.recipe.on_policy.fraction.start for v in variants] == [0.0, 0.5, 1.0, 0.0]
    # the same comparison without a sampling variant caches its teacher, as before
    data = {"output_dir": str(tmp_path / "c"), "teacher": {"kind": "hf",
                                                          "hf": {"name_or_path": "t"}},
            "data": {"tokenizer": "t"},
            "compare": {"variants": [{"name": "a", "overrides": {"loss.soft_weight": 0.2}},
                                     {"name": "b", "overrides": {"on_policy": {"fraction": 0}}}]}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(data))
    assert {v.recipe.teacher.kind for v in plan(str(recipe), [])[1]} == {"cached"}
    data["compare"]["variants"][1]["overrides"] = {"on_policy": {"fraction": 0.25}}
    recipe.write_text(json.dumps(data))
    assert {v.recipe.teacher.kind for v in plan(str(recipe), [])[1]} == {"hf"}
