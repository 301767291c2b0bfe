"""This host's MPI ranks, found in /proc, and the signal that stops them.

The launcher promises every rank SIGTERM, then the grace period, then SIGKILL. MPIs do not
keep that promise themselves: Open MPI 4 sends SIGTERM only after half its kill timeout,
Open MPI 5 and Intel MPI kill within about a second, a wrapper script (Intel's ``mpirun``)
passes nothing on. So the launcher signals the ranks itself: those here directly, those on
other hosts over ssh (``mpirt signal-ranks``), and a worker pod told to stop signals the
ranks its sshd started. A rank is the topmost process of a tree whose environment has an
MPI rank variable (a rank's DataLoader workers inherit it, and must not be signalled: their
death would fail the rank's next batch before it can checkpoint); a job's ranks also carry
its ``MPIRT_JOB_ID``, so a host shared by other jobs keeps theirs. "This host" is this
network namespace: a pod's, or one of the test cluster's namespace hosts, which share one
process table.

A SIGTERM comes after a stack dump: each rank that ``mpirt.stacks`` armed (``python -m mpirt``)
first gets its dump signal, and the SIGTERM waits until every such rank has written its dump,
for at most ``DUMP_WAIT_S``. Once one rank has died of a SIGTERM, Open MPI 4 SIGKILLs the others
within milliseconds, and on a busy host a rank may not even have started its dump by then;
the dumps also all show the hang as it was, before any rank had gone.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from pathlib import Path

from mpirt import stacks

JOB_ENV = "MPIRT_JOB_ID"
RANK_VARS = (b"OMPI_COMM_WORLD_RANK", b"PMI_RANK", b"PMIX_RANK")
_JOB_ID = re.compile(r"[0-9a-f]{16}")
_STACKS_FILE = re.compile(r"/rank-\d+\.stacks$")
DUMP_WAIT_S = 2.0


def new_job_id() -> str:
    return secrets.token_hex(8)


def check_job_id(text: str) -> str:
    if not _JOB_ID.fullmatch(text):
        raise ValueError(f"job id {text!r}: expected 16 lowercase hex digits, as mpirt launch makes them")
    return text


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # gone, or another user's
        return None


def _net(entry: Path) -> str | None:
    try:
        return os.readlink(entry / "ns" / "net")
    except OSError:
        return None


def table(proc: Path = Path("/proc")) -> dict[int, tuple[int, dict[bytes, bytes]]]:
    """pid -> (parent pid, environment at exec) of every process we may read in our network
    namespace."""
    found, ours = {}, _net(proc / "self")
    for entry in proc.iterdir():
        if not entry.name.isdigit() or _net(entry) != ours:
            continue
        stat, environ = _stat(entry), _read(entry / "environ")
        if stat is None or environ is None:
            continue
        env = dict(item.partition(b"=")[::2] for item in environ.split(b"\0") if item)
        found[int(entry.name)] = (int(stat[1]), env)
    return found


def _stat(entry: Path) -> list[bytes] | None:
    """/proc/PID/stat from the state on (state, parent pid, ...): the name before it may hold
    spaces and parentheses."""
    text = _read(entry / "stat")
    return None if text is None else text[text.rfind(b")") + 2:].split()


def alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """Still running (a zombie waiting for its parent to reap it has ended)."""
    stat = _stat(proc / str(pid))
    return stat is not None and stat[0] != b"Z"


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    return [int(e.name) for e in proc.iterdir() if e.name.isdigit() and (st := _stat(e)) and int(st[1]) == pid]


def become_subreaper() -> None:
    """Orphans below us are reparented to us, not to PID 1 (Linux's PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _is_rank(env: dict[bytes, bytes], job: str | None) -> bool:
    if job is not None and env.get(JOB_ENV.encode()) != job.encode():
        return False
    return any(name in env for name in RANK_VARS)


def find(procs: dict[int, tuple[int, dict[bytes, bytes]]], job: str | None = None,
         below: int | None = None) -> list[int]:
    """The ranks among ``procs`` (``table``): of job ``job`` (any job: None), and descendants
    of ``below`` where given."""
    def rank(pid: int) -> bool:
        return pid in procs and _is_rank(procs[pid][1], job)

    def under(pid: int) -> bool:
        seen = set()
        while pid in procs and pid not in seen:
            seen.add(pid)
            pid = procs[pid][0]
            if pid == below:
                return True
        return False

    return sorted(pid for pid, (ppid, _) in procs.items()
                  if rank(pid) and not rank(ppid) and (below is None or under(pid)))


def send(pids: list[int], sig: int = signal.SIGTERM, proc: Path = Path("/proc")) -> list[int]:
    """Signal ``pids``; the ones that were still there. A SIGTERM waits for the stack dumps."""
    if sig == signal.SIGTERM:
        dump_first(pids, proc)
    sent = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def dump_first(pids: list[int], proc: Path = Path("/proc"), wait_s: float = DUMP_WAIT_S) -> list[int]:
    """Have every armed rank among ``pids`` write a stack dump, all at once, and wait until each
    has (or has ended, or ``wait_s`` is over); the ones that wrote one."""
    return sorted(_dump(pids, proc, wait_s))


def dumps_now(job: str | None, proc: Path = Path("/proc")) -> str:
    """This host's ranks of ``job`` (of any job: None) dump their stacks, and go on: the dumps
    (``mpirt.stacks`` files, each cut to its header and this dump)."""
    files = _dump(find(table(proc), job=job), proc, DUMP_WAIT_S).values()
    return "".join(stacks.latest((_read(path) or b"").decode(errors="replace")) for path in files)


def _dump(pids: list[int], proc: Path, wait_s: float) -> dict[int, Path]:
    """``dump_first``: each rank that wrote a dump -> its dump file."""
    files = {pid: path for pid in pids if (path := _stacks_file(pid, proc)) and _catches(pid, stacks.DUMP, proc)}
    before = {pid: _ends(path) for pid, path in files.items()}
    waiting = set()
    for pid in files:
        try:
            os.kill(pid, stacks.DUMP)
            waiting.add(pid)
        except (ProcessLookupError, PermissionError):
            pass
    dumped: set[int] = set()
    deadline = time.monotonic() + wait_s
    while waiting:
        dumped |= {pid for pid in waiting if _ends(files[pid]) > before[pid]}
        waiting = {pid for pid in waiting - dumped if alive(pid, proc)}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return {pid: files[pid] for pid in sorted(dumped)}


def _stacks_file(pid: int, proc: Path) -> Path | None:
    """The dump file a rank armed by mpirt.stacks keeps open."""
    try:
        for fd in (proc / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if _STACKS_FILE.search(target):
                return Path(target)
    except OSError:
        pass
    return None


def _catches(pid: int, sig: int, proc: Path) -> bool:
    """Whether ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc/PID/status): a
    signal nobody handles would end it."""
    status = _read(proc / str(pid) / "status") or b""
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith(b"SigCgt:")), b"0")
    return bool(int(caught, 16) >> (sig - 1) & 1)


def _ends(path: Path) -> int:
    return (_read(path) or b"").count(stacks.END.encode())


def remote_command(job: str, sig: int = signal.SIGTERM) -> str:
    """What another host runs to signal its ranks of ``job`` (the id checked: it goes into a shell line)."""
    return f"exec mpirt signal-ranks --signal {signal.Signals(sig).name.removeprefix('SIG')} {check_job_id(job)}"


def remote_dump_command(job: str) -> str:
    """What another host runs for ``dumps_now`` of ``job``."""
    return f"exec mpirt signal-ranks --dump {check_job_id(job)}"
