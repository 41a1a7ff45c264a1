"""Teachers: frozen hf, cached top-k on disk, codistillation with mutual learning and
snapshots; the shared-vocabulary checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import students
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from teachers import CachedTeacher
from teachers.codistill import CodistillTeacher
from tests.conftest import QUICKSTART, TINY_MODEL, tiny_overrides


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 0, "train.eval_every": 0, **extra}))


def _val_losses(out: Path) -> list[float]:
    return [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]


def test_cached_teacher_is_filled_once_reused_and_equals_the_live_teacher(
        finished_run: Path, tmp_path: Path, cache_dir: Path, monkeypatch):
    teacher_dir = str(finished_run / "student")
    common = {"teacher.hf.name_or_path": teacher_dir, "data.tokenizer": teacher_dir,
              "teacher.cached.cache_dir": str(tmp_path / "teacher-cache")}
    run(_recipe(tmp_path / "live", cache_dir, **{"teacher.kind": "hf", **common}))
    # k = vocabulary: the cached top-k plus an empty tail is the full distribution
    run(_recipe(tmp_path / "cached", cache_dir, **{"teacher.kind": "cached",
                                                   "teacher.cached.top_k": 512, **common}))
    assert _val_losses(tmp_path / "cached") == pytest.approx(_val_losses(tmp_path / "live"),
                                                             rel=1e-4)
    caches = [p for p in (tmp_path / "teacher-cache").iterdir() if not p.name.startswith(".")]
    (shard,) = caches[0].glob("shard-*")
    assert len(caches) == 1 and (shard / "meta.json").is_file()
    log_probs = np.load(shard / "log_probs.npy", mmap_mode="r")
    assert log_probs.shape[-1] == 512

    def must_not_fill(self, *args):
        raise AssertionError("a valid cache must be reused, not refilled")

    def must_not_load(*args, **kwargs):
        raise AssertionError("a run over a valid cache must never construct the teacher model")

    # Loading a pretrained teacher in any way goes through this (the student is built from
    # its config); before the teacher contract, a valid cache still loaded the teacher.
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(CachedTeacher, "_fill", must_not_fill)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_load)
    run(_recipe(tmp_path / "again", cache_dir, **{"teacher.kind": "cached",
                                                  "teacher.cached.top_k": 512,
                                                  "student.init": "random", **common}))
    assert _val_losses(tmp_path / "again") == _val_losses(tmp_path / "cached")


def test_two_runs_filling_one_cache_at_once_both_train(finished_run: Path, tmp_path: Path,
                                                       cache_dir: Path, monkeypatch):
    """Two parallel runs over the same teacher and data both fill; the second to finish
    finds the first's cache in place. It used to fail on the rename ("Directory not
    empty"); now it drops its own copy and reads the first's."""
    import teachers.cached as cached_module

    teacher_dir = str(finished_run / "student")
    common = {"teacher.kind": "cached", "teacher.hf.name_or_path": teacher_dir,
              "data.tokenizer": teacher_dir, "teacher.cached.cache_dir": str(tmp_path / "tc")}
    run(_recipe(tmp_path / "first", cache_dir, **common))
    cache = next(p for p in (tmp_path / "tc").iterdir() if not p.name.startswith("."))
    (shard,) = cache.glob("shard-*")  # the same blocks make the same shard name
    finished = tmp_path / "finished-elsewhere"
    shutil.copytree(shard, finished)
    shutil.rmtree(cache)  # the second run starts while the cache is absent...
    real_replace = cached_module.cache_shards.os.replace

    def other_process_finishes_first(source, target):
        if Path(target) == shard:  # (os.replace is the os module's: leave other renames be)
            shutil.copytree(finished, target)  # ...and the other process renames first
        return real_replace(source, target)

    monkeypatch.setattr(cached_module.cache_shards.os, "replace", other_process_finishes_first)
    run(_recipe(tmp_path / "second", cache_dir, **common))
    assert _val_losses(tmp_path / "second") == _val_losses(tmp_path / "first")
    assert [p.name for p in (tmp_path / "tc").iterdir()] == [cache.name]
    assert [p.name for p in cache.iterdir()] == [shard.name]  # no staging left


