"""Progress of a comparison: which run is going, and one bar over the optimizer steps of
all runs with an estimate of the time left.

The runs are subprocesses, each waited on by a worker thread; the main thread polls the
running runs' metrics.jsonl (about once a second) for their latest logged step, so the
bar moves as the runs train, without any channel between the processes but the files they
write anyway. Runs finished before (reused) count as done from the start.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from distill.progress import bar_interval


class StepWatcher:
    """The latest step logged in a growing metrics.jsonl, read incrementally: each poll
    reads only the bytes appended since the last (an evaluation row of a large MoE model
    can be tens of kB, so reading a fixed tail would not do)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset, self.partial, self.step, self.inode = 0, b"", 0, None

    def poll(self) -> int:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return self.step
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            # new or rewritten (a resumed run rewrites its log up to its checkpoint)
            self.offset, self.partial, self.step, self.inode = 0, b"", 0, stat.st_ino
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                self.step = max(self.step, row["step"])
        return self.step


@dataclass
class Job:
    announce: str       # printed when it starts, e.g. "run 3 of 36: cosine seed 1" (or "")
    label: str          # shown beside the bar while it runs
    metrics: Path       # its metrics.jsonl
    steps: int          # its optimizer steps
    done: bool = False  # finished before: counted done, not run


def run_all(jobs: Sequence[Job], work: Callable[[int], Any], parallel: int,
            desc: str = "steps", poll_s: float = 1.0
            ) -> tuple[dict[int, Any], dict[int, BaseException]]:
    """Run ``work(i)`` for every job not done, ``parallel`` at a time, under one progress
    bar. Returns the results and the failures, each by job index; a failure does not stop
    the other jobs (each is a separate run, which can be resumed)."""
    from tqdm.auto import tqdm

    total = sum(job.steps for job in jobs)
    before = sum(job.steps for job in jobs if job.done)
    watchers: dict[int, StepWatcher] = {}
    lock = threading.Lock()

    def start(index: int) -> Any:
        with lock:
            watchers[index] = StepWatcher(jobs[index].metrics)
        return work(index)

    results: dict[int, Any] = {}
    failures: dict[int, BaseException] = {}
    announced: set[int] = set()
    bar = tqdm(total=total, initial=before, unit="step", desc=desc, dynamic_ncols=True,
               mininterval=bar_interval())
    pool = ThreadPoolExecutor(max_workers=parallel)
    futures: dict[Future, int] = {pool.submit(start, i): i
                                  for i, job in enumerate(jobs) if not job.done}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            with lock:
                running = dict(watchers)
            for index in sorted(set(running) - announced):
                if jobs[index].announce:
                    bar.write(jobs[index].announce)
                announced.add(index)
            for future in finished:
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as exc:  # reported by the caller, once all have run
                    failures[index] = exc
                    bar.write(f"{jobs[index].label}: failed")
            steps = before + sum(jobs[i].steps if i in results else
                                 min(watcher.poll(), jobs[i].steps)
                                 for i, watcher in running.items())
            bar.update(max(0, steps - bar.n))
            bar.set_postfix_str(", ".join(jobs[i].label for i in sorted(running)
                                          if i not in results and i not in failures))
    finally:
        # Ctrl-C: runs not yet started never start; running ones stop on their own signal
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results, failures
