"""Backward graphs that are not one plain pass: activation checkpointing ("reentrant",
"nonreentrant": the head, where backward starts, and a body layer are recomputed, by the
reentrant variant in backward passes nested in the user's; "nested": a reentrant checkpoint
inside another), a gradient penalty ("penalty": torch.autograd.grad of the outputs, then
backward through it) and torch.compile with fullgraph=True ("compiled": the model compiled
after data_parallel wrapped it; "compiled-first": before). Each trains 3 steps against a
one-process run of the same model on the global batch; every step must be averaged once
(``dp.step`` counts them) and end with the same weights. Prints one JSON line on rank 0 with
the variants checked."""

import copy
import json
import sys

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_num_threads(1)
STEPS, BATCH = 3, 8


class Net(nn.Module):
    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.first = nn.Sequential(nn.Linear(5, 16), nn.Tanh()).double()
        self.middle = nn.Sequential(nn.Linear(16, 16), nn.Tanh()).double()
        self.head = nn.Linear(16, 3).double()

    def forward(self, x):
        h = self.first(x)
        if self.variant in ("reentrant", "nonreentrant"):
            reentrant = self.variant == "reentrant"
            h = checkpoint(self.middle, h, use_reentrant=reentrant)
            out = checkpoint(self.head, h, use_reentrant=reentrant)
        elif self.variant == "nested":
            out = checkpoint(lambda t: self.head(checkpoint(self.middle, t, use_reentrant=True)), h,
                             use_reentrant=True)
        else:
            out = self.head(self.middle(h))
        return {"out": out, "features": h}  # a dict, as Hugging Face models return


def loss_fn(variant, model, x, y):
    if variant in ("reentrant", "nested"):
        x = x.clone().requires_grad_()  # else a reentrant checkpoint warns that no input requires grad
    if variant == "penalty":
        x = x.clone().requires_grad_()
        out = model(x)["out"]
        (dx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return ((out - y) ** 2).mean() + 0.1 * (dx ** 2).sum(dim=1).mean()
    return ((model(x)["out"] - y) ** 2).mean()


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, 5, generator=g, dtype=torch.float64), torch.randn(BATCH, 3, generator=g,
                                                                                 dtype=torch.float64)


def train(variant):
    torch.manual_seed(7)
    model = Net(variant)
    single = copy.deepcopy(model)
    single_opt = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run = torch.compile(model, backend="aot_eager", fullgraph=True) if variant == "compiled-first" else model
    dp = data_parallel(model, opt, bucket_mb=0.001, first_bucket_mb=0.0005)  # several buckets
    if variant == "compiled":  # fullgraph: data_parallel's hooks must not break the graph
        run = torch.compile(model, backend="aot_eager", fullgraph=True)
    if len(dp.buckets) < 2:
        raise AssertionError(f"the model should make several buckets, not {dp.buckets}")
    per = BATCH // size  # 1, 2 and 4 ranks divide it
    for step in range(STEPS):
        x, y = batch(step)
        mine = slice(rank * per, (rank + 1) * per)
        opt.zero_grad()
        loss_fn(variant, run, x[mine], y[mine]).backward()  # data_parallel averages over the ranks
        opt.step()
        if dp.step != step + 1:
            raise AssertionError(f"{variant}: after {step + 1} steps data_parallel counts {dp.step}: "
                                 "a step was averaged more than once")
        single_opt.zero_grad()
        loss_fn(variant, single, x, y).backward()
        single_opt.step()
        for (name, a), b in zip(model.named_parameters(), single.parameters()):
            if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"{variant}, step {step}: {name} differs from one-process training by "
                                     f"{(a - b).abs().max().item():g}")
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes()
        if len(set(comm.allgather(flat))) != 1:
            raise AssertionError(f"{variant}, step {step}: ranks hold different weights")
    dp.close()


variants = sys.argv[1:] or ["reentrant", "nested", "nonreentrant", "penalty", "compiled", "compiled-first"]
for variant in variants:
    train(variant)
if rank == 0:
    print(json.dumps({"ranks": size, "checked": variants}), flush=True)
