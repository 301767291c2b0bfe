"""mpirun's output, relayed as it comes: each rank's lines whole and as "[RANK] text" under
every MPI, only the ranks asked for on the console, each rank's into its own file under
--log-dir, and the last ones kept for the root cause of a failure.

A line ends at a newline or at a carriage return (a progress bar redrawn in place: tqdm ends
nothing else). A piece whose end has not come after IDLE_FLUSH_S is shown as it is, ended
there, so a bar or a "loading..." shows while it happens rather than when its line ends."""

from __future__ import annotations

import collections
import math
import os
import re
import select
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

RANK_LINES = 10  # of each rank's output, kept for the root cause of a rank that died without a record
IDLE_FLUSH_S = 1.0
HOLD_S = 0.05  # for the rest of a write that came in parts
_UNREAD_MAX = 1 << 20  # mpirun's output held for its line end at most
# Lines after which an mpirun may wait forever (Hydra does when ssh to a host fails).
_FATAL = re.compile(rb"ssh: connect to host|ssh: Could not resolve hostname|Permission denied \(publickey|"
                    rb"Host key verification failed")
# Open MPI's signal handler's backtrace ("[host:pid] [ 3] libc.so.6(...)"), which would crowd
# out what the rank itself said.
_OMPI_BACKTRACE = re.compile(r"^\[[\w.-]+:\d+\] ")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)")
_MPIRUN_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")
_TRACEBACK = "Traceback (most recent call last):"


def parse_ranks(text: str) -> frozenset[int] | None:
    """``--output-ranks``: ``all`` (None), or ranks and ranges such as ``0`` or ``0,4-7``."""
    if text.strip().lower() == "all":
        return None
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise ValueError(f"--output-ranks {text!r}: write all, or ranks and ranges such as 0 or 0,4-7")
        chosen.update(range(int(first), int(last if dash else first) + 1))
    return frozenset(chosen)


