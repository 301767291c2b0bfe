"""The one module that imports MPI, and the loader of the compiled core that must share it.

mpi4py loads libmpi first; the core (``mpirt._core``) then binds to that same library by its
soname. If they still differ (a core built for another MPI), fail loudly here rather than
corrupt memory later.
"""

from __future__ import annotations

import atexit
import functools

from mpi4py import MPI

__all__ = ["MPI", "core", "world"]


def world() -> MPI.Intracomm:
    return MPI.COMM_WORLD


def _first_line(version: str) -> str:
    return version.replace("\x00", "").strip().split("\n")[0]


@functools.cache
def core():
    from mpirt import _core

    theirs, ours = (_first_line(v) for v in (MPI.Get_library_version(), _core.info()["mpi_library"]))
    if theirs != ours:
        raise RuntimeError(
            f"mpi4py uses {theirs!r} but mpirt's core was built for {ours!r}; reinstall mpirt "
            "(pip install --force-reinstall --no-deps .) in this environment, or set MPI4PY_LIBMPI "
            "to the library the core was built against"
        )
    # Python's exit handlers run before mpi4py finalizes MPI: free the core's shared windows and
    # communicators there, while MPI is fully up (MPICH hangs when they are freed in MPI_Finalize).
    atexit.register(_core.release)
    return _core
