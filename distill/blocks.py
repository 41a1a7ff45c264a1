"""The tokenised-block cache: a corpus's packed token streams (train, validation), written
once under ``cache_root/blocks/<key>`` and memory-mapped by every later run.

The key is a fingerprint of the corpus (its files' paths, sizes and modification times, or
its source's identity, and the data options that change its documents), of the tokenizer
(its serialised definition) and of the block size: a second run of the same data neither
reads nor tokenises the corpus. Each split is one flat int32 file of token ids; blocks are
a zero-copy view of it (``unfold``), so a corpus larger than memory trains, and rows are
gathered into int64 where they are taken (``split_block``, ``draw_step``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from distill.corpus import Corpus, CorpusStats
from distill.errors import UserError

BLOCKS_VERSION = 1       # bump when the files' layout or the packing changes
PIECE_CHARS = 100_000    # longest text handed to the tokenizer at once (memory bound)
_BATCH_CHARS = 100_000   # characters per tokenizer call (several documents at once)
_BATCH_TEXTS = 256
_HASH_ROWS = 4096        # blocks hashed at a time (bounded memory over the memmap)
SPLITS = ("train", "validation")


def text_pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters, each cut just before a
    whitespace character (where byte-level tokenizers split words anyway), so that a huge
    single-line document is tokenised in bounded memory; a stretch without whitespace is
    cut at the limit."""
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end),
                  text.rfind("\t", start + 1, end))
        cut = cut if cut > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_documents(tokenizer, documents: Iterable[tuple[bool, str]]
                     ) -> Iterator[tuple[bool, np.ndarray]]:
    """(tag, ids) for each document's pieces in order, the end-of-text token appended
    after each document's last piece; the tokenizer sees batches of up to ~1M characters."""
    eos = tokenizer.eos_token_id
    batch: list[tuple[bool, str, bool]] = []  # (tag, piece, ends its document)
    chars = 0

    def flush() -> Iterator[tuple[bool, np.ndarray]]:
        ids = tokenizer([piece for _, piece, _ in batch], add_special_tokens=False)["input_ids"]
        for (tag, _, last), piece_ids in zip(batch, ids):
            yield tag, np.asarray([*piece_ids, eos] if last else piece_ids, dtype=np.int64)

    for tag, text in documents:
        pieces = text_pieces(text, PIECE_CHARS)  # lazily: no second copy of a huge text
        piece = next(pieces)
        while piece is not None:
            following = next(pieces, None)  # one ahead, to know the document's last piece
            batch.append((tag, piece, following is None))
            chars += len(piece)
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_TEXTS:
                yield from flush()
                batch, chars = [], 0
            piece = following
    if batch:
        yield from flush()


def require_tokens(tokens: int, block_size: int, split: str) -> None:
    """A split needs at least one block: ``block_size + 1`` tokens."""
    if tokens < block_size + 1:
        raise UserError(f"data: the {split} split has {tokens} tokens, fewer than "
                        f"data.block_size + 1 = {block_size + 1}; use more text or a smaller "
                        "block_size.")


