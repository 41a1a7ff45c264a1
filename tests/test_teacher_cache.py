"""The teacher cache does only the work a run needs: it computes the blocks the run reads
(no others), grows when a later run reads more, says where and how much it writes, refuses
a disk that cannot hold it, can live under output_dir; and a teacher the loss weights by 0
throughout is not built at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.build import blocks_read
from distill.teacher_use import unused_teacher_reason
from distill.config import TrainConfig
from distill.data import BlockOrder
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from teachers import CachedTeacher, HFTeacher
from tests.conftest import QUICKSTART, tiny_overrides, untimed

# Fields of a metrics row that measure the machine, not the training.


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 0, "train.eval_every": 0,
        "data.max_chars": 30_000, **extra}))


def _cached(teacher_run: Path, cache: Path, **extra) -> dict:
    teacher_dir = str(teacher_run / "student")
    return {"teacher.kind": "cached", "teacher.hf.name_or_path": teacher_dir,
            "data.tokenizer": teacher_dir, "teacher.cached.top_k": 8,
            "teacher.cached.cache_dir": str(cache), **extra}


@pytest.fixture
def teacher_rows(monkeypatch) -> list[int]:
    """Sequences the teacher model is run on (each call's batch size), by any fill."""
    rows: list[int] = []
    real = HFTeacher.answer

    def counting(self, input_ids, hidden):
        rows.append(int(input_ids.shape[0]))
        return real(self, input_ids, hidden)

    monkeypatch.setattr(HFTeacher, "answer", counting)
    return rows


@pytest.fixture
def blocks_trained_on(monkeypatch) -> set[int]:
    """The training blocks a cached teacher answered for during runs."""
    seen: set[int] = set()
    real = CachedTeacher.outputs

    def recording(self, batch):
        seen.update(int(i) for i in batch.block_indices)
        return real(self, batch)

    monkeypatch.setattr(CachedTeacher, "outputs", recording)
    return seen


def _cached_blocks(cache: Path) -> list[int]:
    """Every block id the cache's shards hold (with repeats, if any)."""
    return [int(b) for shard in sorted(cache.glob("*/shard-*"))
            for b in np.load(shard / "blocks.npy")]


def _rows(out: Path) -> list[dict]:
    return untimed(read_metrics(out / "metrics.jsonl"))


# ---- which blocks a run reads


def _per_process_replay(num_blocks: int, train: TrainConfig, seed: int, world: int) -> list[int]:
    """Each process's BlockOrder from a fresh state, micro-batch by micro-batch, as the
    loop draws them; first reads in order (position by position, process by process)."""
    orders = [BlockOrder(num_blocks, train.micro_batch_size, seed, rank, world)
              for rank in range(world)]
    first: list[int] = []
    for _ in range(train.max_steps * train.grad_accum_steps):
        for order in orders:
            for block in order.next_indices().tolist():
                if block not in first:
                    first.append(block)
    return first


@pytest.mark.parametrize("num_blocks, micro, accum, steps, world", [
    (50, 2, 1, 3, 1), (50, 2, 3, 4, 2), (37, 3, 2, 5, 3), (20, 4, 1, 30, 2)])
def test_blocks_read_are_every_micro_batch_of_every_step_and_process(num_blocks, micro, accum,
                                                                     steps, world):
    train = TrainConfig(max_steps=steps, micro_batch_size=micro, grad_accum_steps=accum)
    got = blocks_read(num_blocks, train, seed=7, num_processes=world).tolist()
    assert got == _per_process_replay(num_blocks, train, 7, world)
    assert len(set(got)) == len(got)


def test_a_run_that_covers_every_block_reads_them_all():
    # 12 blocks, 2 x 2 per position: 3 positions per epoch; 3 steps read the whole epoch
    train = TrainConfig(max_steps=3, micro_batch_size=2)
    assert sorted(blocks_read(12, train, seed=0, num_processes=2).tolist()) == list(range(12))


# ---- filling only what is read, and growing


def test_the_cache_computes_only_the_blocks_the_run_reads(finished_run, tmp_path, cache_dir,
                                                          teacher_rows, blocks_trained_on,
                                                          capsys):
    cache = tmp_path / "cache"
    run(_recipe(tmp_path / "run", cache_dir, **_cached(finished_run, cache)))
    out, err = capsys.readouterr()
    # 4 steps x 1 micro-batch x 4 sequences x 1 process: 16 blocks, each computed once
    assert sum(teacher_rows) == 16
    assert sorted(_cached_blocks(cache)) == sorted(blocks_trained_on)
    assert len(blocks_trained_on) == 16
    # the size line, before the fill: 16 blocks x (32 positions x (8 x 8 + 4) bytes + 8)
    # plus one shard's headers (4 x 128 + 4096 bytes)
    size = 16 * (32 * 8 * 8 + 32 * 4 + 8) + 4 * 128 + 4096
    assert "for 16 of " in out and f"(the run reads 16; 0 already cached): " \
        f"{size / 1000:.2f} kB to write" in out, out
    written = sum(f.stat().st_size for f in cache.glob("*/shard-*/*.npy"))
    assert written <= size
    assert "teacher cache: 100%" in err and "16/16" in err  # the progress bar


def _num_blocks(recipe) -> int:
    from distill.corpus import load_corpus
    from distill.data import prepare_data

    return len(prepare_data(recipe.data, load_corpus(recipe.data)).train)


def test_a_later_run_adds_only_the_blocks_it_lacks_and_trains_as_from_a_fresh_cache(
        finished_run, tmp_path, cache_dir, teacher_rows, monkeypatch, capsys):
    from teachers import cache_shards

    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path / "four", cache_dir, **_cached(finished_run, cache))
    num_blocks = _num_blocks(recipe)
    run(recipe)
    first = set(_cached_blocks(cache))
    teacher_rows.clear()
    # More steps: only the blocks of steps 4..9 that steps 0..3 did not read
    monkeypatch.setattr(cache_shards, "SHARD_BYTES", 20 * 2184)  # several shards per fill
    run(_recipe(tmp_path / "ten", cache_dir, **_cached(finished_run, cache),
                **{"train.max_steps": 10}))
    ten = set(_cached_blocks(cache))
    assert sum(teacher_rows) == len(ten - first) == 24  # 40 read, 16 already there
    assert len(_cached_blocks(cache)) == len(ten)  # no block computed twice
    assert len(list(cache.glob("*/shard-*"))) == 3  # 16, then 24 in shards of <= 20
    # The grown cache (three shards) trains exactly as a fresh one filled in one go
    run(_recipe(tmp_path / "fresh", cache_dir, **_cached(finished_run, tmp_path / "fresh-cache"),
                **{"train.max_steps": 10}))
    assert _rows(tmp_path / "ten") == _rows(tmp_path / "fresh")
    # Another seed reads other blocks: it adds exactly those it lacks
    teacher_rows.clear()
    run(_recipe(tmp_path / "seed", cache_dir, **_cached(finished_run, cache),
                **{"train.max_steps": 10, "seed": 3}))
    reads = set(blocks_read(num_blocks, TrainConfig(max_steps=10, micro_batch_size=4), 3,
                            1).tolist())
    assert set(_cached_blocks(cache)) == ten | reads
    assert sum(teacher_rows) == len(reads - ten) > 0
    # The same run again (or a resumed one: steps count from 0) computes nothing and
    # never loads the teacher model
    teacher_rows.clear()
    capsys.readouterr()

    def must_not_fill(*args, **kwargs):
        raise AssertionError("a cache holding every block read must not load the teacher")

    monkeypatch.setattr(CachedTeacher, "_fill", must_not_fill)
    run(_recipe(tmp_path / "again", cache_dir, **_cached(finished_run, cache),
                **{"train.max_steps": 10, "seed": 3}))
    assert teacher_rows == []
    assert "all 40 blocks this run reads are there" in capsys.readouterr().out


