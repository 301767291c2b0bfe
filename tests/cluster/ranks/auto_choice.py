"""Which algorithm `auto` runs just below and at 1 MiB, with the result checked, and whether
`hier` runs: rank 0 prints one JSON line (the ring settings this rank saw, size -> algorithm,
and "ran" or hier's error)."""

import json
import os

import numpy as np

from mpirt.comm import MPI, core

comm = MPI.COMM_WORLD
chosen = {}
for nbytes in (2**20 - 4, 2**20):
    a = np.full(nbytes // 4, comm.Get_rank() + 1, np.float32)
    used = core().allreduce(comm.py2f(), a.ctypes.data, a.ctypes.data, a.size, "float32", "sum", "auto", "cpu")
    n = comm.Get_size()
    if not np.all(a == n * (n + 1) / 2):
        raise SystemExit(f"auto ({used}) gave a wrong sum at {nbytes} bytes")
    chosen[str(nbytes)] = used
try:  # hier needs the same number of ranks on every node: elsewhere an error, on every rank
    core().allreduce(comm.py2f(), a.ctypes.data, a.ctypes.data, a.size, "float32", "sum", "hier", "cpu")
    hier = "ran"
except ValueError as e:
    hier = str(e)
if len(set(comm.allgather(hier))) != 1:
    raise SystemExit(f"hier: the ranks disagree: {comm.allgather(hier)}")
if comm.Get_rank() == 0:
    print(json.dumps({"threshold": os.environ.get("MPIRT_AUTO_RING_MIN_BYTES"),
                      "segment": os.environ.get("MPIRT_RING_SEGMENT_BYTES"),
                      "wait": os.environ.get("MPIRT_RING_WAIT_US"), "chosen": chosen, "hier": hier}))
