"""Where each rank was when its job was stopped: the record of a job that hung somewhere the
stall inspector does not watch (the program's own collectives, a data loader, a deadlock).

``python -m mpirt`` arms it: on SIGTERM, the first thing a time limit or a deleted pod sends
(and on SIGINT, a Ctrl-C), faulthandler writes every thread's Python stack to
``rank-<r>.stacks`` in the error directory, from the signal handler itself, so even a rank
blocked inside an MPI call answers; then the signal goes on as before. ``DUMP`` alone writes a
dump and stops nothing (``kill -s RTMIN+6 PID`` shows where a live rank is): the launcher sends
it to every rank before its SIGTERM (``launcher.ranks.send``), since once one rank has died of
a SIGTERM, Open MPI 4 SIGKILLs the others within milliseconds. Each dump ends with ``END``; one
cut short by a SIGKILL has none. The launcher fetches the files from every host and groups the
ranks by the line of their own code they were in.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from mpirt.console import ranges

STOPS = (signal.SIGTERM, signal.SIGINT)
DUMP = signal.SIGRTMIN + 6  # a real-time signal: no default meaning to clash with
END = "mpirt-stacks end\n"
_HEADER = "mpirt-stacks rank={rank} host={host} pid={pid}\n"
_HEADER_RE = re.compile(r"^mpirt-stacks rank=(\d+) host=(\S+) pid=\d+$", re.M)
_THREAD_RE = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):$", re.M)
_FRAME_RE = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$', re.M)
# Paths of frames that are not the program's own: the standard library, installed packages,
# the runner. The launcher cannot ask the rank's host, so it goes by the path.
_LIBRARY = re.compile(r"/(?:site|dist)-packages/|/lib/python3\.\d+/|^<frozen |/mpirt/__main__\.py$")


def arm(directory: str | None, rank: int) -> None:
    """Dump this process's stacks into ``directory`` on SIGTERM or SIGINT (nothing without a directory).
    An undisturbed run leaves no file behind."""
    if not directory:
        return
    try:
        from mpirt import _stopdump  # compiled; the launcher reads dumps without it
    except ImportError:  # a source tree on PYTHONPATH: the program still runs
        print(f"mpirt: rank {rank}: warning: no stack dump if this rank is stopped: mpirt._stopdump is not "
              "built here (pip install . builds it)", file=sys.stderr, flush=True)
        return

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"rank-{rank}.stacks"
    header = _HEADER.format(rank=rank, host=socket.gethostname(), pid=os.getpid())
    f = open(path, "w")  # open for the life of the process: the handler writes to its descriptor
    f.write(header)
    f.flush()
    faulthandler.register(DUMP, file=f, all_threads=True, chain=False)
    _stopdump.arm(STOPS, DUMP, f.fileno(), END.encode())
    atexit.register(_disarm, f, path, len(header.encode()))


def _disarm(f, path: Path, header_size: int) -> None:
    from mpirt import _stopdump

    _stopdump.disarm()
    faulthandler.unregister(DUMP)
    dumped = os.fstat(f.fileno()).st_size > header_size
    f.close()
    if not dumped:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Where:
    rank: int
    host: str
    line: str  # the innermost frame of the program's own code (the innermost frame when none is)
    inside: str  # the innermost frame, when it is deeper, in a library; else ""


def _frame(match: re.Match) -> str:
    return f"{match[1]}:{match[2]} in {match[3]}"


def parse(text: str) -> list[Where]:
    """The files in ``text`` (one or more, one after another): for each rank, where its main
    thread was in its last whole dump. faulthandler lists the threads newest first, so the main
    thread is last."""
    found = []
    heads = list(_HEADER_RE.finditer(text))
    for i, head in enumerate(heads):
        body = _last_whole(text[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)])
        if body is None:
            continue
        threads = list(_THREAD_RE.finditer(body))
        if not threads:
            continue
        frames = list(_FRAME_RE.finditer(body[threads[-1].end():]))
        if not frames:
            continue
        own = next((m for m in frames if not _LIBRARY.search(m[1])), None)
        line = _frame(own or frames[0])
        inside = _frame(frames[0]) if own is not None and own is not frames[0] else ""
        found.append(Where(int(head[1]), head[2], line, inside))
    return found


def _last_whole(dumps: str) -> str | None:
    """The last of ``dumps`` (what follows a header) that its END says is whole."""
    parts = dumps.split(END)
    return parts[-2] if len(parts) > 1 else None


def latest(text: str) -> str:
    """One file's ``text`` cut to its header and its last whole dump; "" without one."""
    head = _HEADER_RE.search(text)
    body = _last_whole(text[head.end():]) if head else None
    return "" if body is None else f"{head[0]}\n{body}{END}"


def read_all(directory: str | Path) -> list[Where]:
    return parse("".join(p.read_text(errors="replace") for p in sorted(Path(directory).glob("rank-*.stacks"))))


def summary(wheres: list[Where]) -> list[str]:
    """One line per place, ranks grouped (the first dump of a rank counts): the places that
    differ are what a hang is about."""
    first: dict[int, Where] = {}
    for w in wheres:
        first.setdefault(w.rank, w)
    groups: dict[tuple[str, str], list[Where]] = {}
    for w in sorted(first.values(), key=lambda w: w.rank):
        groups.setdefault((w.line, w.inside), []).append(w)
    lines = []
    for (line, inside), ws in sorted(groups.items(), key=lambda kv: kv[1][0].rank):
        ranks = [w.rank for w in ws]
        hosts = sorted({w.host for w in ws})
        who = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranges(ranks))} ({', '.join(hosts[:4])}" + (
            f" and {len(hosts) - 4} more hosts)" if len(hosts) > 4 else ")")
        lines.append(f"{who}: {line}" + (f" (inside {inside})" if inside else ""))
    return lines
