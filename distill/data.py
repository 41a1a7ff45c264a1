"""Tokenizer (trained byte-level BPE, cached, or any transformers tokenizer), packing into
fixed-length blocks, and the deterministic, resumable order in which blocks are visited."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from distill.config import DataConfig
from distill.corpus import Corpus
from distill.errors import UserError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOKENIZER_VERSION = 1  # bump when the trained tokenizer's recipe changes: invalidates caches


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("DISTILL_CACHE", "~/.cache/distill")).expanduser()


def _train_bpe(texts: list[str], vocab_size: int):
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


def load_tokenizer(cfg: DataConfig, corpus: Corpus, trusted: Sequence[str] = ()):
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
    digest = hashlib.sha256(f"v{TOKENIZER_VERSION}:{cfg.vocab_size}".encode())
    for text in corpus.train:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    target = cache_root(cfg) / "tokenizers" / f"bpe-{cfg.vocab_size}-{digest.hexdigest()[:16]}"
    if (target / "tokenizer.json").is_file():  # our own files: no code of theirs to trust
        return AutoTokenizer.from_pretrained(target, trust_remote_code=False)
    tokenizer = _train_bpe(corpus.train, cfg.vocab_size)
    # Write beside the target, then rename: a concurrent or killed run never sees half a file.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process got there first; its copy is just as good
        shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(target, trust_remote_code=False)


def pack(texts: list[str], tokenizer, block_size: int, what: str) -> torch.Tensor:
    """Join documents with the end-of-text token and cut the stream into blocks of
    ``block_size + 1`` tokens that overlap by one, so every token but the first is a
    target exactly once: inputs are ``block[:-1]``, labels ``block[1:]``.

    Returns (num_blocks, block_size + 1) int64.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    batch = 256
    for i in range(0, len(texts), batch):
        for doc in tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]:
            ids.extend(doc)
            ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.long)
    num_blocks = (len(stream) - 1) // block_size
    if num_blocks < 1:
        raise UserError(f"data: the {what} split has {len(stream)} tokens, fewer than "
                        f"data.block_size + 1 = {block_size + 1}; use more text or a smaller "
                        "block_size.")
    return stream[: num_blocks * block_size + 1].unfold(0, block_size + 1, block_size).clone()


@dataclass
class PackedData:
    train: torch.Tensor        # (num_train_blocks, block_size + 1)
    validation: torch.Tensor   # (num_val_blocks, block_size + 1)
    tokenizer: object
    description: str


def split_block(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """(batch, block_size + 1) -> input_ids and aligned labels, each (batch, block_size)."""
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


def prepare_data(cfg: DataConfig, corpus: Corpus, trusted: Sequence[str] = ()) -> PackedData:
    tokenizer = load_tokenizer(cfg, corpus, trusted)
    return PackedData(train=pack(corpus.train, tokenizer, cfg.block_size, "train"),
                      validation=pack(corpus.validation, tokenizer, cfg.block_size, "validation"),
                      tokenizer=tokenizer, description=corpus.description)
