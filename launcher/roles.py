"""Which pod this is, from what the operators put in its environment and mounts.

Checked in order (facts in ../shared/reference/mpijob-contract.md):
1. mpi-operator: ``K_MPI_JOB_ROLE`` = launcher | worker; the launcher's hostfile is
   ``/etc/mpi/hostfile`` (or the path in the hostfile variable it sets).
2. A hostfile without ``K_MPI_JOB_ROLE`` (``/etc/mpi/hostfile`` or a hostfile variable):
   Kubeflow Trainer V2 (or a hand-made setup): launcher.
3. Volcano: ``MPI_HOST`` (the mpi plugin, on the master only) makes a launcher; otherwise the
   ``VC_<TASK>_HOSTS`` variables or ``/etc/volcano/<task>.host`` files: the pod whose host name
   is in the master task is the launcher, every other pod a worker.
4. Nothing of these: local (ranks on this machine, no ssh).
Pure over (environment, root path, host name), so tests use fixture trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from launcher.hosts import Host, HostError, parse_hostfile, parse_list

HOSTFILE_ENV = ("OMPI_MCA_orte_default_hostfile", "PRTE_MCA_prte_default_hostfile", "I_MPI_HYDRA_HOST_FILE",
                "HYDRA_HOST_FILE")
MASTER_TASKS = ("master", "mpimaster", "launcher")


@dataclass(frozen=True)
class Role:
    kind: str  # launcher | worker | local
    system: str  # mpi-operator | trainer | volcano | none
    reason: str
    hostfile: str | None = None  # where the launcher's hosts are (a path), if a file
    hosts: tuple[Host, ...] = ()  # hosts read from variables or Volcano files


def _hostfile(env: Mapping[str, str], root: Path) -> str | None:
    for name in HOSTFILE_ENV:
        if env.get(name):
            return env[name]
    default = root / "etc/mpi/hostfile"
    return str(default) if default.is_file() else None


def _volcano_tasks(env: Mapping[str, str], root: Path, slots: int) -> dict[str, list[Host]]:
    tasks: dict[str, list[Host]] = {}
    for name, value in sorted(env.items()):
        if name.startswith("VC_") and name.endswith("_HOSTS") and value.strip():
            tasks[name[3:-6].lower()] = parse_list(value, name, slots)
    vdir = root / "etc/volcano"
    if not tasks and vdir.is_dir():
        for f in sorted(vdir.glob("*.host")):
            text = f.read_text()
            if text.strip():
                tasks[f.stem.lower().replace("-", "_")] = parse_hostfile(text, str(f), slots)
    return tasks


def _short(name: str) -> str:
    return name.split(".", 1)[0].lower()


def detect(env: Mapping[str, str], root: Path, hostname: str, slots: int = 1) -> Role:
    role = env.get("K_MPI_JOB_ROLE", "").strip().lower()
    if role:
        if role not in ("launcher", "worker"):
            raise HostError(f"K_MPI_JOB_ROLE={env['K_MPI_JOB_ROLE']!r}: expected 'launcher' or 'worker'")
        hostfile = _hostfile(env, root) if role == "launcher" else None
        return Role(role, "mpi-operator", f"K_MPI_JOB_ROLE={role}", hostfile)
    hostfile = _hostfile(env, root)
    if hostfile:
        return Role("launcher", "trainer", f"hostfile {hostfile} without K_MPI_JOB_ROLE", hostfile)
    if env.get("MPI_HOST", "").strip():
        return Role("launcher", "volcano", "MPI_HOST is set (Volcano mpi plugin)",
                    hosts=tuple(parse_list(env["MPI_HOST"], "MPI_HOST", slots)))
    tasks = _volcano_tasks(env, root, slots)
    if tasks:
        master = next((t for t in MASTER_TASKS if t in tasks), None)
        workers = [h for t, hs in tasks.items() if t != master for h in hs]
        me = _short(hostname)
        if master and any(_short(h.name) == me for h in tasks[master]):
            return Role("launcher", "volcano", f"{hostname} is in Volcano task {master!r}", hosts=tuple(workers))
        return Role("worker", "volcano", f"{hostname} is not in a Volcano master task "
                    f"({', '.join(MASTER_TASKS)}); tasks: {', '.join(tasks)}")
    return Role("local", "none", "no MPIJob, Trainer or Volcano variables or mounts")
