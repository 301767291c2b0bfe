"""CUDA tensors reduced from a thread whose current device is not theirs (the communication
thread's case: every thread starts on device 0): the values are right and the core has made
the tensors' device current on that thread; `mpirt.core.allreduce` from the main thread keeps
the caller's current device. Rank 0 prints a JSON line."""

import json
import threading

import torch

from mpirt.comm import MPI, core
from mpirt.core import allreduce

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
count = torch.cuda.device_count()
dev = torch.device("cuda", count - 1 - rank % count)  # the last devices first: not device 0 where there are two
expected = size * (size + 1) / 2
seen = {}


def from_a_thread():
    for algo in ("mpi", "ring", "auto"):
        t = torch.full((1000,), float(rank + 1), device=dev)
        torch.cuda.synchronize(dev)
        core().allreduce(comm.py2f(), t.data_ptr(), t.data_ptr(), t.numel(), "float32", "sum", algo, str(dev))
        seen[algo] = bool(torch.all(t == expected).item())
    seen["thread device"] = torch.cuda.current_device()


worker = threading.Thread(target=from_a_thread)
worker.start()
worker.join()
torch.cuda.set_device(0)
t = torch.full((10,), float(rank + 1), device=dev)
allreduce(t)
seen["python entry"] = bool(torch.all(t == expected).item())
seen["main device"] = torch.cuda.current_device()
every = comm.gather(seen, root=0)
if rank == 0:
    print(json.dumps({"ranks": size, "devices": count, "per_rank": every}))
