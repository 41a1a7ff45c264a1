"""The tokenised-block cache: written once under a fingerprint of corpus, tokenizer and
block size, memory-mapped afterwards; a second run neither reads nor tokenises the corpus."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from conftest import QUICKSTART, TINY_MODEL, run_cli
from distill import blocks as blocks_module
from distill import corpus as corpus_module
from distill import data as data_module
from distill.blocks import encode_documents, text_pieces
from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.data import data_summary, pack, prepare_data, split_block
from distill.fingerprint import built_fingerprint


def _corpus_dir(root: Path, files: int = 30, lines: int = 8) -> Path:
    for i in range(files):
        folder = root / ("x" if i % 2 else "y/z")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.rst").write_text("".join(
            f"Line {j} of document {i}: the student learns from the teacher.\n"
            for j in range(lines)))
    return root


def _cfg(root: Path, cache: Path, **extra) -> DataConfig:
    values = {"source": "files", "files": [str(root / "**/*.rst")], "vocab_size": 300,
              "block_size": 16, "validation_fraction": 0.2, "cache_dir": str(cache), **extra}
    return DataConfig(**values)


def _stream(tokenizer, texts: list[str]) -> list[int]:
    """The packed stream, computed here directly: each document's ids, then end-of-text."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


def _blocks(stream: list[int], block_size: int) -> list[list[int]]:
    count = (len(stream) - 1) // block_size
    return [stream[i * block_size: i * block_size + block_size + 1] for i in range(count)]


def test_blocks_are_the_packed_documents_memory_mapped(tmp_path):
    cfg = _cfg(_corpus_dir(tmp_path / "corpus"), tmp_path / "cache")
    corpus = load_corpus(cfg)
    packed = prepare_data(cfg, corpus)
    train_stream = _stream(packed.tokenizer, corpus.train)
    validation_stream = _stream(packed.tokenizer, corpus.validation)
    assert packed.train.tolist() == _blocks(train_stream, 16)
    assert packed.validation.tolist() == _blocks(validation_stream, 16)
    # a view over the whole mapped file (int32), not a copy of the overlapping rows
    assert packed.train.dtype == torch.int32
    assert packed.train.untyped_storage().nbytes() == 4 * len(train_stream)
    assert (packed.cache_path / "train.bin").stat().st_size == 4 * len(train_stream)
    assert split_block(packed.train[:2])["labels"].dtype == torch.int64
    # the in-memory packing of the same documents agrees
    assert torch.equal(pack(corpus.train, packed.tokenizer, 16, "train"), packed.train.long())


def test_a_second_run_reads_neither_corpus_nor_tokenizer(tmp_path, monkeypatch, capsys):
    cfg = _cfg(_corpus_dir(tmp_path / "corpus"), tmp_path / "cache")
    first = prepare_data(cfg, load_corpus(cfg), verbose=True)
    cold = capsys.readouterr()
    assert "reading and tokenising" in cold.err  # the progress bar
    assert f"tokenised blocks cached in {first.cache_path}" in cold.out

    def must_not_run(*args, **kwargs):
        raise AssertionError("a warm start must not read or tokenise the corpus")

    monkeypatch.setattr(corpus_module, "file_documents", must_not_run)
    monkeypatch.setattr(blocks_module, "encode_documents", must_not_run)
    monkeypatch.setattr(data_module, "_train_bpe", must_not_run)
    second = prepare_data(cfg, load_corpus(cfg), verbose=True)
    warm = capsys.readouterr().out
    assert f"read from cache {first.cache_path}" in warm
    assert torch.equal(second.train, first.train)
    assert torch.equal(second.validation, first.validation)
    assert second.digests == first.digests
    # the same counts, cold or warm
    assert warm.split(" (")[0] == cold.out.strip().splitlines()[-1].split(" (")[0]


def test_a_changed_file_or_block_size_gets_new_blocks(tmp_path):
    root = _corpus_dir(tmp_path / "corpus")
    cfg = _cfg(root, tmp_path / "cache")
    first = prepare_data(cfg, load_corpus(cfg))
    changed = root / "x" / "doc1.rst"
    changed.write_text(changed.read_text() + "One more line.\n")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    second = prepare_data(cfg, load_corpus(cfg))
    assert second.cache_path != first.cache_path and "cached in" in second.summary
    other = prepare_data(_cfg(root, tmp_path / "cache", block_size=8), load_corpus(cfg))
    assert other.train.shape[1] == 9 and other.cache_path != second.cache_path