class Lines:
    """mpirun's output as whole lines, each (rank, or None for untagged text, text), however
    its reads cut it. Open MPI 4 and Hydra tag every piece a rank writes, not every line: a
    line written in pieces (print() of several values under PYTHONUNBUFFERED=1, set in many
    images) arrives as "T:a T: b c", and pieces of two ranks can share a line. A piece waits
    for the rest of its line in ``pending`` (rank -> (text, when its wait began)); what was
    read after the last whole piece waits in ``unread``."""

    def __init__(self, tag: re.Pattern[bytes] | None):
        self.tag = tag
        self.unread = b""
        self.pending: dict[bytes | None, tuple[bytes, float]] = {}

    def feed(self, data: bytes, now: float = 0.0) -> list[tuple[bytes | None, bytes]]:
        """The lines that ``data``, mpirun's output as read, ends."""
        self.unread += data
        cut = self._whole()
        whole, self.unread = self.unread[:cut], self.unread[cut:]
        return self._split(whole, now)

    def _whole(self) -> int:
        """How much of ``unread`` is whole pieces: up to its last tag or newline, after which
        the piece may go on in the next read, so that no tag is cut in two; all of it after a
        newline, or untagged."""
        if self.tag is None or self.unread.endswith(b"\n") or len(self.unread) > _UNREAD_MAX:
            return len(self.unread)
        marks = list(self.tag.finditer(self.unread))
        return max(marks[-1].start() if marks else 0, self.unread.rfind(b"\n") + 1)

    def _parts(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        """(rank, text) of each piece; every line of mpirun's starts with a tag, or is its own."""
        parts = []
        for line in _MPIRUN_LINE.findall(data):
            marks = list(self.tag.finditer(line)) if self.tag else []
            parts.append((None, line[:marks[0].start()] if marks else line))
            parts += [(m.group(1), line[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(line)])
                      for i, m in enumerate(marks)]
        return parts

    def _split(self, data: bytes, now: float) -> list[tuple[bytes | None, bytes]]:
        out = []
        for rank, text in self._parts(data):
            if not text:
                continue
            held, since = self.pending.pop(rank, (b"", now))
            text, end = held + text, 0
            for m in _LINE.finditer(text):
                end = m.end()
                if m.group() != b"\r":  # a bare carriage return ends nothing: a bar redrawn from its start
                    out.append((rank, m.group()))
            if end < len(text):
                self.pending[rank] = (text[end:], since if end == 0 else now)
        return out

    def due(self, now: float, wait: float = IDLE_FLUSH_S) -> list[tuple[bytes | None, bytes]]:
        """The pieces that have waited ``wait`` s or more for their line's end, ended now."""
        late = [rank for rank, (_, since) in self.pending.items() if now - since >= wait]
        return [(rank, self.pending.pop(rank)[0] + b"\n") for rank in late]

    def settle(self, now: float = 0.0) -> list[tuple[bytes | None, bytes]]:
        """The lines ``unread`` ends, its pieces taken as whole: mpirun has written nothing
        for HOLD_S, so its last write was (a write larger than a pipe takes at once comes in
        parts, microseconds apart, which a read can fall between)."""
        lines = self._split(self.unread, now)
        self.unread = b""
        return lines

    def quiet(self) -> list[tuple[bytes | None, bytes]]:
        """Everything, ended now that mpirun has been quiet (or is done)."""
        return self.settle() + self.due(math.inf)


class Heard:
    """What the job said, as the relays of its streams keep it: mpirun's last lines (its own
    words for a failure; all lines where output is not tagged), each rank's last lines, the ranks that printed a Python traceback
    (first first), and each rank's log file under ``log_dir``."""

    def __init__(self, log_dir: str | None, show: frozenset[int] | None, timestamps: bool,
                 tag: re.Pattern[bytes] | None, on_fatal):
        self.log_dir = Path(log_dir) if log_dir else None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.show, self.timestamps, self.tag, self.on_fatal = show, timestamps, tag, on_fatal
        self.tail: collections.deque[str] = collections.deque(maxlen=300)
        self.ranks: dict[str, collections.deque[str]] = {}
        self.raised: list[str] = []
        self.redrawn: set[str] = set()  # ranks whose last kept line is a bar redrawn in place
        self.logs: dict[str, object] = {}
        self.unlogged: set[str] = set()  # logs that could not be written
        self.lock = threading.Lock()

    def say(self, rank: bytes | None, text: bytes, dst) -> None:
        line = text if rank is None else b"[" + rank + b"] " + text
        stamp = _stamp() if self.timestamps else b""
        if self.show is None or rank is None or int(rank) in self.show:
            try:
                dst.write(stamp + line)
                dst.flush()
            except BrokenPipeError:
                _console_gone(dst)
        if rank is None and _FATAL.search(line):  # mpirun's, or its ssh's: a rank's own words never end a job
            self.on_fatal()
        redraw = text.endswith(b"\r")
        with self.lock:
            if rank is None and not redraw:
                self.tail.append(line.decode(errors="replace"))
            if rank is not None:
                self._keep(rank.decode(), text.decode(errors="replace").rstrip(), redraw)
            if self.log_dir is not None:
                self._log("launcher" if rank is None else rank.decode(), stamp + text)

    def _log(self, name: str, data: bytes) -> None:
        """Into rank-NAME.log; a log that cannot be written is said once and left, and the
        relay goes on: a relay that stopped would leave mpirun blocked on a full pipe."""
        if name in self.unlogged:
            return
        path = self.log_dir / f"rank-{name}.log"
        try:
            f = self.logs.get(name) or self.logs.setdefault(name, open(path, "ab"))
            f.write(data)
            f.flush()
        except OSError as e:
            self.unlogged.add(name)
            print(f"mpirt: cannot write {path} ({e.strerror}); that output goes on to the console only",
                  file=sys.stderr, flush=True)

    def _keep(self, rank: str, said: str, redraw: bool) -> None:
        if said and not _OMPI_BACKTRACE.match(said):
            last = self.ranks.setdefault(rank, collections.deque(maxlen=RANK_LINES))
            if rank in self.redrawn:  # only a bar's latest state
                last.pop()
            last.append(said)
            (self.redrawn.add if redraw else self.redrawn.discard)(rank)
        if said == _TRACEBACK and rank not in self.raised:
            self.raised.append(rank)

    def close(self) -> None:
        for f in self.logs.values():
            f.close()


class Relay(threading.Thread):
    """Copies one of mpirun's streams (``src``, a pipe) to ``dst`` through ``heard``."""

    def __init__(self, src, dst, heard: Heard):
        super().__init__(daemon=True)
        self.fd, self.dst, self.heard, self.lines = src.fileno(), dst, heard, Lines(heard.tag)

    def run(self) -> None:
        while True:
            wait = HOLD_S if self.lines.unread else IDLE_FLUSH_S if self.lines.pending else None
            if not select.select([self.fd], [], [], wait)[0]:
                self._say(self.lines.settle(time.monotonic()) if self.lines.unread else self.lines.quiet())
                continue
            data = os.read(self.fd, 1 << 16)
            if not data:
                break
            now = time.monotonic()
            self._say(self.lines.feed(data, now) + self.lines.due(now))
        self._say(self.lines.quiet())  # the last pieces, never ended

    def _say(self, lines: list[tuple[bytes | None, bytes]]) -> None:
        for rank, text in lines:
            self.heard.say(rank, text, self.dst)


def _console_gone(dst) -> None:
    """Our stdout or stderr lost its reader (`mpirt launch ... | head`). The job goes on, and
    its output still reaches --log-dir and the root cause: a job is never stopped, nor left
    blocked on a full pipe, by a console. The stream writes into /dev/null from now on, so no
    later write, nor the flush at exit, fails on it."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, dst.fileno())
    os.close(null)
    if dst.fileno() != sys.stderr.fileno():
        print("mpirt: the console's reader went away; the job goes on (its output into --log-dir, if given)",
              file=sys.stderr, flush=True)


def _stamp() -> bytes:
    """When a line arrived, in UTC to the millisecond: the time ranks' logs are compared by."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b"Z "
