"""A frozen teacher's outputs computed once and read back from disk.

For each training block the run reads, the teacher's top-k log-probabilities, their token
ids and the log of the remaining (tail) mass are stored as memory-mapped ``.npy`` arrays,
in append-only shards under one directory per teacher and data
(``teachers.cache_shards``: the layout):

    <cache_dir>/<key>/shard-<id>/{log_probs,indices,log_tail,blocks}.npy, meta.json

The key hashes the teacher's fingerprint (its config and weight files), the data's (the
packed training tokens), k, the dtype and the vocabulary limit, so any later run over the
same teacher and data reuses the cache, and a changed teacher or corpus gets a new one.

Only the blocks the run will read are computed (``Placement.blocks_read``: every
micro-batch of every step of every process, in the run's data order); a later run that
reads blocks the cache lacks (more steps, another seed) computes those alone and adds a
shard. Before it writes, the fill says where, how many blocks and how many bytes, and is
refused when the disk cannot hold them. On every use each shard's meta.json is checked
against the expected fingerprints, and its arrays against the sizes and sha256 checksums
it recorded and for valid content (``teachers.cache_files``); a shard that fails is
removed, saying why, and its blocks computed again, never used.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

import students
from losses.outputs import TopK
from teachers import cache_files, cache_shards
from teachers.base import MicroBatch, Placement, Teacher, TeacherRefused, TeacherSetup
from teachers.hf import HFTeacher

CACHE_VERSION = 3  # 2: meta.json records sizes and sha256; 3: shards of the blocks read
_SMALL_FILE = 1 << 30  # weight files up to 1 GiB are hashed whole; larger ones sampled


def _hash_file(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        if size <= _SMALL_FILE:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:  # a huge shard: its size plus its first and last MiB
            digest.update(handle.read(1 << 20))
            handle.seek(size - (1 << 20))
            digest.update(handle.read(1 << 20))


def teacher_fingerprint(name_or_path: str, config) -> str:
    """Hash of the teacher's config and weight files, read without loading the model."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    directory = Path(name_or_path)
    if not directory.is_dir():  # a hub model: hash the files of its local snapshot
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(name_or_path, local_files_only=True))
    for path in sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin")):
        _hash_file(path, digest)
    return digest.hexdigest()


