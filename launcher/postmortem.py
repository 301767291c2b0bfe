"""After a failed job, ask each host's memory cgroup whether the kernel killed anything for
lack of memory while the job ran: the counter read at launch (fleet's probe) against the
counter now. A rank the OOM killer took leaves no error record and mpirun says only
"signal 9", so without this the real cause of the most common pod failure goes unnamed.
And the error records ranks left on their own hosts: each pod has its own filesystem, so a
record written on a worker reaches the root cause only if it is fetched."""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from launcher.detect.memcg import OomCounter
from mpirt import errors

T = TypeVar("T")
FIX = ("give the pod more memory (resources.limits.memory) or use less per rank (a smaller batch or model, "
       "or fewer ranks per host)")


def finding(host: str, before: OomCounter, now: int | None) -> str | None:
    """One line for a host whose counter rose, else None."""
    if now is None or now <= before.kills:
        return None
    n = now - before.kills
    return (f"the kernel's OOM killer killed {n} process{'es' if n > 1 else ''} on {host} during this job "
            f"(oom_kill {before.kills} -> {now} in {before.path}); {FIX}")


def read_command(counter: OomCounter) -> str:
    """The remote command that prints a host's counter file (its path came from that host)."""
    return "cat -- " + shlex.quote(counter.path)


def findings(before: dict[str, OomCounter], read_now: Callable[[str, OomCounter], int | None]) -> list[str]:
    """Every host whose counter rose, in the order given; hosts are asked in parallel."""
    now = fetch(list(before), lambda host: read_now(host, before[host]))
    return [f for (host, c), n in zip(before.items(), now) if (f := finding(host, c, n))]




def listing_command(error_dir: str, suffix: str) -> str:
    """The remote command that prints a host's ``rank-*.<suffix>`` files in ``error_dir``:
    error records (json) or stack dumps (stacks, ``mpirt.stacks``), if it has any."""
    return f"cat -- {shlex.quote(error_dir)}/rank-*.{suffix} 2>/dev/null || true"


def fetch(hosts: list[str], read: Callable[[str], T]) -> list[T]:
    """``read`` of each host (what a ``listing_command`` printed, a counter), asked in parallel."""
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(len(hosts), 32)) as pool:
        return list(pool.map(read, hosts))


def keep_records(texts: list[str], error_dir: str) -> None:
    """Write the records other hosts printed into ``error_dir`` here, where the root cause
    reads them; a rank's record already here wins."""
    for text in texts:
        for rec in errors.parse_many(text):
            errors.write(rec, error_dir)
