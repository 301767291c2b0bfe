"""Uneven inputs under ``dp.join()``: rank r has 2 + r batches (with compression, an unused
head, or through torch.distributed, per argv[1]). No rank may hang; afterwards every rank
holds the same weights and momentum, equal to a one-process simulation in which the ranks that ran out of batches
contribute zero gradients to an average over the whole world. Prints one JSON line on rank 0."""

import copy
import json
import sys

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel

variant = sys.argv[1]
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_num_threads(1)
dtype = torch.float32 if variant == "fp16" else torch.float64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 12, dtype=dtype)
        self.head = nn.Linear(12, 2, dtype=dtype)
        self.spare = nn.Linear(12, 2, dtype=dtype)  # used by rank 0 only in the "unused" variant

    def forward(self, x, r):
        h = torch.tanh(self.body(x))
        out = self.head(h)
        return out + self.spare(h) if variant == "unused" and r == 0 else out


def batch(r, t):
    g = torch.Generator().manual_seed(1000 * r + t)
    return torch.randn(4, 5, generator=g, dtype=dtype), torch.randn(4, 2, generator=g, dtype=dtype)


def loss(model, r, t):
    x, y = batch(r, t)
    return ((model(x, r) - y) ** 2).mean()


torch.manual_seed(7)
model = Net()
reference = copy.deepcopy(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
dp = data_parallel(model, opt, bucket_mb=0.0005, first_bucket_mb=0.0002,
                   compression="fp16" if variant == "fp16" else "none",
                   find_unused_parameters=variant == "unused", algo="torch" if variant == "torch" else None)
steps = [2 + r for r in range(size)]
with dp.join():
    for t in range(steps[rank]):
        opt.zero_grad()
        loss(model, rank, t).backward()
        opt.step()

ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
for t in range(max(steps)):
    ref_opt.zero_grad()
    total = sum(loss(reference, r, t) for r in range(size) if t < steps[r]) / size
    total.backward()
    ref_opt.step()

tol = 2e-3 if variant == "fp16" else 1e-10
for (name, p), q in zip(model.named_parameters(), reference.parameters()):
    if not torch.allclose(p, q, rtol=tol, atol=tol):
        raise AssertionError(f"{variant}: {name} differs from the simulation by {(p - q).abs().max().item():g}")
mine = torch.cat([p.detach().reshape(-1) for p in model.parameters()] +
                 [opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters() if p in opt.state])
if len(set(comm.allgather(mine.numpy().tobytes()))) != 1:
    raise AssertionError(f"{variant}: ranks hold different weights or momentum after join()")
dp.close()
if rank == 0:
    print(json.dumps({"ranks": size, "variant": variant, "steps": steps}), flush=True)
