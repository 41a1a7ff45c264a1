"""Text corpora: the Python standard library's own sources, the Python Language Reference
topics CPython ships for ``help()``, local files, or hub datasets.

Every source yields a list of documents in a fixed order; the train/validation split is
decided per document by a stable hash of its key (a path, or a row number), so it does not
depend on the seed, the machine or the order in which files are found.
"""

from __future__ import annotations

import glob
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from distill.config import DataConfig
from distill.errors import UserError

# Parts of the standard library that are not its own source: tests (large, repetitive
# data files) and whatever site-packages a virtual environment put there.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}

_FILE_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".py": "text",
                  ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class Corpus:
    train: list[str]
    validation: list[str]
    description: str


def _is_validation(key: str, fraction: float) -> bool:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _stdlib_documents() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _STDLIB_SKIP.intersection(rel.parts[:-1]):
            continue
        try:
            docs.append((rel.as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are deliberately not UTF-8; skip them
    return docs


def _python_docs_documents() -> list[tuple[str, str]]:
    """English prose present offline wherever CPython is: the Language Reference topics
    that ``help()`` shows (``pydoc_data.topics``, about 0.5M characters in ~80 topics,
    one document each, keyed by topic name)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise UserError("data.source: python_docs needs the standard library's pydoc_data "
                        "package, which this Python installation lacks.") from None
    return [(f"pydoc:{name}", text) for name, text in sorted(topics.items()) if text.strip()]


def _dataset_documents(dataset, text_field: str, what: str) -> list[tuple[str, str]]:
    if text_field not in dataset.column_names:
        raise UserError(f"data.text_field: {what} has no column {text_field!r}; "
                        f"its columns are: {', '.join(dataset.column_names)}.")
    return [(f"{i}", text) for i, text in enumerate(dataset[text_field])
            if isinstance(text, str) and text.strip()]


def _file_documents(patterns: list[str], text_field: str) -> list[tuple[str, str]]:
    import datasets

    docs: list[tuple[str, str]] = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not paths:
            raise UserError(f"data.files: no file matches {pattern!r}.")
        for path in paths:
            if not Path(path).is_file():
                raise UserError(f"data.files: file not found: {path}")
            builder = _FILE_BUILDERS.get(Path(path).suffix.lower())
            if builder is None:
                raise UserError(f"data.files: cannot read {path}: allowed extensions are "
                                f"{', '.join(sorted(_FILE_BUILDERS))}.")
            try:
                ds = datasets.load_dataset(builder, data_files=[path], split="train")
            except Exception as exc:  # datasets raises many types for unreadable files
                raise UserError(f"data.files: could not read {path}: {exc}") from None
            field = "text" if builder == "text" else text_field
            docs += [(f"{path}:{key}", text)
                     for key, text in _dataset_documents(ds, field, path)]
    return docs


def _hub_documents(cfg: DataConfig) -> list[tuple[str, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split)
    except Exception as exc:
        raise UserError(f"data.hub_name: could not load {cfg.hub_name!r} "
                        f"(config {cfg.hub_config!r}, split {cfg.hub_split!r}): {exc}") from None
    return _dataset_documents(ds, cfg.text_field, f"dataset {cfg.hub_name!r}")


def load_corpus(cfg: DataConfig) -> Corpus:
    if cfg.source == "stdlib":
        docs, description = _stdlib_documents(), "Python standard library sources"
    elif cfg.source == "python_docs":
        docs, description = _python_docs_documents(), "Python Language Reference topics"
    elif cfg.source == "files":
        docs, description = _file_documents(cfg.files, cfg.text_field), f"files {cfg.files}"
    else:
        docs, description = _hub_documents(cfg), f"hub dataset {cfg.hub_name}"
    # Exact duplicates (the stdlib ships a few identical files) would leak validation text
    # into training; keep the first copy of each.
    unique: dict[str, tuple[str, str]] = {}
    for key, text in docs:
        unique.setdefault(text, (key, text))
    docs = list(unique.values())
    if cfg.max_chars is not None:
        kept, total = [], 0
        for key, text in docs:
            if total >= cfg.max_chars:
                break
            kept.append((key, text[: cfg.max_chars - total]))
            total += len(kept[-1][1])
        docs = kept
    if not docs:
        raise UserError(f"data: the corpus ({description}) is empty: no non-blank text found.")
    train = [t for k, t in docs if not _is_validation(k, cfg.validation_fraction)]
    validation = [t for k, t in docs if _is_validation(k, cfg.validation_fraction)]
    if not validation:  # tiny corpora: hold out the last document rather than nothing
        validation = train[-1:]
        train = train[:-1]
    if not train:
        raise UserError(f"data: the corpus ({description}) has too few documents "
                        f"({len(docs)}) to split into train and validation.")
    return Corpus(train=train, validation=validation, description=description)
