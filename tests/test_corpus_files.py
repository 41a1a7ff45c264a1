"""Corpora as users have them: nested folders of any plain-text format, whole files or lines
as documents, duplicates, the split by document, and bad files named with their line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.corpus_files import check_options, resolve_files
from distill.errors import UserError


def _rst_tree(root: Path, count: int = 12) -> dict[str, str]:
    """A nested folder of multi-line .rst files (plus files that are not .rst); returns
    each .rst file's path -> text."""
    texts = {}
    for i in range(count):
        folder = root / ("a" if i % 3 == 0 else "a/b" if i % 3 == 1 else "c/d/e")
        folder.mkdir(parents=True, exist_ok=True)
        text = f"Title {i}\n========\n\nFirst paragraph of page {i}.\n\n.. note:: note {i}\n"
        (folder / f"page{i}.rst").write_text(text)
        texts[str(folder / f"page{i}.rst")] = text
    (root / "a" / "notes.txt").write_text("not an rst file\n")
    return texts


def _documents(cfg: DataConfig) -> list[str]:
    """Every document, unsplit (a corpus of one document cannot be split)."""
    corpus = load_corpus(cfg, holdout=False)
    return [text for _, text in corpus.documents()]


def test_recursive_glob_reads_each_multiline_file_as_one_document(tmp_path):
    texts = _rst_tree(tmp_path / "corpus")
    cfg = DataConfig(source="files", files=[str(tmp_path / "corpus/**/*.rst")])
    assert [str(p) for p in resolve_files(cfg.files)] == sorted(texts)  # all depths, sorted
    documents = _documents(cfg)
    assert sorted(documents) == sorted(texts.values())  # whole files, newlines kept
    corpus = load_corpus(cfg)
    list(corpus.documents())
    assert corpus.stats.documents == 12 and corpus.stats.characters == sum(
        len(t) for t in texts.values())


def test_a_folder_means_every_file_beneath_it_hidden_ones_excluded(tmp_path):
    texts = _rst_tree(tmp_path / "corpus", count=4)
    (tmp_path / "corpus" / ".git").mkdir()
    (tmp_path / "corpus" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    found = [str(p) for p in resolve_files([str(tmp_path / "corpus")])]
    assert found == sorted([*texts, str(tmp_path / "corpus/a/notes.txt")])


def test_line_documents_are_opt_in(tmp_path):
    (tmp_path / "a.rst").write_text("first line\n\n   \nsecond line\nthird line\n")
    cfg = DataConfig(source="files", files=[str(tmp_path / "a.rst")], document="line",
                     validation_fraction=0.5)
    assert sorted(_documents(cfg)) == ["first line", "second line", "third line"]


def test_unknown_extension_is_refused_unless_read_as_text(tmp_path):
    (tmp_path / "page.weird").write_text("plain words\nover two lines\n")
    files = [str(tmp_path / "page.weird")]
    with pytest.raises(UserError, match=r"page\.weird \(extension '\.weird'\).*"
                                        r"set `data\.format: text`"):
        _documents(DataConfig(source="files", files=files))
    assert _documents(DataConfig(source="files", files=files, format="text")) == \
        ["plain words\nover two lines\n"]


def test_exact_duplicate_documents_are_dropped_and_counted(tmp_path):
    (tmp_path / "one.md").write_text("same text\n")
    (tmp_path / "two.md").write_text("same text\n")
    (tmp_path / "three.md").write_text("other text\n")
    cfg = DataConfig(source="files", files=[str(tmp_path / "*.md")])
    corpus = load_corpus(cfg)
    assert sorted(text for _, text in corpus.documents()) == ["other text\n", "same text\n"]
    assert corpus.stats.duplicates == 1
    kept = load_corpus(DataConfig(source="files", files=cfg.files, dedupe=False))
    assert len(list(kept.documents())) == 3 and kept.stats.duplicates == 0


def test_split_is_by_document_a_files_lines_never_straddle_it(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text("".join(f"line {j} of file {i}\n"
                                                        for j in range(5)))
    cfg = DataConfig(source="files", files=[str(tmp_path / "*.txt")],
                     validation_fraction=0.25)
    corpus = load_corpus(cfg)
    validation = set(corpus.validation)
    # the split is sha256(key) < fraction, key = the path: computed here on its own
    expected = {(tmp_path / f"f{i:02d}.txt").read_text() for i in range(40)
                if int.from_bytes(hashlib.sha256(str(tmp_path / f"f{i:02d}.txt").encode())
                                  .digest()[:8], "big") / 2**64 < 0.25}
    assert validation == expected and 0 < len(validation) < 40
    assert not validation & set(corpus.train)


def test_empty_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("some text here\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("  \n\n")
    corpus = load_corpus(DataConfig(source="files", files=[str(tmp_path / "*.txt")]),
                         holdout=False)
    assert [text for _, text in corpus.documents()] == ["some text here\n"]
    assert corpus.stats.empty_files == 2


def _latin1(path: Path) -> str:
    path.write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    return str(path)


def _binary(path: Path) -> str:
    path.write_bytes(b"line one\nline two\n\x00\x01\x02")
    return str(path)


def _jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda d: _latin1(d / "old.txt"),
     r"old\.txt, line 2: not valid utf-8 \(byte 0xe9\)\. Set data\.encoding"),
    (lambda d: _binary(d / "blob.txt"), r"blob\.txt, line 3: a NUL byte: this looks like a "
                                        r"binary file"),
    (lambda d: _jsonl(d / "rows.jsonl", ['{"text": "ok"}', '{"text": "broken'] ),
     r"rows\.jsonl, line 2: not valid JSON"),
    (lambda d: _jsonl(d / "rows.jsonl", ['{"text": "ok"}', '', '{"text": 3}']),
     r"rows\.jsonl, line 3: field 'text' is int, not a string"),
    (lambda d: _jsonl(d / "rows.jsonl", ['["a list"]']),
     r"rows\.jsonl, line 1: expected a JSON object with a 'text' field, got list"),
    (lambda d: _jsonl(d / "rows.json", ['[{"text": "ok"},', '{"text": }]']),
     r"rows\.json, line 2: not valid JSON"),
])
def test_each_bad_file_is_named_with_its_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserError, match=message):
        _documents(DataConfig(source="files", files=[path]))


def test_an_encoding_reads_what_utf8_refuses(tmp_path):
    path = _latin1(tmp_path / "old.txt")
    assert _documents(DataConfig(source="files", files=[path], encoding="latin-1")) == \
        ["first line\ncafé au lait\n"]


def test_json_array_and_parquet_rows_are_documents(tmp_path):
    import datasets

    (tmp_path / "rows.json").write_text(json.dumps([{"text": "row zero"}, {"text": "row one"}]))
    datasets.Dataset.from_dict({"text": ["pq zero", "", "pq two"]}).to_parquet(
        str(tmp_path / "rows.parquet"))
    documents = _documents(DataConfig(source="files", files=[str(tmp_path / "rows.*")]))
    assert sorted(documents) == ["pq two", "pq zero", "row one", "row zero"]
    with pytest.raises(UserError, match=r"rows\.parquet: no column 'body'.*its columns are: "
                                        r"text"):
        _documents(DataConfig(source="files", files=[str(tmp_path / "rows.parquet")],
                              text_field="body"))


def test_options_checked_before_any_work():
    with pytest.raises(UserError, match="data.encoding: unknown encoding 'utf-9'"):
        check_options(DataConfig(encoding="utf-9"))
    with pytest.raises(UserError, match="data.streaming: applies to source 'hub' only"):
        check_options(DataConfig(streaming=True))
