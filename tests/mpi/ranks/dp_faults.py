"""A short data-parallel loop with one misbehaving rank, run under `python -m mpirt`.

    raise     rank `size-1` raises at step 3
    stall     rank `size-1` sleeps at step 3 (past MPIRT_STALL_WARN_S); the others wait in the
              gradient allreduce and the inspector reports it
    stall-buffers  rank 0, the root of the BatchNorm buffers' broadcast, sleeps: the others wait
              in that broadcast
    mismatch  rank `size-1` builds a wider hidden layer
"""

import sys
import time

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel

mode = sys.argv[1]
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
bad = rank == (0 if mode == "stall-buffers" else size - 1)
torch.set_num_threads(1)
hidden = 20 if mode == "mismatch" and bad else 16
norm = nn.BatchNorm1d(hidden) if mode == "stall-buffers" else nn.Identity()
model = nn.Sequential(nn.Linear(4, hidden), norm, nn.ReLU(), nn.Linear(hidden, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt)
for step in range(6):
    if step == 3 and bad and mode == "raise":
        raise ValueError(f"injected failure at step {step}")
    if step == 3 and bad and mode.startswith("stall"):
        time.sleep(float(sys.argv[2]))
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
if rank == 0:
    print("finished", flush=True)
