"""Four data-parallel steps with a timeline at PATH (argv[1]), small buckets so there are
several. ``raise`` (argv[2]): the last rank raises at step 2 inside the loop whose ``finally``
closes the runtime, as `mpirt train` does; ``fp16``: gradients travel in fp16."""

import sys

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel

path, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                      nn.Linear(256, 8))  # BatchNorm: buffers broadcast every step
opt = torch.optim.SGD(model.parameters(), lr=0.01)
dp = data_parallel(model, opt, bucket_mb=0.01, first_bucket_mb=0.005, timeline=path,
                   compression="fp16" if mode == "fp16" else "none")
try:
    for step in range(4):
        if mode == "raise" and step == 2 and comm.Get_rank() == comm.Get_size() - 1:
            raise RuntimeError("injected failure at step 2")
        opt.zero_grad()
        model(torch.randn(32, 64)).pow(2).mean().backward()
        opt.step()
    if comm.Get_rank() == 0:
        print(len(dp.buckets), flush=True)
finally:
    dp.close()
