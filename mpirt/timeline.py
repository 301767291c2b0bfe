"""A timeline of data-parallel training, one file for all ranks in the Chrome trace format
(chrome://tracing, Perfetto): per rank, when each gradient bucket became ready, when the
communication thread reduced it (and, with fp16/bf16 on the wire, when it was cast and cast
back), and how long the optimizer step waited. It shows what the
per-step metrics only sum up: whether communication overlapped backward, and which rank or
bucket held a step back (Horovod's timeline answers the same question).

Clocks: every rank takes its origin right after a barrier, so ranks on different hosts line
up to within the barrier's skew (microseconds), with no clock synchronisation needed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

# One event per bucket and step on two threads, plus a few per step: a cap keeps a long run
# from growing without bound; the first events are kept and the file says how many were not.
MAX_EVENTS = 2_000_000


class Timeline:
    def __init__(self, comm, path: str | os.PathLike):
        self.comm, self.path = comm, Path(path)
        self.rank = comm.Get_rank()
        self._events: list[tuple] = []
        self._dropped = 0
        self._lock = threading.Lock()
        self._threads: dict[int, str] = {}
        comm.Barrier()
        self._origin = time.perf_counter_ns()

    def now(self) -> int:
        return time.perf_counter_ns()

    def _add(self, event: tuple) -> None:
        with self._lock:
            if len(self._events) < MAX_EVENTS:
                self._events.append(event)
            else:
                self._dropped += 1

    def span(self, name: str, start_ns: int, end_ns: int, **args) -> None:
        """A span on the calling thread (started at ``start_ns`` from ``now()``)."""
        t = threading.current_thread()
        self._threads.setdefault(t.ident, t.name)
        self._add(("X", name, t.ident, start_ns, end_ns - start_ns, args))

    def instant(self, name: str, **args) -> None:
        t = threading.current_thread()
        self._threads.setdefault(t.ident, t.name)
        self._add(("i", name, t.ident, self.now(), 0, args))

    def _trace_events(self) -> list[dict]:
        pid = self.rank
        out = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"rank {pid} ({socket.gethostname()})"}},
               {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}]
        tids = {ident: i for i, ident in enumerate(self._threads)}
        out += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[ident], "args": {"name": name}}
                for ident, name in self._threads.items()]
        for ph, name, ident, start, dur, args in self._events:
            e = {"ph": ph, "name": name, "pid": pid, "tid": tids[ident], "ts": (start - self._origin) / 1000, "args": args}
            if ph == "X":
                e["dur"] = dur / 1000
            else:
                e["s"] = "t"
            out.append(e)
        return out

    def _dump(self, path: Path, events: list[dict], ranks: int, dropped: int) -> Path:
        doc = {"traceEvents": events, "displayTimeUnit": "ms",
               "otherData": {"writer": "mpirt", "ranks": ranks, "dropped_events": dropped}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
        return path

    def write_own(self) -> Path:
        """This rank's part alone, without any collective (a rank that is failing)."""
        with self._lock:
            return self._dump(self.path.with_name(f"{self.path.name}.rank-{self.rank}"), self._trace_events(), 1,
                              self._dropped)

    def write(self) -> Path | None:
        """Gather every rank's events to rank 0, which writes the file (collective)."""
        with self._lock:
            mine, dropped = self._trace_events(), self._dropped
        everyone = self.comm.gather((mine, dropped), root=0)
        if self.rank != 0:
            return None
        return self._dump(self.path, [e for evs, _ in everyone for e in evs], len(everyone),
                          sum(d for _, d in everyone))
