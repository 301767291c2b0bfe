"""mpirt: what runs on every rank — the compiled allreduce core and the benchmarks.

Importing this package does not initialise MPI; ``mpirt.comm`` is the one module that does.
"""



def __getattr__(name: str):
    """``__version__`` on first use: importlib.metadata costs 40 ms on every `mpirt` start."""
    if name != "__version__":
        raise AttributeError(f"module 'mpirt' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("mpirt")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0.0.0+source"
    globals()["__version__"] = version
    return version


def allreduce(send, recv=None, op="sum", algo="auto", comm=None):
    """Allreduce ``send`` over ``comm`` with the compiled core; see :func:`mpirt.core.allreduce`."""
    from mpirt.core import allreduce as _allreduce

    return _allreduce(send, recv, op=op, algo=algo, comm=comm)


def build_info() -> dict:
    """How this install was built (commit, MPI, CUDA, compiler), read without loading MPI."""
    try:
        from mpirt import _build
    except ImportError:  # a source tree that was never built
        return {"git_commit": "unknown", "mpi_source": "unknown", "mpi_library": "", "cuda_built": False,
                "cuda_architectures": "", "compiler": "", "build_type": ""}
    return {"git_commit": _build.GIT_COMMIT, "mpi_source": _build.MPI_SOURCE, "mpi_library": _build.MPI_LIBRARY,
            "cuda_built": _build.CUDA_BUILT, "cuda_architectures": _build.CUDA_ARCHITECTURES,
            "compiler": _build.COMPILER, "build_type": _build.BUILD_TYPE}
