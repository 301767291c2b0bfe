"""A script written for torchrun, unchanged: init_process_group() from the environment, DDP,
torch's DistributedSampler and DataLoader; nothing of mpirt or MPI. Started by `mpirt launch
-- python -m mpirt`, it must train to the weights of one process on the whole batch, and MPI
must never start in it. Rank 0 prints one JSON line."""

import copy
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

GLOBAL_BATCH, SAMPLES = 12, 48  # a global batch every world size up to 4 divides

dist.init_process_group("gloo")
rank, size = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
torch.manual_seed(rank)  # different weights on every rank: DDP starts from rank 0's
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).double()
g = torch.Generator().manual_seed(1)
data = TensorDataset(torch.randn(SAMPLES, 8, generator=g, dtype=torch.float64),
                     torch.randn(SAMPLES, 1, generator=g, dtype=torch.float64))
ddp = DistributedDataParallel(model)
reference = copy.deepcopy(model)  # rank 0's start, after DDP's broadcast
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
# without shuffling, rank r takes samples r, r + size, ...: step k's batches together are
# samples 12k to 12k + 11 at any world size, the one process's batch k
loader = DataLoader(data, batch_size=GLOBAL_BATCH // size, sampler=DistributedSampler(data, shuffle=False))
for step, (x, y) in enumerate(loader):
    opt.zero_grad()
    ((ddp(x) - y) ** 2).mean().backward()
    opt.step()
    ref_opt.zero_grad()
    xs, ys = data[GLOBAL_BATCH * step:GLOBAL_BATCH * (step + 1)]
    ((reference(xs) - ys) ** 2).mean().backward()
    ref_opt.step()

flat = torch.cat([p.detach().flatten() for p in model.parameters()])
ref = torch.cat([p.detach().flatten() for p in reference.parameters()])
mine = {"rank": rank, "host": socket.gethostname(), "steps": step + 1,
        "env": {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")},
        "from_reference": (flat - ref).abs().max().item(), "mpi_started": "mpi4py.MPI" in sys.modules}
everyone = [None] * size
dist.all_gather_object(everyone, (mine, flat.tolist()))
if rank == 0:
    spread = max((torch.tensor(w, dtype=torch.float64) - flat).abs().max().item() for _, w in everyone)
    print(json.dumps({"ranks": [m for m, _ in everyone], "spread": spread}))
dist.destroy_process_group()
