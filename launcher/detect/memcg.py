"""Out-of-memory kills counted by this process's memory cgroup (on Kubernetes, the pod's
container), and its memory limit. A rank killed by SIGKILL is most often the OOM killer at the pod's memory limit,
and the only trace is this counter (mpi-operator #90: the launcher showed a crash loop, not
the cause). cgroup v2 keeps it in ``memory.events``, v1 in ``memory.oom_control``; both as a
line ``oom_kill N``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.detect.cgroup import locate


@dataclass(frozen=True)
class OomCounter:
    path: str  # the file the count was read from (read it again to see new kills)
    kills: int


def candidates(root: Path, proc_cgroup: str) -> list[Path]:
    """Where the counter may be, best first, from the text of ``/proc/self/cgroup``.

    A v1 memory line wins (on a hybrid host the memory controller is v1). Inside a container
    the cgroup root mounted at /sys/fs/cgroup is the container's own, and the path in
    /proc/self/cgroup may be the host's: hence the fallback to the mount's root."""
    found = locate(proc_cgroup, "memory")
    if found is None:
        return []
    v1, path = found
    base = root / "sys/fs/cgroup"
    if v1 is not None:
        mem = base / "memory"
        return [mem / path.lstrip("/") / "memory.oom_control", mem / "memory.oom_control"]
    return [base / path.lstrip("/") / "memory.events", base / "memory.events"]


def parse(text: str) -> int | None:
    """The ``oom_kill`` count in a memory.events or memory.oom_control text."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def read(root: Path = Path("/"), proc_cgroup: str | None = None) -> OomCounter | None:
    """This process's counter; None where there is none to read (no memory controller)."""
    if proc_cgroup is None:
        try:
            proc_cgroup = (root / "proc/self/cgroup").read_text()
        except OSError:
            return None
    for path in candidates(root, proc_cgroup):
        try:
            kills = parse(path.read_text())
        except OSError:
            continue
        if kills is not None:
            return OomCounter(str(path), kills)
    return None


# The limit beside each counter file; v1 says "no limit" with a huge number.
_LIMIT_FILES = {"memory.events": "memory.max", "memory.oom_control": "memory.limit_in_bytes"}
_NO_LIMIT_V1 = 1 << 60


def limit(counter: OomCounter) -> int | None:
    """The cgroup's memory limit in bytes; None for no limit (or none readable)."""
    path = Path(counter.path)
    try:
        text = (path.parent / _LIMIT_FILES[path.name]).read_text().strip()
        value = int(text)
    except (KeyError, OSError, ValueError):  # "max" in v2
        return None
    return None if value >= _NO_LIMIT_V1 else value
