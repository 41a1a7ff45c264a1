"""Tokenizer (trained byte-level BPE, cached, or any transformers tokenizer), packing into
fixed-length blocks (cached, memory-mapped: distill.blocks), the one-line data summary, and
the deterministic, resumable order in which blocks are visited."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distill.blocks import (blocks_view, encode_documents, load_or_build, require_tokens,
                            text_pieces)
from distill.config import DataConfig
from distill.corpus import Corpus, CorpusStats
from distill.errors import UserError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOKENIZER_VERSION = 1  # bump when the trained tokenizer's recipe changes: invalidates caches


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("DISTILL_CACHE", "~/.cache/distill")).expanduser()


def _train_bpe(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def load_tokenizer(cfg: DataConfig, corpus: Corpus, trusted: Sequence[str] = (),
                   progress: bool = False):
    """The trained BPE tokenizer (from the cache when the same text was seen before) or the
    transformers tokenizer named by ``data.tokenizer``, whose own code runs only if it is
    one of the ``trusted`` paths (the recipe's trust_remote_code)."""
    from transformers import AutoTokenizer

    from students.sources import CustomCodeRefused, is_trusted, pretrained

    if cfg.tokenizer != "bpe":
        try:
            tokenizer = pretrained(AutoTokenizer, cfg.tokenizer,
                                   is_trusted(cfg.tokenizer, trusted), key="data.tokenizer")
        except (CustomCodeRefused, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"data.tokenizer: could not load {cfg.tokenizer!r}: "
                            f"{' '.join(str(exc).split())}") from None
        if tokenizer.eos_token_id is None:
            raise UserError(f"data.tokenizer: {cfg.tokenizer!r} has no end-of-text token, "
                            "needed to separate packed documents.")
        return tokenizer
    # Keyed by the corpus's fingerprint (its files' sizes and times, not their text): a
    # second run finds the tokenizer without reading the corpus.
    digest = hashlib.sha256(f"v{TOKENIZER_VERSION}:{cfg.vocab_size}:{corpus.fingerprint}".encode())
    target = cache_root(cfg) / "tokenizers" / f"bpe-{cfg.vocab_size}-{digest.hexdigest()[:16]}"
    if (target / "tokenizer.json").is_file():  # our own files: no code of theirs to trust
        return AutoTokenizer.from_pretrained(target, trust_remote_code=False)
    if progress:
        print(f"data: training a {cfg.vocab_size}-token BPE tokenizer on the training split")
    pieces = (piece for text in corpus.train_texts(progress) for piece in text_pieces(text))
    tokenizer = _train_bpe(pieces, cfg.vocab_size)
    # Write beside the target, then rename: a concurrent or killed run never sees half a file.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process got there first; its copy is just as good
        shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(target, trust_remote_code=False)


def pack(texts: Sequence[str], tokenizer, block_size: int, what: str) -> torch.Tensor:
    """Join documents with the end-of-text token and cut the stream into blocks of
    ``block_size + 1`` tokens that overlap by one, so every token but the first is a
    target exactly once: inputs are ``block[:-1]``, labels ``block[1:]``.

    Returns (num_blocks, block_size + 1) int64, in memory: for small texts (tests, a few
    prompts); a run's corpus goes through :func:`prepare_data` and its cache.
    """
    pieces = encode_documents(tokenizer, ((False, text) for text in texts))
    stream = torch.from_numpy(np.concatenate([ids for _, ids in pieces] or [np.zeros(0, np.int64)]))
    require_tokens(len(stream), block_size, what)
    return blocks_view(stream, block_size).clone()


@dataclass
class PackedData:
    train: torch.Tensor        # (num_train_blocks, block_size + 1), int32 memory-mapped
    validation: torch.Tensor   # (num_val_blocks, block_size + 1), int32 memory-mapped
    tokenizer: object
    description: str
    summary: str = ""          # the one-line data summary (see data_summary)
    # short sha256 of each split's blocks as int64 rows, computed when they were cached:
    # the run's fingerprint takes them instead of reading every token again
    digests: dict[str, str] = field(default_factory=dict)
    cache_path: Path | None = None
    from_cache: bool = False   # the blocks were read from the cache, not tokenised now


def split_block(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """(batch, block_size + 1) -> input_ids and aligned labels, each (batch, block_size),
    int64 (cached blocks are int32 on disk: labels must be int64 for the losses)."""
    blocks = blocks.long()
    return {"input_ids": blocks[:, :-1], "labels": blocks[:, 1:]}


class BlockOrder:
    """Which blocks each micro-batch holds: a fresh seeded permutation per epoch, the global
    micro-batch split evenly across processes. Its state is two integers, so a resumed run
    continues with exactly the batches the interrupted run would have seen."""

    def __init__(self, num_blocks: int, micro_batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_blocks = num_blocks
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = num_blocks // (micro_batch_size * world_size)
        if self.batches_per_epoch < 1:
            raise UserError(f"data: only {num_blocks} training blocks, fewer than one global "
                            f"micro-batch ({micro_batch_size} x {world_size} processes); use "
                            "more text, a smaller block_size or a smaller micro_batch_size.")
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_blocks, generator=gen)

    def next_indices(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation()
        size = self.micro_batch_size
        start = (self.position * self.world_size + self.rank) * size
        self.position += 1
        return self._perm[start:start + size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation()


def _count(value: int) -> str:
    """1234 -> '1234', 45_600 -> '45.6k', 8_012_345 -> '8.0M' (exact below 10000)."""
    for unit, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= max(unit, 10_000):
            return f"{value / unit:.1f}{suffix}"
    return str(value)


def data_summary(stats: CorpusStats, tokens: int, train_blocks: int, validation_blocks: int,
                 holdout: bool, cache_note: str) -> str:
    """e.g. ``data: 5838 documents, 8.0M characters, 2.2M tokens, 16430 train / 906
    validation blocks (2 duplicates dropped; tokenised blocks cached in PATH)``."""
    blocks = (f"{train_blocks} train / {validation_blocks} validation blocks" if holdout
              else f"{validation_blocks} blocks (every document: no train/validation split)")
    notes = []
    if stats.duplicates:
        notes.append(f"{stats.duplicates} duplicate{'s' * (stats.duplicates != 1)} dropped")
    if stats.empty_files:
        notes.append(f"{stats.empty_files} empty file{'s' * (stats.empty_files != 1)} skipped")
    notes.append(cache_note)
    return (f"data: {stats.documents} documents, {_count(stats.characters)} characters, "
            f"{_count(tokens)} tokens, {blocks} ({'; '.join(notes)})")


def prepare_data(cfg: DataConfig, corpus: Corpus, trusted: Sequence[str] = (),
                 verbose: bool = False) -> PackedData:
    """The tokenizer and the packed blocks, from the caches when this corpus (by its
    fingerprint) was tokenised before. ``verbose`` (the main process): progress bars while
    reading, and the one-line summary printed."""
    tokenizer = load_tokenizer(cfg, corpus, trusted, progress=verbose)
    blocks = load_or_build(corpus, tokenizer, cfg.block_size, cache_root(cfg), verbose)
    meta = blocks.meta
    note = (f"read from cache {blocks.path}" if blocks.from_cache
            else f"tokenised blocks cached in {blocks.path}")
    summary = data_summary(CorpusStats(**meta["stats"]), sum(meta["tokens"].values()),
                           len(blocks.train), len(blocks.validation), corpus.holdout, note)
    if verbose:
        print(summary, flush=True)
    return PackedData(train=blocks.train, validation=blocks.validation, tokenizer=tokenizer,
                      description=corpus.description, summary=summary,
                      digests=dict(meta["sha256"]), cache_path=blocks.path,
                      from_cache=blocks.from_cache)
