"""How many CPUs the ranks on this host may use: the affinity mask, capped by the CPU quota of
the container's cgroup (Kubernetes ``resources.limits.cpu``). ``os.cpu_count()`` sees the
node's cores: in a pod limited to 8 CPUs on a 128-core node, each rank's torch/OpenMP would
start a thread per core, and MPI would poll as if every rank had a core of its own."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from launcher.detect.cgroup import locate


@dataclass(frozen=True)
class Cpus:
    count: int  # at least 1
    why: str  # "affinity 64, cgroup quota 8 (cpu.max 800000 100000)"


def machine(root: Path = Path("/")) -> str:
    """The kernel's boot id: the same in every container on one machine (pods packed on a
    node share its cores), "" where unreadable."""
    try:
        return (root / "proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def quota_dirs(root: Path, proc_cgroup: str) -> list[Path]:
    """The cgroup directories whose CPU quota applies to this process, from the text of
    ``/proc/self/cgroup``: its own and every ancestor up to the mount's root (a pod's quota
    may sit above the container's). A v1 cpu controller wins over v2 (a hybrid host). Inside a
    container the mount is the container's own cgroup and the path may be the host's: the
    directories that do not exist are left out, the mount's root stays."""
    found = locate(proc_cgroup, "cpu")
    if found is None:
        return []
    v1, path = found
    base = root / "sys/fs/cgroup"
    bases = [base / v1, base / "cpu"] if v1 else [base]
    base = next((b for b in bases if b.is_dir()), bases[0])
    dirs, here = [], base / path.lstrip("/")
    while True:
        if here.is_dir():
            dirs.append(here)
        if here == base or base not in here.parents:
            break
        here = here.parent
    return dirs


def _quota(d: Path) -> tuple[float, str] | None:
    """The quota in CPUs set on cgroup directory ``d`` and the text it came from; None: none."""
    try:
        if (d / "cpu.max").exists():
            text = (d / "cpu.max").read_text().split()
            if len(text) == 2 and text[0] != "max":
                return int(text[0]) / int(text[1]), f"cpu.max {text[0]} {text[1]}"
            return None
        q = int((d / "cpu.cfs_quota_us").read_text())
        p = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return (q / p, f"cpu.cfs_quota_us {q}, cpu.cfs_period_us {p}") if q > 0 and p > 0 else None


def budget(root: Path = Path("/"), affinity: int | None = None, proc_cgroup: str | None = None) -> Cpus:
    """This process's CPUs: ``affinity`` (the scheduler's mask; read here when None), capped by
    the smallest quota on the way up its cgroup tree, rounded down (a quota of 1.5 keeps one
    CPU busy and the next half-idle), at least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0))
    if proc_cgroup is None:
        try:
            proc_cgroup = (root / "proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    quotas = [q for q in map(_quota, quota_dirs(root, proc_cgroup)) if q]
    why = f"affinity {affinity}"
    if not quotas:
        return Cpus(max(1, affinity), why)
    cpus, text = min(quotas)
    return Cpus(max(1, min(affinity, math.floor(cpus))), f"{why}, cgroup quota {cpus:g} ({text})")
