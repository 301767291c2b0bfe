"""Code written for torchrun and DDP, started by mpirun: ``init_process_group()`` makes
torch's default group over MPI's ranks (RANK, LOCAL_RANK, ... exported too), DDP averages
gradients through it to the one-process reference, and mpirt's own data_parallel(algo="torch")
shares the group and leaves it standing. Prints one JSON line on rank 0."""

import copy
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel
from mpirt.torchdist import init_process_group
from mpirt.world import world

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_num_threads(1)
backend = init_process_group()
w = world()
seen = (dist.get_rank(), dist.get_world_size(), int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]))
if seen != (rank, size, rank, w.local_rank):
    raise AssertionError(f"rank {rank}: torch.distributed and the variables say {seen}")
if init_process_group() != backend:  # a second call keeps the group
    raise AssertionError("a second init_process_group() changed the group")

torch.manual_seed(rank)  # different weights on every rank: DDP broadcasts rank 0's
model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).double()
ddp = DistributedDataParallel(model)
g = torch.Generator().manual_seed(3)
x, y = torch.randn(4 * size, 6, generator=g, dtype=torch.float64), torch.randn(4 * size, 2, generator=g,
                                                                               dtype=torch.float64)
reference = copy.deepcopy(model)
((reference(x) - y) ** 2).mean().backward()
rows = slice(4 * rank, 4 * rank + 4)
((ddp(x[rows]) - y[rows]) ** 2).mean().backward()
for (n, p), q in zip(model.named_parameters(), reference.parameters()):
    if not torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12):
        raise AssertionError(f"DDP over init_process_group(): gradient of {n} differs by "
                             f"{(p.grad - q.grad).abs().max()}")
total = torch.tensor([float(rank)])
dist.all_reduce(total)
if total.item() != size * (size - 1) / 2:
    raise AssertionError(f"dist.all_reduce gave {total.item()}")

mine = nn.Linear(3, 1).double()
dp = data_parallel(mine, None, algo="torch")
dp.close()
if not dist.is_initialized():
    raise AssertionError("data_parallel(algo='torch').close() destroyed the group init_process_group() made")
dist.destroy_process_group()
if rank == 0:
    print(json.dumps({"ranks": size, "backend": backend}), flush=True)
