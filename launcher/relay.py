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
_UNREAD_MAX = 1 << 20  # mpirun's output held for its line end at most
# Lines after which an mpirun may wait forever (Hydra does when ssh to a host fails).
_FATAL = re.compile(rb"ssh: connect to host|ssh: Could not resolve hostname|Permission denied \(publickey|"
                    rb"Host key verification failed")
# Open MPI's signal handler's backtrace ("[host:pid] [ 3] libc.so.6(...)"), which would crowd
# out what the rank itself said.
_OMPI_BACKTRACE = re.compile(r"^\[[\w.-]+:\d+\] ")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)")
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
    """mpirun's output as whole lines, each (rank, or None for untagged text, text). Open MPI 4
    and Hydra tag every piece a rank writes, not every line: a line written in pieces (print()
    of several values under PYTHONUNBUFFERED=1, set in many images) arrives as "T:a T: b c",
    and pieces of two ranks can share a line. A piece waits for the rest of its line in
    ``pending`` (rank -> (text, when its wait began)). Every MPI tags each line of a piece,
    so text after a newline is another piece or mpirun's own, and text fed after a carriage
    return continues the piece it was in (``current``)."""

    def __init__(self, tag: re.Pattern[bytes] | None):
        self.tag = tag
        self.pending: dict[bytes | None, tuple[bytes, float]] = {}
        self.current: bytes | None = None

    def feed(self, data: bytes, now: float = 0.0) -> list[tuple[bytes | None, bytes]]:
        """The lines ``data`` ends; ``data`` is mpirun's output, never cut inside a tag."""
        marks = list(self.tag.finditer(data)) if self.tag else []
        parts = [(self.current, data[:marks[0].start()] if marks else data)]
        parts += [(m.group(1), data[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(data)])
                  for i, m in enumerate(marks)]
        out = []
        for rank, text in parts:
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
        if data:
            self.current = None if data.endswith(b"\n") else parts[-1][0]
        return out

    def due(self, now: float, wait: float = IDLE_FLUSH_S) -> list[tuple[bytes | None, bytes]]:
        """The pieces that have waited ``wait`` s or more for their line's end, ended now."""
        late = [rank for rank, (_, since) in self.pending.items() if now - since >= wait]
        return [(rank, self.pending.pop(rank)[0] + b"\n") for rank in late]

    def quiet(self) -> list[tuple[bytes | None, bytes]]:
        """Every piece, ended now that mpirun has been quiet: its writes are whole, so what it
        writes next starts afresh."""
        self.current = None
        return self.due(math.inf)


class Heard:
    """What the job said, as the relays of its streams keep it: mpirun's last lines (its own
    words for a failure), each rank's last lines, the ranks that printed a Python traceback
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
        if _FATAL.search(line):
            self.on_fatal()
        redraw = text.endswith(b"\r")
        with self.lock:
            if not redraw:
                self.tail.append(line.decode(errors="replace"))
            if rank is not None:
                self._keep(rank.decode(), text.decode(errors="replace").rstrip(), redraw)
            if self.log_dir is not None:
                name = "launcher" if rank is None else rank.decode()
                f = self.logs.get(name)
                if f is None:
                    f = self.logs[name] = open(self.log_dir / f"rank-{name}.log", "ab")
                f.write(stamp + text)
                f.flush()

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
        unread = b""
        while True:
            waiting = bool(unread or self.lines.pending)
            quiet = not select.select([self.fd], [], [], IDLE_FLUSH_S if waiting else None)[0]
            data = b"" if quiet else os.read(self.fd, 1 << 16)
            if not quiet and not data:
                break
            unread += data
            whole = quiet or len(unread) > _UNREAD_MAX
            cut = len(unread) if whole else max(unread.rfind(b"\n"), unread.rfind(b"\r")) + 1
            now = time.monotonic()
            self._say(self.lines.feed(unread[:cut], now) + (self.lines.quiet() if quiet else self.lines.due(now)))
            unread = unread[cut:]
        self._say(self.lines.feed(unread) + self.lines.quiet())  # the last pieces, never ended

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