def test_a_student_initialised_from_a_cached_teacher_loads_its_weights(
        finished_run: Path, tmp_path: Path, cache_dir: Path, monkeypatch):
    from transformers import AutoModelForCausalLM

    teacher_dir = str(finished_run / "student")
    loaded = []
    real_load = AutoModelForCausalLM.from_pretrained.__func__

    def recording_load(cls, name_or_path, *args, **kwargs):
        loaded.append(str(name_or_path))
        return real_load(cls, name_or_path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording_load))
    out = tmp_path / "init"
    run(_recipe(out, cache_dir, **{
        "teacher.kind": "cached", "teacher.hf.name_or_path": teacher_dir,
        "data.tokenizer": teacher_dir, "teacher.cached.top_k": 16,
        "teacher.cached.cache_dir": str(tmp_path / "cache"), "student.init": "from_teacher"}))
    assert loaded.count(teacher_dir) == 2  # once to fill the cache, once for the weights
    report = json.loads((out / "student_init.json").read_text())
    # The student has the teacher's shape (the same tiny config): everything is copied.
    assert report["skipped"] == [] and "model.embed_tokens.weight" in report["copied"]
    assert len(report["copied"]) == len(students.load_pretrained(teacher_dir).state_dict())


def test_stale_or_corrupt_cache_is_rebuilt(finished_run: Path, tmp_path: Path, cache_dir: Path):
    teacher_dir = tmp_path / "teacher"
    model = students.load_pretrained(str(finished_run / "student"))
    model.save_pretrained(teacher_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(finished_run / "student").save_pretrained(teacher_dir)
    common = {"teacher.kind": "cached", "teacher.hf.name_or_path": str(teacher_dir),
              "data.tokenizer": str(teacher_dir), "teacher.cached.top_k": 8,
              "teacher.cached.cache_dir": str(tmp_path / "cache")}
    recipe = _recipe(tmp_path / "a", cache_dir, **common)
    first = _cache_teacher(recipe)
    assert first.rebuilt
    assert not _cache_teacher(recipe).rebuilt
    # corrupt: a truncated array is detected and the cache filled again
    array = _shard(first) / "log_probs.npy"
    array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])
    assert _cache_teacher(recipe).rebuilt
    # stale: new teacher weights at the same path give a different fingerprint
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    model.save_pretrained(teacher_dir)
    changed = _cache_teacher(recipe)
    assert changed.rebuilt and changed.path != first.path


def _shard(teacher: CachedTeacher) -> Path:
    """The one shard of a cache filled in one go."""
    (shard,) = teacher.path.glob("shard-*")
    return shard


def _cache_teacher(recipe) -> CachedTeacher:
    """The recipe's cached teacher, prepared (opened or filled) over its data as a run does."""
    from accelerate import Accelerator

    from distill.corpus import load_corpus
    from distill.data import prepare_data
    from teachers import Placement, TeacherSetup, build

    data = prepare_data(recipe.data, load_corpus(recipe.data))
    teacher = build(recipe.teacher, TeacherSetup(vocab_rows=len(data.tokenizer)))
    teacher.prepare(Placement(Accelerator(cpu=True), data.train,
                              train_digest=data.digests["train"]))
    return teacher


ARRAYS = ("log_probs", "indices", "log_tail", "blocks")


@pytest.fixture(scope="module")
def filled_cache(finished_run: Path, cache_dir: Path, tmp_path_factory):
    """One fill of a top-8 cache over a small corpus, kept pristine; calling the fixture's
    value with a test's tmp_path gives that test the recipe and its own copy to damage."""
    teacher_dir = str(finished_run / "student")
    common = {"teacher.kind": "cached", "teacher.hf.name_or_path": teacher_dir,
              "data.tokenizer": teacher_dir, "teacher.cached.top_k": 8,
              "data.max_chars": 30_000}  # a few hundred blocks: each rebuild is quick
    root = tmp_path_factory.mktemp("pristine-cache")
    _cache_teacher(_recipe(root / "run", cache_dir, **common,
                           **{"teacher.cached.cache_dir": str(root / "cache")}))

    def copy_for(tmp_path: Path):
        shutil.copytree(root / "cache", tmp_path / "cache")
        recipe = _recipe(tmp_path / "run", cache_dir, **common,
                         **{"teacher.cached.cache_dir": str(tmp_path / "cache")})
        (path,) = (tmp_path / "cache").glob("*/shard-*")  # one fill: one shard
        return recipe, path

    return copy_for


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {name: np.load(path / f"{name}.npy") for name in ARRAYS}


