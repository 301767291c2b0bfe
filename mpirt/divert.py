"""A rank's output after it is told to stop. Once mpirun is told to stop, Open MPI 4 relays
no more output from any rank: its daemons wait out the grace period (SIGTERM, then SIGKILL)
without reading the ranks' pipes. A rank that goes on printing fills its pipe, blocks in the
write, and is killed before it reaches its checkpoint. So on its stop signal a rank under
``mpirt launch`` sends its stdout and stderr to ``rank-<r>.out`` in the error directory; the
blocked write is retried there and the rank carries on. The launcher prints those files from
every host after the job.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

_HEADER = "mpirt-output rank={rank} host={host}\n"
_HEADER_RE = re.compile(r"^mpirt-output rank=(\d+) host=(\S+)$", re.M)
KEEP = 20  # lines of each rank the launcher shows


def divert(rank: int, directory: str | None = None) -> None:
    """From now on this process's file descriptors 1 and 2 write to the error directory (none
    set: not under ``mpirt launch``, nothing changes). Safe in a signal handler: a write
    interrupted there is retried on the new descriptor."""
    directory = directory or os.environ.get("MPIRT_ERROR_DIR")
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(directory) / f"rank-{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, _HEADER.format(rank=rank, host=socket.gethostname()).encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def read_all(directory: str | Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(Path(directory).glob("rank-*.out")))


def summary(text: str) -> list[str]:
    """The last lines of each rank's diverted output, by rank, tagged ``[rank r host]``."""
    heads = list(_HEADER_RE.finditer(text))
    by_rank: dict[int, tuple[str, list[str]]] = {}
    for i, m in enumerate(heads):
        body = text[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        host, lines = by_rank.get(int(m.group(1)), (m.group(2), []))
        by_rank[int(m.group(1))] = (host, lines + [x for x in body.splitlines() if x.strip()])
    return [f"  [rank {r} {host}] {line}" for r, (host, lines) in sorted(by_rank.items()) for line in lines[-KEEP:]]