def test_summary_line_counts_documents_characters_tokens_blocks(tmp_path):
    root = _corpus_dir(tmp_path / "corpus", files=30, lines=4)
    (root / "x" / "copy.rst").write_text((root / "x" / "doc1.rst").read_text())
    (root / "x" / "empty.rst").write_text("\n")
    cfg = _cfg(root, tmp_path / "cache")
    corpus = load_corpus(cfg)
    packed = prepare_data(cfg, corpus)
    texts = corpus.train + corpus.validation
    tokens = len(_stream(packed.tokenizer, corpus.train)) + \
        len(_stream(packed.tokenizer, corpus.validation))
    characters = sum(len(t) for t in texts)
    assert len(texts) == 30 and characters < 10_000 and tokens < 10_000
    assert packed.summary == (
        f"data: 30 documents, {characters} characters, {tokens} tokens, "
        f"{len(packed.train)} train / {len(packed.validation)} validation blocks "
        f"(1 duplicate dropped; 1 empty file skipped; tokenised blocks cached in "
        f"{packed.cache_path})")


def test_summary_abbreviates_large_counts():
    stats = corpus_module.CorpusStats(documents=5838, characters=8_012_345)
    assert data_summary(stats, 2_200_000, 16430, 906, True, "read from cache C") == (
        "data: 5838 documents, 8.0M characters, 2.2M tokens, 16430 train / 906 validation "
        "blocks (read from cache C)")
    stats = corpus_module.CorpusStats(documents=12, characters=45_600, duplicates=2)
    assert data_summary(stats, 9999, 0, 7, False, "x") == (
        "data: 12 documents, 45.6k characters, 9999 tokens, 7 blocks (every document: no "
        "train/validation split) (2 duplicates dropped; x)")


def test_cached_digest_is_the_runs_fingerprint_of_the_blocks(tmp_path):
    cfg = _cfg(_corpus_dir(tmp_path / "corpus"), tmp_path / "cache")
    packed = prepare_data(cfg, load_corpus(cfg))
    for split in ("train", "validation"):
        rows = np.asarray(getattr(packed, split).tolist(), dtype=np.int64)  # (blocks, 17)
        assert packed.digests[split] == hashlib.sha256(rows.tobytes()).hexdigest()[:16]

    class Config:
        def to_dict(self):
            return {"hidden_size": 8}

    stored = built_fingerprint(packed.tokenizer, packed.train, packed.validation, Config(),
                               {}, packed.digests)
    recomputed = built_fingerprint(packed.tokenizer, packed.train, packed.validation,
                                   Config(), {})
    assert stored == recomputed


def test_text_pieces_cut_long_documents_at_whitespace():
    text = " ".join(f"word{i}" for i in range(2000))  # 17.9k characters, one line
    pieces = list(text_pieces(text, limit=1000))
    assert "".join(pieces) == text and all(len(p) <= 1000 for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])  # cut before a space
    assert list(text_pieces("x" * 2500, limit=1000)) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_a_long_document_is_tokenised_in_pieces_to_the_same_ids(tmp_path, monkeypatch):
    cfg = _cfg(_corpus_dir(tmp_path / "corpus"), tmp_path / "cache")
    tokenizer = prepare_data(cfg, load_corpus(cfg)).tokenizer
    text = " ".join(f"teacher{i % 97} student{i % 13}" for i in range(3000))  # one line
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    calls: list[int] = []

    def recording(texts, **kwargs):
        calls.extend(len(t) for t in texts)
        return tokenizer(texts, **kwargs)

    monkeypatch.setattr(blocks_module, "PIECE_CHARS", 5000)
    monkeypatch.setattr(blocks_module, "_BATCH_CHARS", 5000)

    class Recording:
        eos_token_id = tokenizer.eos_token_id
        __call__ = staticmethod(recording)

    ids = np.concatenate([piece for _, piece in encode_documents(Recording(), [(False, text)])])
    assert ids.tolist() == whole
    assert len(calls) > 1 and max(calls) <= 5000  # the tokenizer never saw it whole


def test_rst_folder_trains_through_a_recursive_glob_and_restarts_from_cache(tmp_path):
    """The issue's acceptance, through the CLI: a nested folder of multi-line .rst files,
    one document per file, counted in the summary line; a second run reads the cache."""
    root = _corpus_dir(tmp_path / "corpus", files=30)
    overrides = [f"data.cache_dir={tmp_path / 'cache'}", "data.source=files",
                 f"data.files=[{root}/**/*.rst]", "data.max_chars=null", "data.block_size=16",
                 "data.vocab_size=300", "teacher.kind=none", "train.max_steps=1",
                 "train.micro_batch_size=2", "train.eval_every=0", "train.eval_batches=1",
                 "train.checkpoint_every=0", *[f"student.overrides.{k}={v}"
                                               for k, v in TINY_MODEL.items()]]
    first = run_cli("run", QUICKSTART, f"output_dir={tmp_path / 'one'}", *overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    line = re.search(r"^data: 30 documents, [\d.k]+ characters, \d+ tokens, \d+ train / \d+ "
                     r"validation blocks \(tokenised blocks cached in (.+)\)$",
                     first.stdout, re.M)
    assert line, first.stdout
    second = run_cli("run", QUICKSTART, f"output_dir={tmp_path / 'two'}", *overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"(read from cache {line.group(1)})" in second.stdout
    assert "reading and tokenising" not in second.stderr