def _rewrite(path: Path, name: str, rows, values) -> None:
    """Change an array file in place, as a faulty disk or tool would: same shape, dtype."""
    array = np.lib.format.open_memmap(path / f"{name}.npy", "r+")
    array[rows] = values
    array.flush()


def _swap_first_two_blocks(path: Path) -> None:
    """Rows 0 and 1 trade places in every output array (blocks.npy still says which block
    each row is): each row is still a valid distribution, but its block would be trained
    on the other's targets."""
    for name in ARRAYS[:3]:
        _rewrite(path, name, [0, 1], np.load(path / f"{name}.npy", mmap_mode="r")[[1, 0]])


def _assert_rebuilt(teacher: CachedTeacher, first: dict, said: str, capsys) -> None:
    out = capsys.readouterr().out
    shard = _shard(teacher)  # the same blocks again: the same shard name
    assert teacher.rebuilt
    assert f"teacher cache {shard} failed its check ({said}" in out, out
    assert "removing it: its blocks are computed again" in out
    for name, values in _arrays(shard).items():
        assert np.array_equal(values, first[name]), name


def test_a_cache_with_garbage_indices_is_rebuilt_as_first_filled(filled_cache, tmp_path,
                                                                  capsys):
    recipe, path = filled_cache(tmp_path)
    first = _arrays(path)
    garbage = np.random.default_rng(0).integers(-2**31, 2**31 - 1, first["indices"].shape,
                                                dtype=np.int32)
    _rewrite(path, "indices", Ellipsis, garbage)
    _assert_rebuilt(_cache_teacher(recipe), first, "indices.npy: token id", capsys)


def test_a_cache_with_zeroed_log_probs_is_rebuilt(filled_cache, tmp_path, capsys):
    recipe, path = filled_cache(tmp_path)
    first = _arrays(path)
    _rewrite(path, "log_probs", Ellipsis, 0.0)
    # 8 probabilities of 1 plus the tail: the sum is the first thing that fails
    _assert_rebuilt(_cache_teacher(recipe), first, "log_probs.npy, log_tail.npy: top-k and "
                    "tail probabilities sum to", capsys)


def test_valid_looking_rows_in_the_wrong_place_fail_the_checksum(filled_cache, tmp_path,
                                                                 capsys):
    recipe, path = filled_cache(tmp_path)
    first = _arrays(path)
    meta = json.loads((path / "meta.json").read_text())
    for name in ARRAYS:  # the recorded checksum is the file's own sha256
        digest = hashlib.sha256((path / f"{name}.npy").read_bytes()).hexdigest()
        assert meta["files"][f"{name}.npy"]["sha256"] == digest
    _swap_first_two_blocks(path)
    _assert_rebuilt(_cache_teacher(recipe), first, "log_probs.npy: checksum mismatch",
                    capsys)


def test_a_large_cache_is_hashed_again_only_when_its_files_change(filled_cache, tmp_path,
                                                                  capsys, monkeypatch):
    from teachers import cache_files

    monkeypatch.setattr(cache_files, "FULL_CHECK_BYTES", 0)  # this cache counts as large
    whole_passes = []
    real_pass = cache_files._whole_pass
    monkeypatch.setattr(cache_files, "_whole_pass",
                        lambda *args: whole_passes.append(1) or real_pass(*args))
    recipe, path = filled_cache(tmp_path)
    first = _arrays(path)
    # A copied cache (new files) gets the whole pass once, and it is recorded
    assert not _cache_teacher(recipe).rebuilt and len(whole_passes) == 1
    assert (path / "verified.json").is_file()
    # ... so the next open only samples its content
    assert not _cache_teacher(recipe).rebuilt and len(whole_passes) == 1
    # A write moves the file's ctime (sleep past the clock's tick): the whole pass again
    time.sleep(0.05)
    _swap_first_two_blocks(path)
    _assert_rebuilt(_cache_teacher(recipe), first, "log_probs.npy: checksum mismatch",
                    capsys)
    assert len(whole_passes) == 3  # the failed open, then the read-back of the new fill


