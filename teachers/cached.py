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
every use the meta file is checked against the expected fingerprints, and the arrays
against the sizes and sha256 checksums it recorded and for valid content
(``teachers.cache_files``); a cache that fails is rebuilt, saying why, never used.
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
from teachers import cache_files
from teachers.base import MicroBatch, Placement, Teacher, TeacherSetup
from teachers.hf import HFTeacher

CACHE_VERSION = 2  # 2: meta.json records each array file's size and sha256
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
            problem = self._open(expected)
            if problem:
                if accelerator.is_main_process:
                    if self.path.exists():  # a cache is there but unusable: say why
                        print(f"teacher cache {self.path} failed its check ({problem}); "
                              "rebuilding it")
                    teacher = self._load()
                    teacher.prepare(Placement(accelerator, train_blocks))
                    self._fill(teacher, train_blocks, expected)
                    self.rebuilt = True  # the teacher goes: the cache is all later steps need
                problem = self._open(expected)  # after a fill: the read-back
                if problem:
                    raise RuntimeError(f"teacher cache {self.path} could not be read back "
                                       f"({problem})")

    def _open(self, expected: dict) -> str | None:
        """Map the arrays if meta.json matches ``expected`` and the arrays pass their
        checks; else what failed."""
        try:
            meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError):
            return "meta.json missing or unreadable"
        if not isinstance(meta, dict) or {k: v for k, v in meta.items() if k != "files"} \
                != expected:
            return "meta.json is for another teacher, data or cache version"
        arrays, problem = cache_files.open_checked(self.path, meta)
        if arrays is not None:
            self._arrays = (arrays["log_probs"], arrays["indices"], arrays["log_tail"])
        return problem

    @torch.no_grad()
    def _fill(self, teacher: HFTeacher, train_blocks: torch.Tensor, meta: dict) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.cache_root, prefix=".staging-"))
        arrays = {name: np.lib.format.open_memmap(staging / f"{name}.npy", "w+", dtype, shape)
                  for name, (dtype, shape) in cache_files.layout(meta).items()}
        digests = cache_files.Digests(arrays)
        for start in range(0, meta["shape"][0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            logits = teacher.answer(train_blocks[rows, :-1], hidden=False).logits  # (b, s, V)
            sparse = TopK.from_logits(logits, meta["top_k"])
            for name in arrays:
                arrays[name][rows] = getattr(sparse, name).cpu().numpy()
            digests.update({name: array[rows] for name, array in arrays.items()})
        for array in arrays.values():
            array.flush()
        files = cache_files.file_records(staging, digests)
        (staging / "meta.json").write_text(json.dumps({**meta, "files": files}, sort_keys=True))
        try:
            os.replace(staging, self.path)
        except OSError:
            # Another process (a parallel run over the same teacher and data) renamed its
            # fill into place first: its copy holds the same outputs, and the read-back
            # that follows checks it. Ours goes.
            shutil.rmtree(staging, ignore_errors=True)
            if not self.path.is_dir():
                raise

    def outputs(self, batch: MicroBatch) -> TopK:
        rows = batch.block_indices.cpu().numpy()
        log_probs, indices, log_tail = (torch.from_numpy(np.ascontiguousarray(a[rows]))
                                        for a in self._arrays)
        return TopK(log_probs.to(self.device), indices.long().to(self.device),
                    log_tail.to(self.device))


def build(cfg, setup: TeacherSetup) -> CachedTeacher:
    hf, cached = cfg.hf, cfg.cached
    root = Path(cached.cache_dir) if cached.cache_dir \
        else Path(setup.cache_root) / "teacher-outputs"
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
