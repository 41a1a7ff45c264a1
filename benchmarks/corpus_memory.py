"""Peak memory of reading and tokenising a corpus of huge single-line files.

The issue measured 9.4 GB for one 50 MB single-line file next to another. Here two such
files (English-like words on one line each) go through ``prepare_data`` exactly as a run's
data does (reading, BPE training on the training split, tokenising in pieces, writing the
block cache) in a child process; the figure is that child's peak resident memory
(ru_maxrss) next to the baseline of a child that only imports the same modules, measured in
the same run.

    python benchmarks/corpus_memory.py                   # two 50 MB files (a few minutes)
    python benchmarks/corpus_memory.py --megabytes 5     # a quick look
    python benchmarks/corpus_memory.py --tokenizer DIR   # a saved tokenizer instead of BPE
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.data import prepare_data
start = time.perf_counter()
summary = ""
if {work}:
    cfg = DataConfig(source="files", files={files!r}, tokenizer={tokenizer!r},
                     vocab_size=4096, block_size=128, validation_fraction=0.001,
                     cache_dir={cache!r})
    summary = prepare_data(cfg, load_corpus(cfg)).summary
print(json.dumps({{"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - start, "summary": summary}}))
"""


def _write_single_line(path: Path, megabytes: int, seed: int) -> None:
    """About ``megabytes`` MB of space-separated words, without a newline."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]
    chunk = " ".join(rng.choice(words) for _ in range(200_000)) + " "
    with open(path, "w") as handle:
        written = 0
        while written < megabytes * 1_000_000:
            handle.write(chunk)
            written += len(chunk)


def _child(files: list[str], tokenizer: str, cache: str, work: bool) -> dict:
    code = _CHILD.format(repo=str(REPO), files=files, tokenizer=tokenizer, cache=cache,
                         work=work)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50, help="size of each file")
    parser.add_argument("--tokenizer", default="bpe", help="bpe (trained) or a saved one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corpus-memory-") as tmp:
        files = []
        for index in range(2):
            path = Path(tmp) / f"single-line-{index}.txt"
            _write_single_line(path, args.megabytes, seed=index)
            files.append(str(path))
        sizes = sum(Path(f).stat().st_size for f in files) / 1e6
        baseline = _child(files, args.tokenizer, str(Path(tmp) / "cache"), work=False)
        measured = _child(files, args.tokenizer, str(Path(tmp) / "cache"), work=True)
    print(f"corpus: 2 single-line files, {sizes:.0f} MB in all")
    print(measured["summary"])
    print(f"peak RSS, imports only:        {baseline['peak_kib'] / 1024:8.0f} MiB")
    print(f"peak RSS, read and tokenised:  {measured['peak_kib'] / 1024:8.0f} MiB "
          f"({measured['seconds']:.0f} s)")
    print(f"above the imports:             {(measured['peak_kib'] - baseline['peak_kib']) / 1024:8.0f} MiB "
          f"({(measured['peak_kib'] - baseline['peak_kib']) / 1024 / sizes:.1f} MiB per MB "
          "of corpus; the issue measured 9.4 GB for these sizes)")


if __name__ == "__main__":
    main()
