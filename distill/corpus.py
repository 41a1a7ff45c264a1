"""Text corpora: the Python standard library's own sources, the Python Language Reference
topics CPython ships for ``help()``, local files, or hub datasets.

A :class:`Corpus` is a description (what it reads, and a cheap fingerprint of it) plus a
generator of its documents, streamed in a fixed order: the corpus is never held whole in
memory. On the way, exact duplicate documents are dropped (the first copy kept) and
``data.max_chars`` is applied; each document goes to train or validation by a stable hash of
its key (a path, or path:line / path:row), so the split depends neither on the seed, the
machine nor the order in which files are found, and a file's text never straddles it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from distill.config import DataConfig
from distill.corpus_files import file_documents, resolve_files
from distill.errors import UserError

# Parts of the standard library that are not its own source: tests (large, repetitive
# data files) and whatever site-packages a virtual environment put there.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
CORPUS_VERSION = 2  # bump when the documents a recipe yields change: invalidates caches
_HUB_BATCH = 1000   # rows per batch read from a hub dataset


@dataclass
class CorpusStats:
    """What a pass over the corpus found (kept in the block cache, for warm summaries)."""

    documents: int = 0          # kept: after duplicates, empty documents and max_chars
    characters: int = 0
    train_documents: int = 0
    validation_documents: int = 0
    duplicates: int = 0         # exact duplicate documents dropped
    empty_files: int = 0        # files (of source files) without any non-blank text

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Source:
    """One source's documents as (key, text, progress) and what its progress counts; a
    text of None is progress only."""

    documents: Iterator[tuple[str, str | None, int]]
    total: int | None
    unit: str  # "B" (bytes of files) or "doc"
    # The stdlib source always kept its blank files (one copy, after dedupe: one end-of-text
    # token in the stream); kept so that runs from before this module still resume.
    keep_blank: bool = False


def _is_validation(key: str, fraction: float) -> bool:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [path for path in sorted(root.rglob("*.py"))
             if not _STDLIB_SKIP.intersection(path.relative_to(root).parts[:-1])]
    return root, files


def _stdlib_documents(root: Path, files: list[Path]) -> Iterator[tuple[str, str | None, int]]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            text = ""  # a few stdlib files are deliberately not UTF-8; skip them
        yield path.relative_to(root).as_posix(), text, path.stat().st_size


def _python_docs_topics() -> dict[str, str]:
    """English prose present offline wherever CPython is: the Language Reference topics that
    ``help()`` shows (``pydoc_data.topics``, about 0.5M characters in ~80 topics, one
    document each, keyed by topic name)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise UserError("data.source: python_docs needs the standard library's pydoc_data "
                        "package, which this Python installation lacks.") from None
    return topics