def _take(train_blocks: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Rows of the training blocks (memory-mapped int32) as an int64 tensor: input ids."""
    return train_blocks[torch.from_numpy(rows)].long()


class CachedTeacher(Teacher):
    """Reads the cache; the teacher model is loaded only to fill it (on the main process)
    or when a student is initialised from its weights (``load_weights``)."""

    runs_ahead = True  # reads from disk

    def __init__(self, name_or_path: str, top_k: int, cache_dir: Path, batch_size: int,
                 vocab_rows: int, dtype: str = "float32", device_map: str | None = None,
                 efficient_moe: bool = True, trust_remote_code: bool = False) -> None:
        from transformers import AutoConfig

        self.name_or_path = name_or_path
        self.config = students.sources.pretrained(AutoConfig, name_or_path, trust_remote_code,
                                                  key="teacher.hf.name_or_path")
        # The text model's vocabulary for a multimodal checkpoint (what the hf teacher runs).
        text = self.config.get_text_config() if hasattr(self.config, "get_text_config") \
            else self.config
        self.vocab_size = int(text.vocab_size)
        self.top_k = top_k
        self.vocab_rows = vocab_rows  # padding rows past the tokenizer are not tokens
        self.cache_root = Path(cache_dir)
        self.batch_size = batch_size
        self._load = lambda: HFTeacher(name_or_path, vocab_rows, dtype, device_map,
                                       efficient_moe=efficient_moe,
                                       trust_remote_code=trust_remote_code)
        self.path: Path | None = None   # the cache of this teacher and data (its key)
        self.rebuilt = False  # whether this run computed any blocks (for logs and tests)
        self.computed_blocks = 0  # how many
        self._problems: list[str] = []  # what the last open found wrong with a shard
        # block -> (index into _shard_list, row), -1: not in the cache
        self._shard_list: list[cache_shards.Shard] = []
        self._where: np.ndarray = np.zeros(0, dtype=np.int32)
        self._row: np.ndarray = np.zeros(0, dtype=np.int64)
        self.device: torch.device | None = None

    def describe(self) -> str:
        return f"`{self.name_or_path}` (frozen, its cached top-{self.top_k} outputs)"

    def load_weights(self) -> torch.nn.Module:
        return self._load().model

    def _expected_meta(self, train_blocks: torch.Tensor, train_digest: str) -> dict:
        return {"version": CACHE_VERSION,
                "teacher": teacher_fingerprint(self.name_or_path, self.config),
                "data": train_digest,
                "top_k": min(self.top_k, self.vocab_rows),
                "dtype": str(getattr(self.config, "dtype", None)),
                "vocab_limit": self.vocab_rows,
                "shape": [int(train_blocks.shape[0]), int(train_blocks.shape[1]) - 1]}

    def prepare(self, placement: Placement) -> None:
        """Open the cache, first computing (on the main process) the blocks the run reads
        that it lacks; the other processes open it after the main one."""
        accelerator, train_blocks = placement.accelerator, placement.train_blocks
        if placement.train_digest is None:
            raise ValueError("a cached teacher is keyed by the training blocks' digest: "
                             "Placement.train_digest (the data's recorded digest) is needed")
        self.device = accelerator.device
        expected = self._expected_meta(train_blocks, placement.train_digest)
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:20]
        self.path = self.cache_root / key
        num_blocks = int(train_blocks.shape[0])
        needed = np.arange(num_blocks) if placement.blocks_read is None \
            else np.asarray(placement.blocks_read(), dtype=np.int64)
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                self._open(expected, announce=True)
                missing = needed[self._where[needed] < 0]  # in the run's order
                self._report(len(needed), num_blocks, len(missing), int(train_blocks.shape[1]) - 1)
                if len(missing):
                    teacher = self._load()
                    teacher.prepare(Placement(accelerator, train_blocks))
                    self._fill(teacher, train_blocks, missing, expected)
                    self.rebuilt, self.computed_blocks = True, len(missing)
            else:
                self._open(expected, announce=False)
        absent = needed[self._where[needed] < 0]
        if len(absent):  # after a fill: the read-back failed for some shard
            raise RuntimeError(f"teacher cache {self.path} could not be read back: "
                               f"{len(absent)} of the run's blocks are missing "
                               f"({'; '.join(self._problems) or 'no shard holds them'})")

    def _open(self, expected: dict, announce: bool) -> None:
        """Map every shard that passes its checks (those already mapped are kept) and
        index its blocks; a shard that fails is removed (by the main process, saying why)
        and its blocks count as missing."""
        shards, broken = cache_shards.open_all(self.path, expected)
        self._problems = [f"{path.name}: {problem}" for path, problem in broken]
        for path, problem in broken:
            if announce:
                print(f"teacher cache {path} failed its check ({problem}); removing it: its "
                      "blocks are computed again")
                cache_shards.remove(path)
        num_blocks = expected["shape"][0]
        self._shard_list = shards
        self._where = np.full(num_blocks, -1, dtype=np.int32)
        self._row = np.zeros(num_blocks, dtype=np.int64)
        for number, shard in enumerate(shards):
            blocks = shard.blocks
            self._where[blocks] = number
            self._row[blocks] = np.arange(len(blocks))

    def _report(self, reads: int, total: int, missing: int, block_size: int) -> None:
        """What the cache holds for this run, and what a fill will write: one line."""
        if not missing:
            print(f"teacher cache: {self.path}: all {reads} blocks this run reads are there "
                  f"({int((self._where >= 0).sum())} of {total} cached): nothing to compute")
            return
        size = missing * cache_files.bytes_per_block(block_size, self.top_k) \
            + cache_files.HEADER_BYTES * -(-missing // cache_shards.shard_rows(
                block_size, self.top_k, self.batch_size))
        print(f"teacher cache: {self.path}: computing the teacher's top-{self.top_k} outputs "
              f"for {missing} of {total} training blocks (the run reads {reads}; "
              f"{reads - missing} already cached): {cache_shards.human(size)} to write")
        free = cache_shards.free_bytes(self.cache_root)
        if free < size + cache_shards.DISK_MARGIN:
            raise TeacherRefused(
                f"teacher.cached.cache_dir: the teacher cache needs "
                f"{cache_shards.human(size)} (plus {cache_shards.human(cache_shards.DISK_MARGIN)}"
                f" kept free) at {self.cache_root}, but that disk has "
                f"{cache_shards.human(free)} free. Point teacher.cached.cache_dir at a disk "
                "with room, free space, or need less: fewer train.max_steps (only the blocks "
                "the run reads are computed) or a smaller teacher.cached.top_k.")

    @torch.no_grad()
    def _fill(self, teacher: HFTeacher, train_blocks, missing: np.ndarray,
              expected: dict) -> None:
        """Compute ``missing`` (block ids, in the run's order) into new shards, under a
        progress bar, then map them."""
        from tqdm.auto import tqdm

        k = expected["top_k"]

        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
            logits = teacher.answer(_take(train_blocks, rows)[:, :-1], hidden=False).logits
            sparse = TopK.from_logits(logits, k)  # (b, s, V) -> (b, s, k) and (b, s)
            return {name: getattr(sparse, name).cpu().numpy() for name in cache_files.OUTPUTS}

        per_shard = cache_shards.shard_rows(expected["shape"][1], k, self.batch_size)
        # In a log file (not a terminal) every redraw is kept: redraw every 30 s there.
        with tqdm(total=len(missing), unit="block", desc="teacher cache",
                  mininterval=0.1 if sys.stderr.isatty() else 30.0) as bar:
            for start in range(0, len(missing), per_shard):
                cache_shards.write(self.path, expected, missing[start:start + per_shard],
                                   compute, self.batch_size, bar.update)
        self._open(expected, announce=True)  # the read-back: every shard checked again

    def outputs(self, batch: MicroBatch) -> TopK:
        blocks = batch.block_indices.cpu().numpy()
        where = self._where[blocks]
        if (where < 0).any():  # the cache was filled for the blocks the run was planned to read
            raise RuntimeError(f"teacher cache {self.path} holds no outputs for training block "
                               f"{blocks[where < 0][0]}, which this run reads")
        first = self._shard_list[0].arrays
        length, k = first["log_probs"].shape[1:]
        log_probs = np.empty((len(blocks), length, k), dtype=np.float32)
        indices = np.empty((len(blocks), length, k), dtype=np.int32)
        log_tail = np.empty((len(blocks), length), dtype=np.float32)
        for number in np.unique(where):
            chosen = where == number
            rows = self._row[blocks[chosen]]
            arrays = self._shard_list[number].arrays
            log_probs[chosen] = arrays["log_probs"][rows]
            indices[chosen] = arrays["indices"][rows]
            log_tail[chosen] = arrays["log_tail"][rows]
        return TopK(torch.from_numpy(log_probs).to(self.device),
                    torch.from_numpy(indices).long().to(self.device),
                    torch.from_numpy(log_tail).to(self.device))


RUN_CACHE = "run"              # teacher.cached.cache_dir: run -> <output_dir>/teacher_cache
RUN_CACHE_DIR = "teacher_cache"


def cache_directory(cache_dir: str | None, cache_root: Path, output_dir: Path | None) -> Path:
    """Where the caches live: ``cache_dir``; ``run``: under the run's output directory;
    null: ``<data cache>/teacher-outputs``, shared by every run (compare's variants too)."""
    if cache_dir == RUN_CACHE:
        if output_dir is None:
            raise ValueError("teacher.cached.cache_dir: 'run' puts the cache under the run's "
                             "output_dir, and this use of the teacher has none.")
        return Path(output_dir) / RUN_CACHE_DIR
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(cache_root) / "teacher-outputs"


def build(cfg, setup: TeacherSetup) -> CachedTeacher:
    hf, cached = cfg.hf, cfg.cached
    root = cache_directory(cached.cache_dir, setup.cache_root, setup.output_dir)
    return CachedTeacher(hf.name_or_path, cached.top_k, root, cached.batch_size,
                         setup.vocab_rows, hf.dtype, hf.device_map, setup.efficient_moe,
                         students.sources.is_trusted(hf.name_or_path, setup.trust_remote_code))


def check(cfg) -> None:
    """``kind: cached``: the hf section names the teacher that fills the cache."""
    if not cfg.hf.name_or_path:
        raise ValueError("teacher.hf.name_or_path: kind 'cached' needs the checkpoint "
                         "directory or hub name of the teacher whose outputs are cached.")
    if cfg.hf.shard:
        raise ValueError("teacher.hf.shard: a cached teacher is filled by one process; "
                         "sharding applies to kind 'hf' (use teacher.hf.device_map to "
                         "spread a large teacher while it fills the cache).")
