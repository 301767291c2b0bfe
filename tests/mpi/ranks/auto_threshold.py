"""MPIRT_AUTO_RING_MIN_BYTES must agree: each case sets it on this rank, then makes a fresh
communicator's first core call; rank 0 prints every rank's outcome per case as JSON."""

import json
import os

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce

world = MPI.COMM_WORLD
rank = world.Get_rank()
cases = {
    "same": "65536",
    "off": "off",
    "differs": str(65536 + rank),
    "bad": "4M",
    "bad on one rank": "4M" if rank == world.Get_size() - 1 else "65536",
}
report = {}
for name, value in cases.items():
    os.environ["MPIRT_AUTO_RING_MIN_BYTES"] = value
    comm = world.Dup()
    a = np.ones(1024, np.float32)
    try:
        allreduce(a, comm=comm)
        outcome = "ok" if np.all(a == comm.Get_size()) else "wrong sum"
    except ValueError as e:
        outcome = str(e)
    comm.Free()
    report[name] = world.gather(outcome)
if rank == 0:
    print(json.dumps(report))
