"""`shm` and `hier` across nodes where one node's ranks pass shared buffers and the others'
private ones: the first node reduces without staging, the rest stage, and the calls between
nodes must still pair up. Rank 0 prints one JSON line: the number of cases and every failure."""

import os
import sys

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce, shared_zeros

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests start Python with PYTHONSAFEPATH
from failures import report  # noqa: E402  (beside this script)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
node = comm.Split_type(MPI.COMM_TYPE_SHARED)
first_node = node.bcast(rank) == 0  # the node of world rank 0
COUNTS = [1, 3, 4 * size + 3, 70001]
pool = shared_zeros(2 * max(COUNTS) + 2, "float64")

failures, cases = [], 0
for algo, count in [(a, n) for a in ("shm", "hier") for n in COUNTS]:
    for inplace in (False, True):
        for op in ("sum", "avg", "max"):
            values = [np.random.default_rng(100 * count + r).integers(-8, 9, count).astype(np.float64)
                      for r in range(size)]
            if first_node:
                send, recv = pool[1:1 + count], pool[2 + count:2 + 2 * count]
            else:
                send, recv = np.empty(count), np.empty(count)
            send[...] = values[rank]
            out = allreduce(send, None if inplace else recv, op=op, algo=algo)
            stack = np.stack(values)
            want = stack.max(axis=0) if op == "max" else stack.sum(axis=0) / (size if op == "avg" else 1)
            cases += 1
            if not np.allclose(out, want, rtol=1e-15, atol=0):
                failures.append(f"rank {rank} (first node: {first_node}) {algo} count={count} inplace={inplace} {op}: "
                                f"{int(np.sum(out != want))} wrong")
report(comm, cases, failures)