def test_a_disk_too_small_is_refused_before_the_teacher_runs(finished_run, tmp_path,
                                                             cache_dir, teacher_rows,
                                                             monkeypatch):
    from collections import namedtuple

    from teachers import cache_shards

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_shards.shutil, "disk_usage",
                        lambda path: usage(10**12, 10**12 - 100 * 2**20, 100 * 2**20))
    loads = []
    monkeypatch.setattr(HFTeacher, "__init__", lambda *a, **k: loads.append(1))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"teacher.cached.cache_dir: the teacher cache needs "
                                        r"39.55 kB \(plus 268.44 MB kept free\) at .* but that "
                                        r"disk has 104.86 MB free.*fewer train.max_steps.*"
                                        r"smaller teacher.cached.top_k"):
        run(_recipe(tmp_path / "run", cache_dir, **_cached(finished_run, cache)))
    assert loads == [] and teacher_rows == []
    assert list(cache.glob("*/shard-*")) == []


def test_cache_dir_run_keeps_the_cache_under_output_dir(finished_run, tmp_path, cache_dir):
    out = tmp_path / "run"
    run(_recipe(out, cache_dir, **_cached(finished_run, "run")))
    assert len(list((out / "teacher_cache").glob("*/shard-*"))) == 1
    assert not (Path("run") / "teacher_cache").exists()


