"""Shared buffers misused, and used again after: every rank's outcome of each case, gathered
to rank 0 and printed as one JSON line ("ok", or the exception's type and message)."""

import json

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce, free_shared, shared_zeros

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
pool = shared_zeros(64, "float32")


def outcome(case):
    try:
        case()
        return "ok"
    except (ValueError, TypeError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"


def summed():
    """A right answer through the shared buffer: the call after an error must still work."""
    pool[:10] = np.arange(10) + rank
    allreduce(pool[:10], algo="shm")
    want = np.arange(10) * size + size * (size - 1) / 2
    if not np.array_equal(pool[:10], want):
        raise RuntimeError(f"wrong sum {pool[:10].tolist()}")


def private_on_rank_0():
    allreduce(np.ones(8, np.float32) if rank == 0 else pool[:8], algo="shm")


def private_on_rank_0_hier():
    allreduce(np.ones(8, np.float32) if rank == 0 else pool[:8], algo="hier")


def other_offset_on_rank_0():
    allreduce(pool[1:9] if rank == 0 else pool[:8], algo="shm")


def sizes_differ():
    shared_zeros(10 + (rank == 0), "float32")


def freed_and_made_again():
    again = shared_zeros((3, 5), "float64")
    again[...] = rank
    allreduce(again, algo="auto")
    if not np.all(again == size * (size - 1) / 2):
        raise RuntimeError(f"wrong sum {again.tolist()}")
    free_shared(again)
    summed()


cases = {
    "sum": summed,
    "private on rank 0": private_on_rank_0,
    "after private": summed,
    "private on rank 0, hier": private_on_rank_0_hier,
    "other offset on rank 0": other_offset_on_rank_0,
    "after offset": summed,
    "sizes differ": sizes_differ,
    "freed and made again": freed_and_made_again,
    "free a private array": lambda: free_shared(np.zeros(4, np.float32)),
    "no elements": lambda: shared_zeros((2, 0)),
    "bad shape": lambda: shared_zeros(2.5),
    "int64": lambda: shared_zeros(4, np.int64),
}
report = {name: comm.gather(outcome(case), root=0) for name, case in cases.items()}
if rank == 0:
    print(json.dumps(report))
