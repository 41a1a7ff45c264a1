"""A frozen teacher's outputs computed once and read back from disk.

For every training block the teacher's top-k log-probabilities, their token ids and the log
of the remaining (tail) mass are stored as memory-mapped ``.npy`` arrays:

    <cache_dir>/<key>/log_probs.npy   float32 (blocks, block_size, k)
    <cache_dir>/<key>/indices.npy     int32   (blocks, block_size, k)
    <cache_dir>/<key>/log_tail.npy    float32 (blocks, block_size)
    <cache_dir>/<key>/meta.json       fingerprints, shapes; written last

The key hashes the teacher's fingerprint (its config and weight files), the data's (the
packed training tokens), k, the dtype and the vocabulary limit, so any later run over the
same teacher and data reuses the cache, and a changed teacher or corpus gets a new one. On
every use the meta file is checked against the expected fingerprints and the arrays'
shapes; a mismatched, partial or unreadable cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import students
from losses.outputs import TopK
from teachers.base import MicroBatch, Placement, Teacher, TeacherSetup
from teachers.hf import HFTeacher

CACHE_VERSION = 1
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


def data_fingerprint(train_blocks: torch.Tensor) -> str:
    digest = hashlib.sha256(str(tuple(train_blocks.shape)).encode())
    digest.update(train_blocks.contiguous().numpy().tobytes())
    return digest.hexdigest()


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
        self.path: Path | None = None
        self.rebuilt = False  # whether this run filled the cache (for logs and tests)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.device: torch.device | None = None

    def describe(self) -> str:
        return f"`{self.name_or_path}` (frozen, its cached top-{self.top_k} outputs)"

    def load_weights(self) -> torch.nn.Module:
        return self._load().model

    def _expected_meta(self, train_blocks: torch.Tensor) -> dict:
        return {"version": CACHE_VERSION,
                "teacher": teacher_fingerprint(self.name_or_path, self.config),
                "data": data_fingerprint(train_blocks),
                "top_k": min(self.top_k, self.vocab_rows),
                "dtype": str(getattr(self.config, "dtype", None)),
                "vocab_limit": self.vocab_rows,
                "shape": [int(train_blocks.shape[0]), int(train_blocks.shape[1]) - 1]}

    def prepare(self, placement: Placement) -> None:
        """Open the cache for these blocks, filling it first when it is absent or stale."""
        accelerator, train_blocks = placement.accelerator, placement.train_blocks
        self.device = accelerator.device
        expected = self._expected_meta(train_blocks)
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:20]
        self.path = self.cache_root / key
        with accelerator.main_process_first():  # the main process fills, the others read
            if not self._open(expected):
                if accelerator.is_main_process:
                    teacher = self._load()
                    teacher.prepare(Placement(accelerator, train_blocks))
                    self._fill(teacher, train_blocks, expected)
                    self.rebuilt = True  # the teacher goes: the cache is all later steps need
                if not self._open(expected):
                    raise RuntimeError(f"teacher cache {self.path} could not be read back")

    def _open(self, expected: dict) -> bool:
        """Map the arrays if meta.json matches ``expected`` and the shapes agree."""
        try:
            meta = json.loads((self.path / "meta.json").read_text())
            if meta != expected:
                return False
            arrays = tuple(np.load(self.path / f"{name}.npy", mmap_mode="r")
                           for name in ("log_probs", "indices", "log_tail"))
        except (OSError, ValueError, json.JSONDecodeError):
            return False
        blocks, length = expected["shape"]
        shape = (blocks, length, expected["top_k"])
        if arrays[0].shape != shape or arrays[1].shape != shape \
                or arrays[2].shape != (blocks, length):
            return False
        self._arrays = arrays
        return True

    @torch.no_grad()
    def _fill(self, teacher: HFTeacher, train_blocks: torch.Tensor, meta: dict) -> None:
        if self.path.exists():
            print(f"teacher cache {self.path} is stale or incomplete; rebuilding it")
            shutil.rmtree(self.path, ignore_errors=True)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.cache_root, prefix=".staging-"))
        blocks, length = meta["shape"]
        k = meta["top_k"]
        open_array = np.lib.format.open_memmap
        log_probs = open_array(staging / "log_probs.npy", "w+", np.float32, (blocks, length, k))
        indices = open_array(staging / "indices.npy", "w+", np.int32, (blocks, length, k))
        log_tail = open_array(staging / "log_tail.npy", "w+", np.float32, (blocks, length))
        for start in range(0, blocks, self.batch_size):
            rows = slice(start, start + self.batch_size)
            logits = teacher.answer(train_blocks[rows, :-1], hidden=False).logits  # (b, s, V)
            sparse = TopK.from_logits(logits, k)
            log_probs[rows] = sparse.log_probs.cpu().numpy()
            indices[rows] = sparse.indices.cpu().numpy()
            log_tail[rows] = sparse.log_tail.cpu().numpy()
        for array in (log_probs, indices, log_tail):
            array.flush()
        (staging / "meta.json").write_text(json.dumps(meta, sort_keys=True))
        os.replace(staging, self.path)

    def outputs(self, batch: MicroBatch) -> TopK:
        rows = batch.block_indices.cpu().numpy()
        log_probs, indices, log_tail = (torch.from_numpy(np.ascontiguousarray(a[rows]))
                                        for a in self._arrays)
        return TopK(log_probs.to(self.device), indices.long().to(self.device),
                    log_tail.to(self.device))


def build(cfg, setup: TeacherSetup) -> CachedTeacher:
    hf, cached = cfg.hf, cfg.cached
    root = Path(cached.cache_dir) if cached.cache_dir else Path(setup.cache_root) / "teacher-outputs"
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
