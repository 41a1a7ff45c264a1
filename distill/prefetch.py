"""Run a frozen teacher one micro-batch ahead of the student: loop machinery that wraps
any teacher whose ``runs_ahead`` is true.

The frozen teacher's outputs for the next micro-batch do not depend on the student, so
they can be computed while the student trains on this one: in a worker thread that, on
a GPU, issues its kernels on a CUDA stream of its own, so that the teacher's forward
fills the gaps the student's kernels leave. On a CPU both sides share the same cores and
OpenMP pools, and the overlap measured slower (``benchmarks/step_efficiency.py``), which
is why ``teacher.prefetch: auto`` turns it on for CUDA only.

Only teachers that say they can run ahead qualify: a teacher that trains (codistillation)
changes with every step, so its outputs cannot be computed ahead, and a teacher whose
forward uses collectives (a sharded one) would have two threads issue them in different
orders on different ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from losses.outputs import TeacherOutput
from teachers import MicroBatch, Teacher


class TeacherPrefetch:
    """``get(batch)`` returns the teacher's outputs for ``batch``, computed ahead when
    ``submit(batch)`` was called for it earlier, and synchronously otherwise (always, when
    not ``enabled``).

    ``context`` is entered around every teacher forward in the worker (autocast is
    thread-local, so the worker must enter the loop's autocast itself).
    """

    def __init__(self, teacher: Teacher, enabled: bool,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 device: torch.device | None = None) -> None:
        self.teacher = teacher
        self.enabled = enabled
        self.context = context
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher") \
            if enabled else None
        use_stream = enabled and device is not None and device.type == "cuda"
        self._stream = torch.cuda.Stream(device=device) if use_stream else None
        self._pending: tuple[int, Future] | None = None

    def _compute(self, batch: MicroBatch) -> tuple[TeacherOutput | None, torch.cuda.Event | None]:
        if self._stream is None:
            with self.context():
                return self.teacher.outputs(batch), None
        # The batch was written on the main stream: wait for it before reading it here.
        self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        with torch.cuda.stream(self._stream), self.context():
            output = self.teacher.outputs(batch)
            done = torch.cuda.Event()
            done.record(self._stream)
        return output, done

    def submit(self, batch: MicroBatch | None) -> None:
        """Start the teacher's forward for ``batch`` (the next micro-batch) in the worker."""
        if not self.enabled or batch is None:
            return
        self.wait()  # never more than one ahead
        self._pending = (id(batch), self._pool.submit(self._compute, batch))

    def get(self, batch: MicroBatch) -> TeacherOutput | None:
        if self._pending is None or self._pending[0] != id(batch):
            with self.context():
                return self.teacher.outputs(batch)
        output, done = self._pending[1].result()  # re-raises the worker's exception here
        self._pending = None
        if done is not None:
            current = torch.cuda.current_stream(self._stream.device)
            current.wait_event(done)
            for tensor in output.tensors() if output is not None else ():
                # freed only once the main stream is done with it too
                tensor.record_stream(current)
        return output

    def wait(self) -> None:
        """Block until the forward in flight (if any) has finished; it stays claimable."""
        if self._pending is not None:
            self._pending[1].result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending = None
