"""Communicators made and freed in turn, with different layouts (all ranks; each rank alone):
the core's per-communicator state, cached per thread, must follow each one, also when MPI
hands a freed communicator's handle to the next, and after release() frees them all. Rank 0
prints the wrong results as JSON."""

import json

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
wrong = []
for i in range(20):
    for comm in (world.Dup(), world.Split(rank, 0)):
        a = np.full(4096, rank + 1.0, np.float32)  # 16 KiB: auto takes shm when ranks share a node
        allreduce(a, algo="auto", comm=comm)
        want = size * (size + 1) / 2 if comm.Get_size() == size else rank + 1.0
        if not np.all(a == want):
            wrong.append([i, comm.Get_size(), float(a[0]), want])
        comm.Free()
# What runs at exit before MPI_Finalize: everything freed, and state made again on the next call.
from mpirt.comm import core  # noqa: E402

core().release()
a = np.full(4096, rank + 1.0, np.float32)
allreduce(a, algo="auto")
if not np.all(a == size * (size + 1) / 2):
    wrong.append(["after release", size, float(a[0]), size * (size + 1) / 2])
everyone = world.gather(wrong)
if rank == 0:
    print(json.dumps({"size": size, "wrong": [w for ws in everyone for w in ws][:5]}))
