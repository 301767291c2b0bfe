"""Uneven inputs under ``dp.join()``: rank r has 2 + r batches (with compression, an unused
head, through torch.distributed, or a BatchNorm, per argv[1]). No rank may hang; afterwards
every rank holds the same weights, momentum and buffers, equal to a one-process simulation in
which the ranks that ran out of batches contribute zero gradients to an average over the whole
world and each step's buffers are those of the lowest rank still training (rank 0's would be
stale once it has left). Prints one JSON line on rank 0."""

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
        self.norm = nn.BatchNorm1d(12, dtype=dtype) if variant == "buffers" else nn.Identity()

    def forward(self, x, r):
        h = torch.tanh(self.norm(self.body(x)))
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
    active = [r for r in range(size) if t < steps[r]]
    start = [b.clone() for b in reference.buffers()]
    kept = None
    for r in active:  # each rank's forward from the same buffers; the lowest rank's are kept
        with torch.no_grad():
            for b, v in zip(reference.buffers(), start):
                b.copy_(v)
        (loss(reference, r, t) / size).backward()  # before the next copy: BatchNorm saves its buffers
        kept = kept or [b.clone() for b in reference.buffers()]
    with torch.no_grad():
        for b, v in zip(reference.buffers(), kept):
            b.copy_(v)
    ref_opt.step()

tol = 2e-3 if variant == "fp16" else 1e-10
for (name, p), q in [*zip(model.named_parameters(), reference.parameters()),
                     *zip(model.named_buffers(), reference.buffers())]:
    if not torch.allclose(p.to(dtype), q.to(dtype), rtol=tol, atol=tol):
        raise AssertionError(f"{variant}: {name} differs from the simulation by {(p - q).abs().max().item():g}")
mine = torch.cat([p.detach().reshape(-1) for p in model.parameters()] +
                 [opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters() if p in opt.state] +
                 [b.reshape(-1).to(dtype) for b in model.buffers()])
if len(set(comm.allgather(mine.numpy().tobytes()))) != 1:
    raise AssertionError(f"{variant}: ranks hold different weights or momentum after join()")
dp.close()
if rank == 0:
    print(json.dumps({"ranks": size, "variant": variant, "steps": steps}), flush=True)
