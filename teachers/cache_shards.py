"""The teacher cache on disk: one directory per teacher and data (its key), holding
append-only shards, each the teacher's outputs for some training blocks.

    <cache_dir>/<key>/shard-<id>/log_probs.npy  float32 (rows, block_size, k)
                                 indices.npy    int32   (rows, block_size, k)
                                 log_tail.npy   float32 (rows, block_size)
                                 blocks.npy     int64   (rows,)  the training block of each row
                                 meta.json      the key's fingerprints, rows, and each
                                                file's size and sha256; written last

A shard is written into a staging directory beside it and renamed into place whole, so a
reader sees a whole shard or none; its name hashes its block list, so two processes that
fill the same blocks at once race for one name and the loser drops its copy (the same
outputs). A run that needs blocks the shards lack adds a shard of those alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from teachers import cache_files
from teachers.cache_files import BLOCKS, OUTPUTS

SHARD_PREFIX = "shard-"
SHARD_BYTES = 2 << 30      # one fill writes shards of about this size: a fill stopped half
#                            way keeps its finished shards, and the next run goes on from them
DISK_MARGIN = 256 << 20    # free space a fill leaves on the disk, beyond what it writes


@dataclass
class Shard:
    path: Path
    arrays: dict[str, np.memmap]   # OUTPUTS and BLOCKS, mapped read-only

    @property
    def blocks(self) -> np.ndarray:
        return np.asarray(self.arrays[BLOCKS])


def human(size: float) -> str:
    """Bytes as a short figure: 1.08 GB, 512.0 MB (decimal units, as `df -H` prints)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} TB"


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def open_all(key_dir: Path, expected: dict) -> tuple[list[Shard], list[tuple[Path, str]]]:
    """Every shard of the cache that passes its checks, and (path, what failed) for each
    that does not. ``expected``: the fingerprints every shard's meta.json must hold."""
    found: list[tuple[Path, dict]] = []
    broken: list[tuple[Path, str]] = []
    paths = sorted(key_dir.glob(f"{SHARD_PREFIX}*")) if key_dir.is_dir() else []
    for path in paths:
        meta = _read_meta(path)
        if meta is None:
            broken.append((path, "meta.json missing or unreadable"))
        elif {k: v for k, v in meta.items() if k not in ("files", "rows")} != expected \
                or not isinstance(meta.get("rows"), int):
            broken.append((path, "meta.json is for another teacher, data or cache version"))
        else:
            found.append((path, meta))
    # The whole cache's size decides between the whole and the sampled pass of each shard.
    total = sum(r.get("bytes", 0) for _, meta in found
                for r in (meta.get("files") or {}).values() if isinstance(r, dict))
    shards = []
    for path, meta in found:
        arrays, problem = cache_files.open_checked(path, meta, total)
        if problem:
            broken.append((path, problem))
        else:
            shards.append(Shard(path, arrays))
    return shards, broken


def remove(path: Path) -> None:
    """Take a shard out of the cache: renamed first (a reader listing the cache never sees
    it half deleted), then deleted."""
    hidden = path.with_name(f".removed-{path.name}-{os.getpid()}")
    try:
        os.replace(path, hidden)
    except OSError:  # already gone (another process removed it)
        return
    shutil.rmtree(hidden, ignore_errors=True)


def shard_rows(block_size: int, top_k: int, batch_size: int) -> int:
    """Blocks per shard: about SHARD_BYTES, a whole number of teacher batches."""
    per_block = cache_files.bytes_per_block(block_size, top_k)
    batches = max(1, SHARD_BYTES // (per_block * batch_size))
    return batches * batch_size


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or would: its first existing parent)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def write(key_dir: Path, expected: dict, blocks: np.ndarray,
          compute: Callable[[np.ndarray], dict[str, np.ndarray]], batch_size: int,
          advance: Callable[[int], None]) -> Path:
    """Write one shard holding ``compute(rows)`` (OUTPUTS -> arrays, one row per block)
    for ``blocks``, ``batch_size`` blocks at a time, calling ``advance(n)`` after each
    batch; returns its path. The arrays are hashed as they are written (no second pass)."""
    name = SHARD_PREFIX + hashlib.sha256(blocks.astype(np.int64).tobytes()).hexdigest()[:20]
    target = key_dir / name
    key_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=key_dir, prefix=".staging-"))
    try:
        meta = {**expected, "rows": int(len(blocks))}
        arrays = {n: np.lib.format.open_memmap(staging / f"{n}.npy", "w+", dtype, shape)
                  for n, (dtype, shape) in cache_files.layout(meta).items()}
        arrays[BLOCKS][:] = blocks
        digests = cache_files.Digests(arrays)
        digests.update({BLOCKS: np.ascontiguousarray(arrays[BLOCKS])})
        for start in range(0, len(blocks), batch_size):
            rows = blocks[start:start + batch_size]
            outputs = compute(rows)
            window = slice(start, start + len(rows))
            for n in OUTPUTS:
                arrays[n][window] = outputs[n]
            digests.update({n: arrays[n][window] for n in OUTPUTS})
            advance(len(rows))
        for array in arrays.values():
            array.flush()
        files = cache_files.file_records(staging, digests)
        (staging / "meta.json").write_text(json.dumps({**meta, "files": files}, sort_keys=True))
    except BaseException:  # a failed or interrupted fill leaves nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, target)
    except OSError:
        # Another process (a parallel run over the same teacher and data) renamed its shard
        # of the same blocks into place first: it holds the same outputs, and the read-back
        # that follows checks it. Ours goes.
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target