def _listing(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file: how `datasets` fingerprints local files too."""
    return [(str(path), (stat := path.stat()).st_size, stat.st_mtime_ns) for path in paths]


class Corpus:
    """The documents a data section names. Construction is cheap (it resolves the file list
    and fingerprints it); reading happens in :meth:`documents`. ``holdout=False`` puts every
    document in validation (``distill eval --data``: the whole file is evaluated)."""

    def __init__(self, cfg: DataConfig, holdout: bool = True) -> None:
        self.cfg = cfg
        self.holdout = holdout
        self.stats = CorpusStats()
        self._files: list[Path] = []
        self._hub = None
        if cfg.source == "stdlib":
            self._stdlib_root, self._files = _stdlib_files()
            self.description = "Python standard library sources"
            identity = [str(self._stdlib_root), sys.version, _listing(self._files)]
        elif cfg.source == "python_docs":
            self.description = "Python Language Reference topics"
            identity = [sys.version, sorted((k, len(v)) for k, v in _python_docs_topics().items())]
        elif cfg.source == "files":
            self._files = resolve_files(cfg.files)
            self.description = f"files {cfg.files}"
            identity = _listing(self._files)
        else:
            self.description = f"hub dataset {cfg.hub_name}"
            self._hub = _load_hub(cfg)
            identity = [cfg.hub_name, cfg.hub_config, cfg.hub_split, cfg.streaming,
                        None if cfg.streaming else self._hub._fingerprint]
        options = {name: getattr(cfg, name) for name in (
            "source", "format", "document", "dedupe", "encoding", "max_chars",
            "validation_fraction", "text_field")}
        self.fingerprint = hashlib.sha256(json.dumps(
            [CORPUS_VERSION, holdout, options, identity], default=str).encode()).hexdigest()

    # ---- reading
    def _source(self) -> _Source:
        cfg = self.cfg
        if cfg.source == "stdlib":
            return _Source(_stdlib_documents(self._stdlib_root, self._files),
                           sum(p.stat().st_size for p in self._files), "B", keep_blank=True)
        if cfg.source == "python_docs":
            topics = _python_docs_topics()
            return _Source(((f"pydoc:{name}", text, 1) for name, text in sorted(topics.items())),
                           len(topics), "doc")
        if cfg.source == "files":
            return _Source(self._file_documents(), sum(p.stat().st_size for p in self._files),
                           "B")
        total = None if cfg.streaming else len(self._hub)
        return _Source(_hub_documents(self._hub, cfg), total, "doc")

    def _file_documents(self) -> Iterator[tuple[str, str | None, int]]:
        for path in self._files:
            size, found = path.stat().st_size, False
            for document in file_documents(path, self.cfg):
                found = True
                yield document.key, document.text, 0
            if not found:
                self.stats.empty_files += 1
            yield "", None, size  # no document: the file's bytes, for the progress bar

    def documents(self, progress: bool = False, desc: str = "reading and tokenising"
                  ) -> Iterator[tuple[bool, str]]:
        """(is_validation, text) of every kept document, in the corpus's fixed order;
        ``self.stats`` counts them on the way (complete once the generator is exhausted).
        When no document falls in validation (a tiny corpus), the last one is held out."""
        from tqdm.auto import tqdm

        from distill.progress import bar_interval

        cfg, source = self.cfg, self._source()
        self.stats = stats = CorpusStats()
        seen: set[bytes] = set()
        held: str | None = None  # the last training document: validation if none is
        bar = tqdm(total=source.total, unit=source.unit, unit_scale=source.unit == "B",
                   desc=desc, disable=not progress, leave=False, mininterval=bar_interval())
        with bar:
            for key, text, advance in source.documents:
                bar.update(advance)
                if text is None or (not text.strip() and not source.keep_blank):
                    continue
                if cfg.dedupe:  # exact duplicates would leak validation text into training
                    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
                    if digest in seen:
                        stats.duplicates += 1
                        continue
                    seen.add(digest)
                if cfg.max_chars is not None:
                    text = text[: cfg.max_chars - stats.characters]
                stats.documents += 1
                stats.characters += len(text)
                if not self.holdout or _is_validation(key, cfg.validation_fraction):
                    stats.validation_documents += 1
                    yield True, text
                else:
                    stats.train_documents += 1
                    if held is not None:
                        yield False, held
                        held = None
                    if stats.validation_documents:
                        yield False, text
                    else:  # held back until a validation document shows up
                        held = text
                if cfg.max_chars is not None and stats.characters >= cfg.max_chars:
                    break
        if stats.documents == 0:
            raise UserError(f"data: the corpus ({self.description}) is empty: no non-blank "
                            "text found.")
        if held is not None and stats.validation_documents == 0:
            stats.train_documents -= 1
            stats.validation_documents += 1
            yield True, held
        elif held is not None:
            yield False, held
        if self.holdout and stats.train_documents == 0:
            raise UserError(f"data: the corpus ({self.description}) has too few documents "
                            f"({stats.documents}) to split into train and validation.")

    def train_texts(self, progress: bool = False) -> Iterator[str]:
        """The training documents only (what the BPE tokenizer learns from)."""
        return (text for is_validation, text in self.documents(progress, "reading for the "
                                                                "tokenizer")
                if not is_validation)

    # ---- lists, for small corpora and tests (the run itself streams)
    @property
    def train(self) -> list[str]:
        return [text for is_validation, text in self.documents() if not is_validation]

    @property
    def validation(self) -> list[str]:
        return [text for is_validation, text in self.documents() if is_validation]


def _load_hub(cfg: DataConfig):
    import datasets

    try:
        return datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split,
                                     streaming=cfg.streaming)
    except Exception as exc:
        raise UserError(f"data.hub_name: could not load {cfg.hub_name!r} "
                        f"(config {cfg.hub_config!r}, split {cfg.hub_split!r}): "
                        f"{' '.join(str(exc).split())[:500]}") from None


def _hub_documents(dataset, cfg: DataConfig) -> Iterator[tuple[str, str | None, int]]:
    what = f"dataset {cfg.hub_name!r}"
    columns = dataset.column_names
    if columns is not None and cfg.text_field not in columns:
        raise UserError(f"data.text_field: {what} has no column {cfg.text_field!r}; "
                        f"its columns are: {', '.join(columns)}.")
    index = 0
    for batch in dataset.iter(batch_size=_HUB_BATCH):  # streamed or memory-mapped rows
        if cfg.text_field not in batch:
            raise UserError(f"data.text_field: {what} has no column {cfg.text_field!r}; "
                            f"its columns are: {', '.join(batch)}.")
        for text in batch[cfg.text_field]:
            yield f"{index}", text if isinstance(text, str) else "", 1
            index += 1


def load_corpus(cfg: DataConfig, holdout: bool = True) -> Corpus:
    return Corpus(cfg, holdout)