@pytest.mark.parametrize("top, ids, tail, said", [
    ([0.5, 0.25], [3, 0], 0.25, None),                # a valid position
    ([0.5, 0.5], [1, 2], 0.0, None),                  # k = vocabulary: no tail (-inf)
    ([0.5, 0.25], [4, 0], 0.25, "indices.npy"),       # id == vocabulary limit
    ([0.5, 0.25], [-1, 0], 0.25, "indices.npy"),
    ([float("nan"), 0.25], [3, 0], 0.25, "log_probs.npy: a value that is not finite"),
    ([2.0, 0.25], [3, 0], 0.25, "log_probs.npy: log-probability"),
    ([0.5, 0.25], [3, 0], 2.0, "log_tail.npy"),
    ([1.0, 1.0], [3, 0], 0.25, "sum to 2.25"),        # a zeroed log_probs.npy
    ([0.5, 0.25], [3, 0], 0.0, "sum to 0.75"),        # a tail lost
])
def test_content_checks_of_one_position(top, ids, tail, said):
    from teachers.cache_files import content_problem

    with np.errstate(divide="ignore"):  # log 0 = -inf: an empty tail
        log_probs = np.log(np.array([[top]], dtype=np.float32))  # (1 block, 1 position, k=2)
        log_tail = np.log(np.array([[tail]], dtype=np.float32))
    problem = content_problem(log_probs, np.array([[ids]], dtype=np.int32), log_tail, 4)
    assert problem is None if said is None else said in problem, problem


def test_codistill_mutual_and_snapshot_run_and_resume(tmp_path: Path, cache_dir: Path):
    extra = {"teacher.codistill.mutual_weight": 0.5, "teacher.codistill.snapshot_every": 3,
             "train.max_steps": 6, "train.checkpoint_every": 3}
    run(_recipe(tmp_path / "full", cache_dir, **extra))
    rows = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert all(r["teacher_kd"] > 0 and r["teacher_ce"] > 0 for r in rows)
    # resuming from the step-3 checkpoint (snapshot, live teacher, optimizers) matches
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", partial)
    shutil.rmtree(partial / "checkpoints" / "step-00000006")
    shutil.rmtree(partial / "student")
    run(_recipe(partial, cache_dir, **extra), resume=True)
    assert _val_losses(partial)[-1] == pytest.approx(_val_losses(tmp_path / "full")[-1],
                                                     rel=1e-6)


def test_snapshot_refreshes_every_n_steps():
    from teachers import TeacherSetup

    config = students.model_config("scout-tiny", TINY_MODEL, vocab_size=30)
    model = students.build_model(config)

    def sgd(model, lr):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    teacher = CodistillTeacher(model, TeacherSetup(vocab_rows=30, make_optimizer=sgd), lr=0.1,
                               snapshot_every=2)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    teacher.refresh_snapshot(1)
    assert not torch.equal(teacher.snapshot.lm_head.weight, model.lm_head.weight)
    teacher.refresh_snapshot(2)
    assert torch.equal(teacher.snapshot.lm_head.weight, model.lm_head.weight)


def _save_teacher(path: Path, vocab: int, tokenizer_from: Path | None = None) -> Path:
    config = students.model_config("scout-tiny", TINY_MODEL, vocab_size=vocab, eos_token_id=0)
    students.build_model(config).save_pretrained(path)
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    return path


