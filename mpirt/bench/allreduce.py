"""`mpirt bench allreduce`: the compiled harness, started on local ranks when asked.

The options are the executable's own (``mpirt-allreduce-perf --help``), passed through
untouched, so both spellings of the benchmark can never drift apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from launcher.mpi import MpiError, detect, find_mpirun, local_argv_here
from launcher.run import supervise

EXECUTABLE = "mpirt-allreduce-perf"


@dataclass(frozen=True)
class AllreduceBenchConfig:
    np: int | None  # None: run in the current MPI job (under mpirun) or as one rank
    mpirun: str | None
    args: tuple[str, ...]


def executable(name: str = EXECUTABLE) -> str:
    """An installed command of ours: next to this Python first, then on PATH."""
    here = Path(sysconfig.get_path("scripts")) / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise MpiError(f"{name} is not installed; reinstall mpirt (pip install .)")
    return found


def build_argv(config: AllreduceBenchConfig) -> list[str]:
    argv = [executable(), *config.args]
    if config.np is None:
        return argv
    return local_argv_here(detect(find_mpirun(config.mpirun)), config.np) + argv


def run(config: AllreduceBenchConfig) -> int:
    argv = build_argv(config)
    if config.np is not None:  # a bad option said once, before any rank starts (no MPI needed)
        checked = subprocess.run([executable(), "--check-args", *config.args], check=False)
        if checked.returncode != 0:
            return checked.returncode
    if config.np is None:
        # This process is the rank: become the harness. A child would lose what the MPI handed
        # the rank (MPICH's Hydra passes its PMI connection as an inherited descriptor).
        os.execv(argv[0], argv)
    # as `mpirt launch` runs mpirun: SIGTERM and SIGINT passed on to it at once (the ranks have
    # nothing to save), and a sentinel that ends the job if this process is killed outright,
    # instead of ranks going on benchmarking unwatched
    return supervise(argv, dict(os.environ), grace_s=0.0).code
