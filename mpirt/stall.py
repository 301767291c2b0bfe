"""Stall inspector: when a collective waits too long, find out which ranks have not arrived.

No coordinator and no cost on the fast path: the communication thread only notes where it
is (``enter``/``leave``). A watchdog thread on every rank answers position queries on a
private communicator; when its own rank has waited past the warning threshold it asks every
rank where it is, and the lowest waiting rank prints who is missing and where each of them
is (step, bucket, or outside any collective) and the line its main thread is running, read
from the interpreter by the watchdog thread: the answer to "who is stuck, and on what"
(pytorch#118369, NVIDIA/nccl#1260). Past the abort threshold (when set) that rank writes an
error record and aborts the job. Needs MPI_THREAD_MULTIPLE; without it the inspector is off
and says so once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

from mpirt import errors
from mpirt.comm import MPI
from mpirt.console import say
from mpirt.frames import locate

_QUERY, _REPLY = 7101, 7102


@dataclass(frozen=True)
class Position:
    rank: int
    host: str
    step: int
    what: str  # the collective waited on, or "" outside any collective
    bucket: int
    nbuckets: int
    age: float  # seconds in this position
    where: str = ""  # the user's line the rank's main thread is running (``locate``)
    inside: str = ""  # the library frame it is running deeper down, if any

    @property
    def key(self) -> tuple:
        return (self.step, self.what, self.bucket)

    @property
    def place(self) -> str:
        """Where in the step: the bucket for a gradient allreduce (``nbuckets`` 0: none)."""
        return f"of step {self.step}" + (f", bucket {self.bucket + 1}/{self.nbuckets}" if self.nbuckets else "")

    def describe(self) -> str:
        if not self.what:
            text = f"rank {self.rank} ({self.host}): at step {self.step}, outside any collective for {self.age:.0f} s"
        else:
            text = f"rank {self.rank} ({self.host}): waiting in {self.what} {self.place} for {self.age:.0f} s"
        return text + (f"\n    its main thread is at {self.where}" if self.where else "") + (
            f"\n    inside {self.inside}" if self.inside else "")


class StallInspector:
    def __init__(self, comm, warn_s: float, abort_s: float = 0.0, poll_s: float = 0.2, reply_window_s: float = 3.0):
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.warn_s, self.abort_s, self.poll_s, self.window = warn_s, abort_s, poll_s, reply_window_s
        self.host = socket.gethostname()
        self._where = (0, "", -1, 0, time.monotonic())  # step, what, bucket, nbuckets, since
        self._step = 0
        self._stop = threading.Event()
        self._pending: list = []
        self.reports: list[str] = []
        self.enabled = warn_s > 0 and self.size > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE
        if warn_s > 0 and self.size > 1 and not self.enabled and self.rank == 0:
            say("mpirt: stall inspector off: MPI was not initialised with MPI_THREAD_MULTIPLE", err=True)
        self._comm = comm.Dup() if self.enabled else None
        self._thread = None
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="mpirt-stall", daemon=True)
            self._thread.start()

    # Fast path, called by the communication thread.
    def enter(self, step: int, what: str, bucket: int, nbuckets: int) -> None:
        self._where = (step, what, bucket, nbuckets, time.monotonic())

    def leave(self, step: int) -> None:
        self._where = (step, "", -1, 0, time.monotonic())

    def position(self, with_line: bool = False) -> Position:
        step, what, bucket, nbuckets, since = self._where
        frame = sys._current_frames().get(threading.main_thread().ident) if with_line else None
        return Position(self.rank, self.host, step, what, bucket, nbuckets, time.monotonic() - since,
                        *(locate(frame) if frame is not None else ("", "")))

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        for req in self._pending:
            if not req.Test():
                req.Free()  # an answer nobody collects; MPI completes it in the background
        self._comm.Free()

    # Watchdog thread.
    def _answer(self) -> None:
        status = MPI.Status()
        while self._comm.iprobe(source=MPI.ANY_SOURCE, tag=_QUERY, status=status):
            asker = status.Get_source()
            token = self._comm.recv(source=asker, tag=_QUERY)
            answer = asdict(self.position(with_line=True))
            self._pending.append(self._comm.isend((token, answer), dest=asker, tag=_REPLY))
        self._pending = [r for r in self._pending if not r.Test()]

    def _survey(self, mine: Position) -> dict[int, Position]:
        token = (self.rank, mine.key, time.monotonic())
        for peer in range(self.size):
            if peer != self.rank:
                self._pending.append(self._comm.isend(token, dest=peer, tag=_QUERY))
        answers = {self.rank: mine}
        deadline = time.monotonic() + self.window
        status = MPI.Status()
        while len(answers) < self.size and time.monotonic() < deadline and not self._stop.is_set():
            self._answer()
            while self._comm.iprobe(source=MPI.ANY_SOURCE, tag=_REPLY, status=status):
                got_token, pos = self._comm.recv(source=status.Get_source(), tag=_REPLY)
                if got_token == token:
                    answers[pos["rank"]] = Position(**pos)
            time.sleep(0.01)
        return answers

    def _report(self, mine: Position, answers: dict[int, Position]) -> str | None:
        waiting = sorted(r for r, p in answers.items() if p.key == mine.key)
        if waiting[0] != self.rank:
            return None  # a lower waiting rank reports
        missing = [r for r in range(self.size) if r not in waiting]
        lines = [f"mpirt: stall: {len(waiting)} of {self.size} ranks have waited {mine.age:.0f} s in {mine.what} "
                 f"{mine.place}; missing ranks: " + ", ".join(map(str, missing))]
        for r in missing:
            lines.append("  " + (answers[r].describe() if r in answers else
                                 f"rank {r}: no answer (hung holding the interpreter, or dead)"))
        by_line: dict[str, list[int]] = {}
        for r in waiting:
            by_line.setdefault(answers[r].where, []).append(r)
        for where, ranks in by_line.items():  # ranks that reach one collective from different lines show it
            lines.append(f"  waiting: ranks {', '.join(map(str, ranks))}" + (f", at {where}" if where else ""))
        lines.append("  A missing rank is slower, hung, or on a different code path (a different number of steps "
                     "or batches per rank, an exception caught and ignored, a rank-dependent branch around "
                     "backward). MPIRT_STALL_ABORT_S stops the job after that many seconds.")
        return "\n".join(lines)

    def _run(self) -> None:
        reported: set = set()
        while not self._stop.wait(self.poll_s):
            self._answer()
            mine = self.position()
            if not mine.what or mine.age < self.warn_s:
                continue
            if mine.key not in reported:
                reported.add(mine.key)
                text = self._report(mine, self._survey(self.position(with_line=True)))
                if text:
                    self.reports.append(text)
                    say(text, err=True)
            if self.abort_s and mine.age >= self.abort_s:
                msg = (f"stalled {mine.age:.0f} s in {mine.what} {mine.place}; "
                       f"aborting (MPIRT_STALL_ABORT_S={self.abort_s:g})")
                say(f"mpirt: rank {self.rank}: {msg}", err=True)
                errors.write(errors.record("stall", "Stall", msg, "\n".join(self.reports), rank=self.rank))
                MPI.COMM_WORLD.Abort(1)
                os._exit(1)
