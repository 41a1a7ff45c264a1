"""Local corpus files: which files a `data.files` list means, how each is read, and the
messages that name a bad file (and its line) instead of failing somewhere inside a library.

Every reader is a generator of documents, so the corpus is never held whole in memory: a
plain-text file is read at once (one document, or its lines one by one), JSON lines line by
line, parquet in row batches through `datasets`' streaming reader (no Arrow copy on disk).
"""

from __future__ import annotations

import codecs
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from distill.config import DataConfig
from distill.errors import UserError

# Extensions read as plain text under `format: auto`: prose, markup and source code.
TEXT_EXTENSIONS = frozenset(
    ".txt .text .md .markdown .rst .adoc .asciidoc .org .tex .bib .html .htm .xhtml .xml "
    ".svg .css .scss .c .h .cc .cpp .cxx .hpp .hh .m .mm .py .pyi .pyx .ipynb .js .mjs .cjs "
    ".jsx .ts .tsx .java .kt .kts .scala .groovy .go .rs .swift .rb .php .pl .pm .lua .r "
    ".jl .hs .ml .mli .fs .fsx .ex .exs .erl .clj .cs .vb .dart .zig .nim .sh .bash .zsh "
    ".fish .ps1 .bat .cmd .sql .yaml .yml .toml .ini .cfg .conf .properties .csv .tsv "
    ".log .srt .vtt .po .pot .man .1 .cmake .mk .gradle .proto .graphql .vue .svelte "
    ".dockerfile .in .patch .diff".split())
JSON_EXTENSIONS = frozenset({".json", ".jsonl", ".ndjson"})
PARQUET_EXTENSIONS = frozenset({".parquet"})
# Names without an extension that are plain text by convention.
TEXT_NAMES = frozenset({"README", "LICENSE", "COPYING", "NOTICE", "AUTHORS", "CHANGELOG",
                        "Makefile", "Dockerfile", "CMakeLists.txt"})
_PARQUET_BATCH = 1024  # rows per batch read from a parquet file


@dataclass
class FileDocument:
    key: str      # the split's stable name: the path, or path:line / path:row
    text: str


def check_options(cfg: DataConfig) -> None:
    """Refuse data options that no file could be read with, before any work."""
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise UserError(f"data.encoding: unknown encoding {cfg.encoding!r}; use a Python "
                        "codec name such as utf-8, latin-1 or cp1252.") from None
    if cfg.streaming and cfg.source != "hub":
        raise UserError(f"data.streaming: applies to source 'hub' only (the source is "
                        f"{cfg.source!r}; local files are always read as a stream).")


def resolve_files(patterns: list[str]) -> list[Path]:
    """Every file that `data.files` names, in a fixed order: each pattern's matches sorted
    (`**` recursive, hidden files excluded, as the shell's globstar does), a directory's
    files beneath it sorted; a file named twice is read once."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) \
            else [pattern]
        if not matches:
            raise UserError(f"data.files: no file matches {pattern!r} (`**` matches any "
                            "depth of folders, e.g. 'docs/**/*.rst').")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(path).parts))
            elif path.is_file():
                files = [path]
            elif glob.has_magic(pattern):
                continue  # a broken link that a pattern matched
            else:
                raise UserError(f"data.files: file not found: {match}")
            for file in files:
                found.setdefault(str(file), file)
    if not found:
        raise UserError(f"data.files: {patterns} name no file (only empty folders).")
    return list(found.values())


def file_format(path: Path, requested: str) -> str:
    """`text`, `json` or `parquet` for ``path`` under `data.format` ``requested``."""
    if requested != "auto":
        return requested
    suffix = path.suffix.lower()
    if suffix in JSON_EXTENSIONS:
        return "json"
    if suffix in PARQUET_EXTENSIONS:
        return "parquet"
    if suffix in TEXT_EXTENSIONS or path.name in TEXT_NAMES:
        return "text"
    raise UserError(f"data.files: cannot tell how to read {path} (extension "
                    f"{suffix or 'none'!r}): `data.format: auto` reads .json/.jsonl, .parquet "
                    "and plain-text extensions such as .txt .md .rst .tex .html .py .c (docs/"
                    "data.md lists them). If it is plain text, set `data.format: text`; "
                    "otherwise leave it out of data.files.")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _decode(raw: bytes, path: Path, encoding: str, first_line: int = 1) -> str:
    """``raw`` decoded strictly; a binary or mis-encoded file is refused by name and line.
    Newlines are normalised to \\n, as Python's text mode reads them."""
    nul = raw.find(b"\0")
    if nul >= 0 and not encoding.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
        raise UserError(f"data.files: {path}, line {first_line - 1 + _line_of(raw, nul)}: a NUL "
                        "byte: this looks like a binary file, not text. Leave it out of "
                        "data.files (narrow the pattern).")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"data.files: {path}, line {first_line - 1 + _line_of(raw, exc.start)}: not valid "
            f"{encoding} (byte 0x{raw[exc.start]:02x}). Set data.encoding to the file's "
            "encoding (e.g. latin-1 or cp1252) or leave the file out.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _text_documents(path: Path, cfg: DataConfig) -> Iterator[FileDocument]:
    if cfg.document == "file":
        text = _decode(path.read_bytes(), path, cfg.encoding)
        if text.strip():
            yield FileDocument(str(path), text)
        return
    with open(path, "rb") as handle:  # one line at a time: memory bounded by the longest
        for number, raw in enumerate(handle, 1):
            line = _decode(raw, path, cfg.encoding, number).rstrip("\n")
            if line.strip():
                yield FileDocument(f"{path}:{number}", line)