def test_compare_fills_the_union_of_its_runs_blocks_once(finished_run, tmp_path, cache_dir,
                                                         teacher_rows):
    from distill.compare import _fill_cache

    cache = tmp_path / "cache"
    recipes = [_recipe(tmp_path / f"s{seed}", cache_dir, **_cached(finished_run, cache),
                       seed=seed) for seed in (0, 1)]
    hard_only = _recipe(tmp_path / "h", cache_dir, **_cached(finished_run, cache), seed=2,
                        **{"loss.soft_weight": 0.0})
    _fill_cache([*recipes, hard_only])
    cached = set(_cached_blocks(cache))
    num_blocks = _num_blocks(recipes[0])
    union = {b for seed in (0, 1)  # each seed's 16 blocks, nothing for the hard-only run
             for b in blocks_read(num_blocks, TrainConfig(max_steps=4, micro_batch_size=4),
                                  seed, 1).tolist()}
    assert cached == union and sum(teacher_rows) == len(union)
    teacher_rows.clear()
    for recipe in recipes:  # then each run computes nothing
        run(recipe)
    assert teacher_rows == []


# ---- a teacher weighted 0 throughout


@pytest.mark.parametrize("schedule, unused", [
    ({"loss.soft_weight": 0.0}, True),
    ({"loss.soft_weight.kind": "constant", "loss.soft_weight.start": 0.0,
      "loss.soft_weight.end": 0.7}, True),                       # constant: end unused
    ({"loss.soft_weight.kind": "linear", "loss.soft_weight.start": 0.0,
      "loss.soft_weight.end": 0.0}, True),
    ({"loss.soft_weight.kind": "linear", "loss.soft_weight.start": 0.0,
      "loss.soft_weight.end": 0.3}, False),
    ({"loss.soft_weight.kind": "constant", "loss.soft_weight.start": 0.0,
      "loss.soft_weight.warmup_steps": 2, "loss.soft_weight.warmup_start": 0.5}, False),
    ({"loss.soft_weight": 0.0, "loss.adaptive": "loss_balance"}, False),
    ({"loss.soft_weight": 0.0, "on_policy.fraction": 0.5, "on_policy.prompt_tokens": 8,
      "on_policy.max_new_tokens": 8}, False),
])
def test_when_the_loss_never_reads_the_teacher(tmp_path, cache_dir, schedule, unused):
    recipe = _recipe(tmp_path, cache_dir, **{"teacher.kind": "hf",
                                             "teacher.hf.name_or_path": str(tmp_path)},
                     **schedule)
    reason = unused_teacher_reason(recipe)
    assert reason == ("loss.soft_weight is 0 for the whole run" if unused else None)


def test_a_hard_only_run_never_builds_its_teacher_and_trains_as_without_one(
        tmp_path, cache_dir, capsys):
    hard_only = {"loss.soft_weight": 0.0, "loss.router_aux_weight": 0.0}
    run(_recipe(tmp_path / "none", cache_dir, **{"teacher.kind": "none"}, **hard_only))
    capsys.readouterr()
    for kind in ("hf", "cached", "served"):  # a teacher that could not even be reached
        run(_recipe(tmp_path / kind, cache_dir, **{
            "teacher.kind": kind, "teacher.hf.name_or_path": str(tmp_path / "no-such-teacher"),
            "teacher.served.urls": ["http://127.0.0.1:9"]}, **hard_only))
        assert "teacher: not built: loss.soft_weight is 0 for the whole run" in \
            capsys.readouterr().out
        assert _rows(tmp_path / kind) == _rows(tmp_path / "none")
        card = (tmp_path / kind / "student" / "README.md").read_text()
        assert f"the {kind} teacher was not built" in card


def test_a_codistill_teacher_weighted_0_trains_but_the_student_gets_no_soft_term(
        tmp_path, cache_dir):
    run(_recipe(tmp_path / "co", cache_dir, **{"teacher.kind": "codistill",
                                               "loss.soft_weight": 0.0,
                                               "loss.router_aux_weight": 0.0}))
    co = [r for r in _rows(tmp_path / "co") if "loss" in r]
    # it trains (its own loss logged); the student's loss is its CE alone, no KD computed
    assert all(r["kd"] == 0.0 and r["teacher_ce"] > 0 for r in co)
    assert all(r["loss"] == pytest.approx(r["ce"]) for r in co)
    assert (tmp_path / "co" / "teacher").is_dir()  # the teacher it trained is saved
