"""mpirt: what runs on every rank — the compiled allreduce core and the benchmarks.

Importing this package does not initialise MPI; ``mpirt.comm`` is the one module that does.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("mpirt")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


def allreduce(send, recv=None, op="sum", algo="auto", comm=None):
    """Allreduce ``send`` over ``comm`` with the compiled core; see :func:`mpirt.core.allreduce`."""
    from mpirt.core import allreduce as _allreduce

    return _allreduce(send, recv, op=op, algo=algo, comm=comm)
