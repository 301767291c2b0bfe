"""Backward graphs that are not one plain pass: activation checkpointing ("reentrant",
"nonreentrant": the head, where backward starts, and a body layer are recomputed, by the
reentrant variant in backward passes nested in the user's; "nested": a reentrant checkpoint
inside another), a gradient penalty ("penalty": torch.autograd.grad of the outputs, then
backward through it), a layer used twice in one forward ("reused"), torch.compile with
fullgraph=True ("compiled": the model compiled after data_parallel wrapped it;
"compiled-first": before; "split": by ``dp.compile()``, into one graph per bucket, so the
reductions can overlap backward), and a GAN ("gan": two models, each data-parallel, two backward
passes a step, the generator's through the discriminator; "gan-no-sync": that one under the
discriminator's no_sync(), which skips averaging its unused gradients). Each trains 3 steps against a
one-process run of the same model on the global batch; every step must be averaged once
(``dp.step`` counts them) and end with the same weights. Prints one JSON line on rank 0 with
the variants checked."""

import contextlib
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
        elif self.variant == "reused":
            out = self.head(self.middle(self.middle(h)))
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


def compiled_graphs(loss) -> int:
    """How many compiled backward graphs the loss's backward runs (one per compiled graph)."""
    seen, todo, count = set(), [loss.grad_fn], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += "CompiledFunctionBackward" in node.name()
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return count


def same_weights(variant, step, models, references):
    for model, reference in zip(models, references):
        for (name, a), b in zip(model.named_parameters(), reference.parameters()):
            if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"{variant}, step {step}: {name} differs from one-process training by "
                                     f"{(a - b).abs().max().item():g}")
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes()
        if len(set(comm.allgather(flat))) != 1:
            raise AssertionError(f"{variant}, step {step}: ranks hold different weights")


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
    elif variant == "split":
        run = dp.compile(backend="aot_eager", fullgraph=True)
    if len(dp.buckets) < 2:
        raise AssertionError(f"the model should make several buckets, not {dp.buckets}")
    per = BATCH // size  # 1, 2 and 4 ranks divide it
    for step in range(STEPS):
        x, y = batch(step)
        mine = slice(rank * per, (rank + 1) * per)
        opt.zero_grad()
        loss = loss_fn(variant, run, x[mine], y[mine])
        graphs = compiled_graphs(loss)
        if variant.startswith("compiled") and graphs != 1 or variant == "split" and graphs < 2:
            raise AssertionError(f"{variant}: backward runs {graphs} compiled graphs")
        loss.backward()  # data_parallel averages over the ranks
        opt.step()
        if dp.step != step + 1:
            raise AssertionError(f"{variant}: after {step + 1} steps data_parallel counts {dp.step}: "
                                 "a step was averaged more than once")
        single_opt.zero_grad()
        loss_fn(variant, single, x, y).backward()
        single_opt.step()
        same_weights(variant, step, [model], [single])
    dp.close()


def gan_step(g, d, g_opt, d_opt, z, real, quiet=contextlib.nullcontext):
    """The discriminator on real and (detached) generated samples, then the generator through
    the discriminator, whose gradients that backward also produces (and averages again, unless
    ``quiet()`` is the discriminator's no_sync)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(len(z), 1, dtype=z.dtype), torch.zeros(len(z), 1, dtype=z.dtype)
    d_opt.zero_grad()
    fake = g(z)
    (bce(d(real), ones) + bce(d(fake.detach()), zeros)).backward()
    d_opt.step()
    g_opt.zero_grad()
    with quiet():
        bce(d(fake), ones).backward()
    g_opt.step()


def train_gan(variant):
    torch.manual_seed(3)
    g = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6)).double()
    d = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    g1, d1 = copy.deepcopy(g), copy.deepcopy(d)
    g_opt, d_opt, g1_opt, d1_opt = (torch.optim.Adam(m.parameters(), 1e-2) for m in (g, d, g1, d1))
    g_dp, d_dp = data_parallel(g, g_opt), data_parallel(d, d_opt)
    per = BATCH // size
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(step)
        z = torch.randn(BATCH, 4, generator=gen, dtype=torch.float64)
        real = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64)
        mine = slice(rank * per, (rank + 1) * per)
        quiet = d_dp.no_sync if variant == "gan-no-sync" else contextlib.nullcontext
        gan_step(g, d, g_opt, d_opt, z[mine], real[mine], quiet)
        gan_step(g1, d1, g1_opt, d1_opt, z, real)
        d_steps = step + 1 if variant == "gan-no-sync" else 2 * step + 2  # two backward passes a step reach it
        if (g_dp.step, d_dp.step) != (step + 1, d_steps):
            raise AssertionError(f"{variant}: after {step + 1} steps the generator counts {g_dp.step} averaged, "
                                 f"the discriminator {d_dp.step}, not {d_steps}")
        same_weights(variant, step, [g, d], [g1, d1])
    g_dp.close()
    d_dp.close()


variants = sys.argv[1:] or ["reentrant", "nested", "nonreentrant", "penalty", "reused", "compiled",
                            "compiled-first", "split", "gan", "gan-no-sync"]
for variant in variants:
    if variant.startswith("gan"):
        train_gan(variant)
    else:
        train(variant)
if rank == 0:
    print(json.dumps({"ranks": size, "checked": variants}), flush=True)
