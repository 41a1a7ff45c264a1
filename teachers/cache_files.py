"""The teacher cache's array files: their layout, their checksums, and the checks that a
cache shard still holds what its fill wrote before any run trains on it.

A shard is one directory of rows (``teachers.cached`` describes the whole cache): the
arrays below plus ``blocks.npy``, the training block each row holds. Every open
(``open_checked``) checks, in this order:

* each array file's size against the size meta.json recorded (truncated or extended);
* the arrays' shapes against the shard's rows, block length and k;
* ``blocks.npy``: each block id within [0, blocks of the training data) and none twice;
* the content, chunk by chunk over the memory maps (about 64 MiB at a time): every token id
  within [0, vocab_limit); every log-probability finite and <= 0; every log tail mass <= 0
  or -inf; and at every position the top-k probabilities plus the tail summing to 1 (to
  1e-3 in log space): a zeroed, shifted or half-written ``log_probs.npy`` breaks that sum.
  Descending order is not checked: ties leave it unspecified;
* the sha256 of each array file against the one meta.json recorded at fill time (the fill
  hashes the rows as it writes them, so this costs it no extra pass). Only the checksum
  sees rows that are valid but not these (e.g. two blocks swapped).

Cost: the whole pass (content checks and sha256 in one read of the files) runs at about
1 GB/s on one core when the files are in the page cache (0.54 GB in 0.4-0.7 s, measured on
a loaded 2-core machine), at disk speed when they are not. A cache whose array files total
(over all its shards) at most ``FULL_CHECK_BYTES`` (1 GiB) gets it on every open (about a second at the limit).
A larger one (a real run's cache can be 100 GB: minutes per pass) gets it when a process
first sees its files as they are now: right after the fill (the read-back) and after
anything wrote, copied or replaced a file. A passing whole pass is recorded in
``verified.json`` with each file's (size, mtime_ns, ctime_ns, inode); while those still
match, an open skips the checksum and content-checks ``SAMPLE_BLOCKS`` evenly spaced
blocks from a random offset (64 of 10^5 blocks × 2048 × k 128: about 130 MB read); the
other processes of a run, which open after the main one, find its record. A write
through the file system moves ctime, which no tool can set back (to the file system's
timestamp resolution), so what this leaves unchecked is damage beneath the file system
(bit rot) outside the sampled blocks. If ``verified.json`` cannot be written (a
read-only cache) every open gets the whole pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

FULL_CHECK_BYTES = 1 << 30    # caches up to this size are read whole on every open
SAMPLE_BLOCKS = 64            # blocks content-checked on an open that skips the whole pass
_CHUNK_BYTES = 64 << 20       # bounds the memory of a pass over the memory maps
_ABOVE_ZERO = 1e-4            # log-probabilities are <= 0; slack for rounding only
_MASS_SLACK = 1e-3            # float32 top-k + tail sums stay within 1e-5 of log 1
_VERIFIED = "verified.json"


OUTPUTS = ("log_probs", "indices", "log_tail")  # the teacher's outputs, row by row
BLOCKS = "blocks"                                # the training block of each row


def layout(meta: dict) -> dict[str, tuple[type, tuple[int, ...]]]:
    """Array name -> (dtype, shape) of a shard described by ``meta`` (its ``rows``; the
    block length of the cache's ``shape``; ``top_k``)."""
    rows, (_, length), k = meta["rows"], meta["shape"], meta["top_k"]
    return {"log_probs": (np.float32, (rows, length, k)),
            "indices": (np.int32, (rows, length, k)),
            "log_tail": (np.float32, (rows, length)),
            BLOCKS: (np.int64, (rows,))}


def bytes_per_block(block_size: int, top_k: int) -> int:
    """Disk bytes one block takes in a cache: float32 log-probabilities and int32 ids at
    each position (8 bytes x k), a float32 log tail (4 bytes), and its int64 block id."""
    return block_size * top_k * 8 + block_size * 4 + 8


HEADER_BYTES = 4 * 128 + 4096  # per shard: a .npy header per array, meta.json (about)


class Digests:
    """The sha256 of each .npy file, fed its header now and then its rows in file order:
    the digest of the whole file without reading it again."""

    def __init__(self, arrays: dict[str, np.memmap]) -> None:
        self._hashes = {}
        for name, array in arrays.items():
            with open(array.filename, "rb") as handle:
                self._hashes[name] = hashlib.sha256(handle.read(array.offset))

    def update(self, rows: dict[str, np.ndarray]) -> None:
        """Rows of each array (C-contiguous), continuing where the last ones ended."""
        for name, values in rows.items():
            self._hashes[name].update(values)

    def hexdigests(self) -> dict[str, str]:
        return {name: digest.hexdigest() for name, digest in self._hashes.items()}


def file_records(directory: Path, digests: Digests) -> dict[str, dict]:
    """meta.json's ``files`` entry: each array file's size and sha256."""
    return {f"{name}.npy": {"bytes": (directory / f"{name}.npy").stat().st_size,
                            "sha256": digest}
            for name, digest in digests.hexdigests().items()}


def content_problem(log_probs: np.ndarray, indices: np.ndarray, log_tail: np.ndarray,
                    vocab_limit: int) -> str | None:
    """What is wrong with these rows of a cache, or None: (..., k), (..., k), (...)."""
    outside = (indices < 0) | (indices >= vocab_limit)
    if outside.any():
        return f"indices.npy: token id {indices[outside][0]} outside [0, {vocab_limit})"
    if not np.isfinite(log_probs).all():
        return "log_probs.npy: a value that is not finite"
    if (log_probs > _ABOVE_ZERO).any():
        return f"log_probs.npy: log-probability {log_probs.max():g} above 0"
    if np.isnan(log_tail).any():
        return "log_tail.npy: a log tail mass that is NaN"
    if (log_tail > _ABOVE_ZERO).any():  # -inf is an empty tail (k = vocabulary)
        return f"log_tail.npy: log tail mass {log_tail.max():g} above 0"
    # The top-k probabilities plus the tail sum to 1 at every position. Every log value is
    # now <= ~0, so exp cannot overflow; a real position's largest probability is >= 1/V,
    # far from underflow.  # (..., k) -> (...)
    mass = np.exp(log_probs).sum(axis=-1, dtype=np.float32) + np.exp(log_tail)
    with np.errstate(divide="ignore"):  # a mass of 0 (log -inf) fails like any other
        off = np.abs(np.log(mass)) > _MASS_SLACK
    if off.any():
        return (f"log_probs.npy, log_tail.npy: top-k and tail probabilities sum to "
                f"{mass[off][0]:g} at a position, not 1")
    return None


def blocks_problem(blocks: np.ndarray, num_blocks: int) -> str | None:
    """What is wrong with a shard's block ids, or None."""
    outside = (blocks < 0) | (blocks >= num_blocks)
    if outside.any():
        return f"blocks.npy: block {blocks[outside][0]} outside [0, {num_blocks})"
    if len(np.unique(blocks)) != len(blocks):
        return "blocks.npy: a block listed twice"
    return None


def open_checked(directory: Path, meta: dict, cache_bytes: int | None = None
                 ) -> tuple[dict[str, np.memmap] | None, str | None]:
    """The shard's arrays mapped read-only and None, or None and what failed its checks.
    ``meta`` is the shard's meta.json, already matched against the expected fingerprints;
    ``cache_bytes``: the array bytes of the whole cache, which decide between the whole
    and the sampled pass (None: this shard's own)."""
    records = meta.get("files")
    expected = layout(meta)
    if not _well_formed(records, {f"{name}.npy" for name in expected}):
        return None, "meta.json records no size and checksum for each array file"
    arrays = {}
    for name, (dtype, shape) in expected.items():
        path = directory / f"{name}.npy"
        try:  # the size first: a truncated file cannot even be mapped
            size = path.stat().st_size
            if size != records[f"{name}.npy"]["bytes"]:
                return None, f"{name}.npy: {size} bytes, meta.json recorded " \
                             f"{records[f'{name}.npy']['bytes']}"
            arrays[name] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            return None, f"{name}.npy: unreadable ({error})"
        if arrays[name].dtype != dtype or arrays[name].shape != shape:
            return None, f"{name}.npy: {arrays[name].dtype} {arrays[name].shape}, " \
                         f"expected {np.dtype(dtype)} {shape}"
    try:  # taken before the pass: a write during it leaves the record already stale
        stats = {name: _stat(directory / name) for name in sorted(records) + ["meta.json"]}
    except OSError as error:  # removed while being opened
        return None, f"unreadable ({error})"
    problem = blocks_problem(np.asarray(arrays[BLOCKS]), meta["shape"][0])
    if problem:  # small (8 bytes a row): read whole on every open
        return None, problem
    total = sum(record["bytes"] for record in records.values())
    total = total if cache_bytes is None else cache_bytes
    if total > FULL_CHECK_BYTES and _read_verified(directory) == stats:
        return arrays, _sampled_pass(arrays, meta["vocab_limit"])
    problem = _whole_pass(arrays, meta["vocab_limit"], records)
    if problem is None and total > FULL_CHECK_BYTES:
        _write_verified(directory, stats)
    return (None, problem) if problem else (arrays, None)


def _well_formed(records, names: set[str]) -> bool:
    return isinstance(records, dict) and set(records) == names and all(
        isinstance(r, dict) and isinstance(r.get("bytes"), int)
        and isinstance(r.get("sha256"), str) for r in records.values())


def _whole_pass(arrays: dict[str, np.memmap], vocab_limit: int,
                records: dict[str, dict]) -> str | None:
    """Content-check every row and recompute every checksum, in one read of the files."""
    digests = Digests(arrays)
    blocks = arrays["indices"].shape[0]
    block_bytes = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in arrays.values())
    step = max(1, _CHUNK_BYTES // max(block_bytes, 1))
    for start in range(0, blocks, step):
        rows = {name: a[start:start + step] for name, a in arrays.items()}
        problem = content_problem(rows["log_probs"], rows["indices"], rows["log_tail"],
                                  vocab_limit)
        if problem:
            return problem
        digests.update(rows)
    for name, digest in digests.hexdigests().items():
        if digest != records[f"{name}.npy"]["sha256"]:
            return f"{name}.npy: checksum mismatch"
    return None


def _sampled_pass(arrays: dict[str, np.memmap], vocab_limit: int) -> str | None:
    """Content-check SAMPLE_BLOCKS evenly spaced blocks from a random offset, so that
    repeated opens cover different blocks."""
    blocks = arrays["indices"].shape[0]
    if blocks == 0:
        return None
    stride = max(1, blocks // SAMPLE_BLOCKS)
    picks = np.arange(np.random.default_rng().integers(stride), blocks, stride)[:SAMPLE_BLOCKS]
    rows = {name: a[picks] for name, a in arrays.items()}
    return content_problem(rows["log_probs"], rows["indices"], rows["log_tail"], vocab_limit)


def _stat(path: Path) -> list[int]:
    # ctime and inode as well as mtime: a tool may set mtime back, never ctime.
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def _read_verified(directory: Path) -> dict | None:
    try:
        return json.loads((directory / _VERIFIED).read_text())
    except (OSError, ValueError):
        return None


def _write_verified(directory: Path, stats: dict) -> None:
    """Record a passed whole pass; written whole then renamed, so a reader never sees half.
    A read-only cache keeps no record: its every open is then a whole pass."""
    try:
        handle, staging = tempfile.mkstemp(dir=directory, prefix=".verified-")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(stats, out)
        os.replace(staging, directory / _VERIFIED)
    except OSError:
        Path(staging).unlink(missing_ok=True)
