"""The communication thread of data-parallel training: the one thread that calls MPI during a
step. It runs the reductions it is given in submission order, so every rank issues the same
collectives in the same order, and lets a job leave its bucket in flight (``InFlight``: an
async torch.distributed reduction, or a cast back on another thread) to be finished, in order,
once it completes, at most two at a time. Without MPI_THREAD_SERIALIZED it runs each job
inline on the caller's thread instead.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass


@dataclass
class InFlight:
    """A bucket not finished yet: its reduction in flight (torch.distributed's async work; the
    work's future, not work.is_completed(), which under gloo can still say False in the
    future's done-callback), or its cast back from the wire dtype on the cast thread."""
    future: object  # torch.futures.Future or concurrent.futures.Future: done(), add_done_callback()
    finish: object  # waits for it and completes the bucket, on the communication thread


_WAKE = object()  # queued when a reduction in flight completes


class CommThread:
    """Runs reductions in submission order; inline when MPI cannot take a second thread. A job
    may return an ``InFlight``: the thread goes on with the next job, then finishes the
    reductions in order as each completes, with at most two in flight (as ProcessGroupGloo's
    two workers carry DDP's buckets), so one bucket's casts overlap another's transfer.
    Records busy time (while anything runs or is in flight) and the first error."""

    MAX_IN_FLIGHT = 2

    def __init__(self, threaded: bool):
        self.threaded = threaded
        self.busy_s = 0.0
        self._error: BaseException | None = None
        self._outstanding = 0
        self._cv = threading.Condition()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[InFlight] = collections.deque()
        self._busy_since: float | None = None
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="mpirt-comm", daemon=True)
            self._thread.start()

    def _call(self, fn):
        try:
            if self._error is None:
                return fn()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self._error = e
        return None

    def _start(self, job) -> None:
        if self._busy_since is None:
            self._busy_since = time.perf_counter()
        started = self._call(job)
        if isinstance(started, InFlight):
            self._pending.append(started)
            if self.threaded:
                started.future.add_done_callback(lambda _: self._q.put(_WAKE))
            while self._pending and (len(self._pending) > self.MAX_IN_FLIGHT or not self.threaded):
                self._finish_first()
        else:
            self._done_one()
        self._idle()

    def _finish_first(self) -> None:
        self._call(self._pending.popleft().finish)
        self._done_one()

    def _done_one(self) -> None:
        if self.threaded:
            with self._cv:
                self._outstanding -= 1
                self._cv.notify_all()

    def _idle(self) -> None:
        if self._busy_since is not None and not self._pending:
            self.busy_s += time.perf_counter() - self._busy_since
            self._busy_since = None

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is _WAKE:
                while self._pending and self._pending[0].future.done():
                    self._finish_first()
                self._idle()
            elif job is None:
                while self._pending:
                    self._finish_first()
                self._idle()
                return
            else:
                self._start(job)

    def submit(self, job) -> None:
        if not self.threaded:
            self._start(job)
            return
        with self._cv:
            self._outstanding += 1
        self._q.put(job)

    def drain(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._outstanding == 0)
        if self._error is not None:
            e, self._error = self._error, None
            raise RuntimeError(f"gradient allreduce failed: {e}") from e

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued and stop; with ``timeout``, give up waiting after that long
        (the thread is a daemon: a collective the other ranks will never join must not keep
        a failing rank from exiting)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            self._thread = None
