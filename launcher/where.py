"""``mpirt where``: where every rank of the job running in this container is now, without
stopping it (``kubectl exec LAUNCHER-POD -- mpirt where``), for a job that seems hung long
before its time limit. py-spy needs ptrace, which pods rarely allow; this needs nothing.

It finds the launch here (the parent of the topmost process carrying an ``MPIRT_JOB_ID``, its
mpirun) and sends it SIGUSR1; the launcher asks every rank on every host for a stack dump
(``launcher.ranks.dumps_now``), says where they are in the job's log, and writes the same
text to ``where.txt`` in the job's error directory, which this command waits for and prints.
In a worker pod, with no launch but ranks, it asks those ranks itself.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from launcher import ranks
from mpirt import stacks
from mpirt.console import ranges

ANSWER = "where.txt"


@dataclass(frozen=True)
class Launch:
    pid: int  # mpirt launch
    error_dir: str


def _is_mpirt(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg) == b"mpirt" or arg == b"launcher.cli" for arg in argv[:3])


def launches(procs: dict[int, tuple[int, dict[bytes, bytes]]], is_mpirt=_is_mpirt) -> list[Launch]:
    """The launches among ``procs`` (``ranks.table``): each one's mpirun carries the job id and
    the error directory, and no rank variable; its parent is an ``mpirt`` process (an MPI
    daemon that an sshd on this host started may carry the job id too)."""
    job = ranks.JOB_ENV.encode()

    def runs(pid: int) -> bool:
        env = procs[pid][1] if pid in procs else {}
        return job in env and b"MPIRT_ERROR_DIR" in env and not any(name in env for name in ranks.RANK_VARS)

    found = {ppid: Launch(ppid, env[b"MPIRT_ERROR_DIR"].decode()) for pid, (ppid, env) in procs.items()
             if runs(pid) and ppid in procs and not runs(ppid) and is_mpirt(ppid)}
    return sorted(found.values(), key=lambda launch: launch.pid)


def answer(dumps: str, size: int | None = None) -> str:
    """What ``dumps`` (mpirt.stacks files) say: where each rank is, grouped by line; ``size``:
    the job's ranks (None: this host's), those that gave no answer named."""
    wheres = stacks.parse(dumps)
    if not wheres:
        return ("mpirt: no rank said where it is: only ranks run under python -m mpirt answer "
                "(mpirt launch -- python -m mpirt train.py)\n")
    said = {w.rank for w in wheres}
    silent = sorted(set(range(size)) - said) if size else []
    head = (f"where the ranks are now ({len(said)} of {size} answered" if size else
            f"where this host's ranks are now ({len(said)} answered")
    lines = [f"mpirt: {head}; the job goes on):", *(f"  {line}" for line in stacks.summary(wheres))]
    if silent:
        lines.append(f"  no answer from rank{'s' if len(silent) > 1 else ''} {', '.join(ranges(silent))}: not run "
                     "under python -m mpirt, or in a wait no signal ends (state D in ps on its host: a network "
                     "filesystem, a device driver)")
    return "\n".join(lines) + "\n"


def ask(timeout_s: float, procs: dict | None = None) -> str:
    """Ask the one launch here where its ranks are; its answer. Without a launch, this host's
    ranks answer themselves. ValueError: neither, more than one launch, or no answer in time."""
    procs = ranks.table() if procs is None else procs
    found = launches(procs)
    if not found:
        if ranks.find(procs):
            return answer(ranks.dumps_now(None))
        raise ValueError("no running mpirt launch or rank in this container: run mpirt where where the launcher "
                         "runs (kubectl exec LAUNCHER-POD -- mpirt where), while its job runs")
    if len(found) > 1:
        raise ValueError(f"{len(found)} launches run here (pids {', '.join(str(f.pid) for f in found)}): "
                         "send SIGUSR1 to the one you mean; it answers in its log")
    launch = found[0]
    told = Path(launch.error_dir) / ANSWER
    before = _stamp(told)
    os.kill(launch.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _stamp(told) != before:
            return told.read_text()
        time.sleep(0.05)
    raise ValueError(f"mpirt launch (pid {launch.pid}) gave no answer in {timeout_s:g} s: a host may not answer "
                     "over ssh; its log says what it found so far")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