def test_padded_teacher_vocabulary_is_handled(finished_run: Path, tmp_path: Path, cache_dir):
    # 520 rows for a 512-token tokenizer: the padding rows are ignored
    teacher = _save_teacher(tmp_path / "padded", 520, finished_run / "student")
    result = run(_recipe(tmp_path / "run", cache_dir, **{
        "teacher.kind": "hf", "teacher.hf.name_or_path": str(teacher),
        "data.tokenizer": str(teacher)}))
    assert result.final_val_loss < result.first_val_loss


def test_vocabulary_mismatches_are_refused_before_training(finished_run, tmp_path, cache_dir):
    small = _save_teacher(tmp_path / "small", 300)
    with pytest.raises(UserError, match="teacher's output head has 300 rows but the tokenizer "
                                        "has 512 tokens"):
        run(_recipe(tmp_path / "a", cache_dir, **{"teacher.kind": "hf",
                                                  "teacher.hf.name_or_path": str(small)}))
    # same size, different tokenizer: the data's trained BPE is not the teacher's
    other = _save_teacher(tmp_path / "other", 512, finished_run / "student")
    with pytest.raises(UserError, match="teacher's tokenizer .* differs from the data's"):
        run(_recipe(tmp_path / "b", cache_dir, **{"teacher.kind": "hf",
                                                  "teacher.hf.name_or_path": str(other),
                                                  "data.vocab_size": 511}))
    # same size, no tokenizer files: which token each row is cannot be known, so no guess
    bare = _save_teacher(tmp_path / "bare", 512)
    for kind in ("hf", "cached"):
        with pytest.raises(UserError, match=f"the teacher {bare} has no tokenizer files, so "
                                            "whether its vocabulary is the data's"):
            run(_recipe(tmp_path / f"c-{kind}", cache_dir, **{
                "teacher.kind": kind, "teacher.hf.name_or_path": str(bare),
                "teacher.cached.cache_dir": str(tmp_path / "cache")}))
        assert not (tmp_path / f"c-{kind}" / "metrics.jsonl").exists()


def test_a_teacher_path_that_does_not_exist_is_named(tmp_path: Path, cache_dir: Path):
    missing = tmp_path / "no" / "such" / "teacher"
    for kind in ("hf", "cached"):
        with pytest.raises(UserError, match=rf"teacher.hf.name_or_path: could not load "
                                            rf"'{missing}': it does not exist"):
            run(_recipe(tmp_path / kind, cache_dir, **{"teacher.kind": kind,
                                                       "teacher.hf.name_or_path": str(missing)}))


def test_teacher_none_pretrains_hard_targets_only(tmp_path: Path, cache_dir: Path):
    # (the quickstart's router load-balancing term is off: the loss is then the CE alone)
    result = run(_recipe(tmp_path / "pre", cache_dir, **{"teacher.kind": "none",
                                                          "loss.soft_weight": 0.0,
                                                          "loss.router_aux_weight": 0.0}))
    rows = [r for r in read_metrics(tmp_path / "pre" / "metrics.jsonl") if "loss" in r]
    assert all(r["kd"] == 0.0 and r["loss"] == pytest.approx(r["ce"]) for r in rows)
    assert result.final_val_loss < result.first_val_loss


def test_hf_teacher_loads_the_text_model_of_a_multimodal_llama4_checkpoint(tmp_path: Path):
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    from teachers import HFTeacher

    text = {**students.PRESETS["scout-tiny"], **TINY_MODEL, "vocab_size": 64,
            "bos_token_id": None, "eos_token_id": 0, "pad_token_id": None}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "vision_output_dim": 32, "image_size": 28,
              "patch_size": 14, "projector_input_dim": 32, "projector_output_dim": 32}
    full = Llama4ForConditionalGeneration(Llama4Config(
        text_config=text, vision_config=vision, boi_token_index=60, eoi_token_index=61,
        image_token_index=62))
    full.save_pretrained(tmp_path / "llama4")
    teacher = HFTeacher(str(tmp_path / "llama4"), vocab_rows=64)
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        expected = full(input_ids=ids).logits
    torch.testing.assert_close(teacher.answer(ids, hidden=False).logits, expected)
    states = teacher.answer(ids, hidden=True)
    torch.testing.assert_close(states.hidden @ states.head.t(), expected, rtol=1e-4, atol=1e-5)
