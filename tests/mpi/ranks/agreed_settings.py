"""The core's settings, checked on every rank together (MPIRT_AUTO_RING_MIN_BYTES,
MPIRT_RING_SEGMENT_BYTES, MPIRT_RING_WAIT_US, MPIRT_SHM_CHUNK, MPIRT_SHM_STORES): each case sets
one on this rank, then makes a fresh communicator's first core call (`ring` or `shm` for theirs, on a count that
leaves a short last segment or round); rank 0 prints every rank's outcome per case as JSON."""

import json
import os

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
settings = {
    "MPIRT_AUTO_RING_MIN_BYTES": ("auto", {"same": "65536", "off": "off", "differs": str(65536 + rank), "bad": "4M",
                                           "bad on one rank": "4M" if rank == size - 1 else "65536"}),
    "MPIRT_RING_SEGMENT_BYTES": ("ring", {"same": "4096", "differs": str(4096 + 4 * rank), "bad": "1024",
                                          "bad on one rank": "0x1000" if rank == size - 1 else "4096"}),
    "MPIRT_RING_WAIT_US": ("ring", {"same": "50", "differs": str(50 + rank), "bad": "-1",
                                    "bad on one rank": "1e3" if rank == size - 1 else "50"}),
    "MPIRT_SHM_CHUNK": ("shm", {"same": "4096", "differs": str(4096 + 64 * rank), "bad": "1024",
                                "bad on one rank": "4k" if rank == size - 1 else "4096"}),
    "MPIRT_SHM_STORES": ("shm", {"same": "streaming", "differs": ["cached", "streaming"][rank % 2], "bad": "nt",
                                 "bad on one rank": "Cached" if rank == size - 1 else "cached"}),
}
report = {}
for name, (algo, cases) in settings.items():
    for case, value in cases.items():
        os.environ[name] = value
        comm = world.Dup()
        a = np.arange(12_345, dtype=np.float32) + rank
        try:
            allreduce(a, algo=algo, comm=comm)
            right = np.arange(12_345, dtype=np.float32) * size + size * (size - 1) / 2
            outcome = "ok" if np.array_equal(a, right) else "wrong sum"
        except ValueError as e:
            outcome = str(e)
        comm.Free()
        report[f"{name} {case}"] = world.gather(outcome)
    del os.environ[name]
if rank == 0:
    print(json.dumps(report))