def blocks_view(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """(num_blocks, block_size + 1) blocks overlapping by one token, a view of ``stream``."""
    num_blocks = max((len(stream) - 1) // block_size, 0)
    if num_blocks == 0:
        return torch.empty((0, block_size + 1), dtype=stream.dtype)
    return stream[: num_blocks * block_size + 1].unfold(0, block_size + 1, block_size)


def blocks_sha256(blocks: torch.Tensor) -> str:
    """Short sha256 of the blocks as contiguous int64 rows (the digest runs recorded before
    the cache existed), computed a few thousand rows at a time: bounded memory."""
    digest = hashlib.sha256()
    for start in range(0, len(blocks), _HASH_ROWS):
        rows = blocks[start:start + _HASH_ROWS].to(torch.int64).contiguous()
        digest.update(rows.numpy())
    return digest.hexdigest()[:16]


def tokenizer_identity(tokenizer) -> str:
    """A digest of what the tokenizer does: its serialised definition (fast tokenizers),
    else its class and vocabulary; plus its end-of-text id, which the packing uses."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(
        [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.sha256(f"{definition}\0{tokenizer.eos_token_id}".encode()).hexdigest()


@dataclass
class Blocks:
    train: torch.Tensor        # (num_train_blocks, block_size + 1) int32, memory-mapped
    validation: torch.Tensor   # (num_val_blocks, block_size + 1) int32, memory-mapped
    meta: dict
    path: Path
    from_cache: bool


def _open(path: Path, key: str) -> Blocks | None:
    """The cached blocks at ``path`` if whole and for ``key``; else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("version") != BLOCKS_VERSION or meta.get("key") != key:
            return None
        views = {}
        for split in SPLITS:
            tokens = int(meta["tokens"][split])
            file = path / f"{split}.bin"
            if file.stat().st_size != tokens * 4:
                return None
            # copy-on-write mapping: pages are read from the file on demand, never written
            stream = torch.from_numpy(np.memmap(file, np.int32, "c", shape=(tokens,))) \
                if tokens else torch.empty(0, dtype=torch.int32)
            views[split] = blocks_view(stream, int(meta["block_size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Blocks(views["train"], views["validation"], meta, path, from_cache=True)


def _write(corpus: Corpus, tokenizer, block_size: int, staging: Path, key: str,
           progress: bool) -> dict:
    """Read and tokenise the corpus once into ``staging``; returns its meta.json."""
    tokens = dict.fromkeys(SPLITS, 0)
    with open(staging / "train.bin", "wb") as train, \
            open(staging / "validation.bin", "wb") as validation:
        files = {False: train, True: validation}
        for is_validation, ids in encode_documents(tokenizer, corpus.documents(progress)):
            files[is_validation].write(ids.astype(np.int32).tobytes())
            tokens["validation" if is_validation else "train"] += len(ids)
    for split in SPLITS:
        if not corpus.holdout and split == "train":
            continue  # a whole corpus evaluated: every document is in validation
        require_tokens(tokens[split], block_size, split)
    meta = {"version": BLOCKS_VERSION, "key": key, "block_size": block_size,
            "tokens": tokens, "corpus": corpus.description,
            "stats": corpus.stats.to_dict()}
    (staging / "meta.json").write_text(json.dumps(meta))
    opened = _open(staging, key)
    meta["blocks"] = {split: len(getattr(opened, split)) for split in SPLITS}
    meta["sha256"] = {split: blocks_sha256(getattr(opened, split)) for split in SPLITS}
    del opened  # unmap before the rename
    (staging / "meta.json").write_text(json.dumps(meta))
    return meta


def load_or_build(corpus: Corpus, tokenizer, block_size: int, root: Path,
                  progress: bool = False) -> Blocks:
    """The corpus's blocks from the cache, or read, tokenised and cached now (written into a
    staging directory, then renamed: a killed run leaves no half cache, and of two runs
    building the same key at once, the second to finish reads the first's)."""
    key = hashlib.sha256(json.dumps([BLOCKS_VERSION, corpus.fingerprint,
                                     tokenizer_identity(tokenizer), block_size]).encode()
                         ).hexdigest()[:20]
    target = Path(root) / "blocks" / key
    cached = _open(target, key)
    if cached is not None:
        return cached
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        _write(corpus, tokenizer, block_size, staging, key, progress)
        if _open(target, key) is None:  # a stale or partial copy, not another run's
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process renamed its copy first: the same blocks
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    built = _open(target, key)
    if built is None:
        raise RuntimeError(f"the tokenised blocks in {target} could not be read back")
    built.from_cache = False
    return built


def disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in Path(path).glob("*") if file.is_file())


def stats_of(meta: dict) -> CorpusStats:
    return CorpusStats(**meta["stats"])