def _row_text(row: object, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise UserError(f"data.files: {where}: expected a JSON object with a {field!r} "
                        f"field, got {type(row).__name__}.")
    if field not in row:
        raise UserError(f"data.files: {where}: no field {field!r} (data.text_field); its "
                        f"fields are: {', '.join(map(str, row)) or 'none'}.")
    text = row[field]
    if not isinstance(text, str):
        raise UserError(f"data.files: {where}: field {field!r} is "
                        f"{type(text).__name__}, not a string.")
    return text


def _json_documents(path: Path, cfg: DataConfig) -> Iterator[FileDocument]:
    """JSON lines (one object per line), or a .json file holding one array of objects
    (parsed whole: such files are small by nature)."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    if path.suffix.lower() == ".json" and head.startswith(b"["):  # one array, parsed whole
        text = _decode(path.read_bytes(), path, cfg.encoding)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"data.files: {path}, line {exc.lineno}: not valid JSON "
                            f"({exc.msg}).") from None
        for index, row in enumerate(rows):
            body = _row_text(row, cfg.text_field, f"{path}, item {index}")
            if body.strip():
                yield FileDocument(f"{path}:{index}", body)
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            line = _decode(raw, path, cfg.encoding, number)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"data.files: {path}, line {number}: not valid JSON "
                                f"({exc.msg}, column {exc.colno}).") from None
            body = _row_text(row, cfg.text_field, f"{path}, line {number}")
            if body.strip():
                yield FileDocument(f"{path}:{number}", body)


def _parquet_documents(path: Path, cfg: DataConfig) -> Iterator[FileDocument]:
    import datasets

    try:  # streaming: row batches straight from the file, no Arrow copy in the HF cache
        rows = datasets.load_dataset("parquet", data_files=[str(path)], split="train",
                                     streaming=True)
        if rows.column_names is not None and cfg.text_field not in rows.column_names:
            raise UserError(f"data.files: {path}: no column {cfg.text_field!r} "
                            f"(data.text_field); its columns are: "
                            f"{', '.join(rows.column_names)}.")
        index = 0
        for batch in rows.iter(batch_size=_PARQUET_BATCH):
            for text in batch[cfg.text_field]:
                if not isinstance(text, str) and text is not None:
                    raise UserError(f"data.files: {path}, row {index}: column "
                                    f"{cfg.text_field!r} holds {type(text).__name__}, "
                                    "not text.")
                if text and text.strip():
                    yield FileDocument(f"{path}:{index}", text)
                index += 1
    except UserError:
        raise
    except Exception as exc:  # pyarrow and datasets raise many types for unreadable files
        raise UserError(f"data.files: {path}: not a readable parquet file "
                        f"({' '.join(str(exc).split())[:300]}).") from None


_READERS = {"text": _text_documents, "json": _json_documents, "parquet": _parquet_documents}


def file_documents(path: Path, cfg: DataConfig) -> Iterator[FileDocument]:
    """The documents of one file, read as `data.format` says."""
    return _READERS[file_format(path, cfg.format)](path, cfg)
