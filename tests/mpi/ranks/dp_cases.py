"""Data-parallel gradients at any world size against references computed without any
communication (every rank recomputes the whole global batch on a private copy of the model).
Prints one JSON line on rank 0 with what was checked; any wrong value raises."""

import copy
import json
import os
import shutil
import sys

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import choose_algo, data_parallel
from mpirt.powersgd import initial_q, shape_of
from mpirt.sampler import DistributedSampler

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
torch.set_num_threads(1)
checked = []


def make_model(dtype=torch.float64):
    torch.manual_seed(1234 + rank)  # different on every rank: the broadcast must fix it
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3)).to(dtype)


def data(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


def reference_grads(model, batches):
    """Gradient of the sum over ``batches`` of the global-batch mean loss, on one process."""
    ref = copy.deepcopy(model)
    for x, y in batches:
        loss_fn(ref, x, y).backward()
    return {n: p.grad.clone() for n, p in ref.named_parameters()}


def same_on_all_ranks(tensors, what):
    flat = torch.cat([(torch.view_as_real(t) if t.is_complex() else t).detach().reshape(-1).to(torch.float64)
                      for t in tensors]).numpy()
    gathered = comm.allgather(flat.tobytes())
    if any(g != gathered[0] for g in gathered):
        raise AssertionError(f"{what}: ranks hold different values")


def compare(model, ref, what, rtol, atol):
    for n, p in model.named_parameters():
        if not torch.allclose(p.grad, ref[n], rtol=rtol, atol=atol):
            err = (p.grad - ref[n]).abs().max().item()
            raise AssertionError(f"{what}: gradient of {n} differs from the reference by {err:g}")
    same_on_all_ranks([p.grad for p in model.parameters()], what)
    checked.append(what)


def refused(call, error, starts: str, what: str) -> None:
    """``call()`` must raise ``error`` with a message that starts with ``starts``."""
    try:
        call()
    except error as e:
        if not str(e).startswith(starts):
            raise
        return
    raise AssertionError(what)


def local_step(model, x, y, shard, global_n):
    """This rank's part of a global batch: its rows, loss weighted to its share."""
    idx = shard
    if len(idx):
        (loss_fn(model, x[idx], y[idx]) * (len(idx) * size / global_n)).backward()


def step_both(model, opt, single, single_opt, x, y) -> None:
    """One optimizer step data-parallel (this rank's rows) and one in a single process (all)."""
    opt.zero_grad()
    local_step(model, x, y, split(len(x)), len(x))
    opt.step()
    single_opt.zero_grad()
    loss_fn(single, x, y).backward()
    single_opt.step()


def split(n):
    s = DistributedSampler(n, n, rank, size, shuffle=False)
    return s.next().indices


# 1. Equivalence with one big batch, every algorithm, tiny buckets (many, reduced in order),
#    an uneven split (global batch 10), with and without the communication thread.
for algo in ("auto", "mpi", "ring", "shm", "ordered", "mpi4py", "torch"):
    for overlap in (True, False):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        dp = data_parallel(model, opt, bucket_mb=0.002, first_bucket_mb=0.0005, algo=algo, overlap=overlap)
        assert len(dp.buckets) > 2, dp.buckets
        x, y = data(10)
        ref = reference_grads(model, [(x, y)])
        local_step(model, x, y, split(10), 10)
        dp.synchronize()
        compare(model, ref, f"equivalence algo={algo} overlap={overlap}", 1e-12, 1e-12)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()  # pre-synchronized: must not reduce again, must still update
        if all(torch.equal(a, p) for a, p in zip(before, model.parameters())):
            raise AssertionError("optimizer.step() after synchronize() did not update the weights")
        same_on_all_ranks(list(model.parameters()), f"weights after step algo={algo}")
        dp.close()

# 1a. algo="torch" twice at once: closing the first leaves the group to the second.
first = data_parallel(make_model(), None, algo="torch")
model = make_model()
second = data_parallel(model, None, algo="torch", bucket_mb=0.002)
first.close()
x, y = data(10)
ref = reference_grads(model, [(x, y)])
local_step(model, x, y, split(10), 10)
second.synchronize()
compare(model, ref, "algo=torch: a second object outlives the first", 1e-12, 1e-12)
second.close()

# 1b. algo="ordered": the same bits whatever the bucket size (with the others, at 3 or more
#     ranks the bucket boundaries decide the order of additions).
def trained(bucket_mb):
    model = make_model(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = data_parallel(model, opt, bucket_mb=bucket_mb, first_bucket_mb=min(bucket_mb, 1.0), algo="ordered")
    for step in range(3):
        x, y = data(12, torch.float32, seed=step)
        opt.zero_grad()
        local_step(model, x + rank, y, split(12), 12)  # ranks' gradients differ in size: order shows
        opt.step()
    dp.close()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


if not torch.equal(trained(0.0005), trained(25.0)):
    raise AssertionError("algo=ordered: weights depend on the bucket size")
checked.append("ordered: bucket size leaves the bits alone")

# Complex parameters: averaged as their real and imaginary parts, by the core and by torch.
for algo in ("auto", "torch"):
    torch.manual_seed(60 + rank)
    model = nn.Linear(3, 2).to(torch.complex64)
    dp = data_parallel(model, None, algo=algo)
    x = torch.randn(8, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(61))
    ref_model = copy.deepcopy(model)
    ref_model(x).abs().pow(2).mean().backward()
    idx = split(8)
    (model(x[idx]).abs().pow(2).mean() * (len(idx) * size / 8)).backward()
    compare(model, {n: p.grad for n, p in ref_model.named_parameters()}, f"complex parameters algo={algo}", 1e-5, 1e-6)
    dp.close()

# 2. The broadcast: different initial weights on every rank become rank 0's.
model = make_model()
dp = data_parallel(model, None)
same_on_all_ranks(list(model.parameters()), "broadcast of initial weights")
dp.close()
# Mixed dtypes whose bytes pack unaligned: three float16s, then float32s 6 bytes in, then
# BatchNorm's int64 counter 34 bytes in; every rank's values differ, all become rank 0's.
torch.manual_seed(50 + rank)
model = nn.Sequential(nn.Linear(3, 1, bias=False).half(), nn.Linear(2, 1), nn.BatchNorm1d(1))
model[2].running_mean.fill_(rank + 0.5)
model[2].num_batches_tracked.fill_(rank + 7)
dp = data_parallel(model, None)
same_on_all_ranks(list(model.parameters()) + list(model.buffers()), "broadcast of unaligned mixed dtypes")
if model[2].num_batches_tracked.item() != 7 or model[2].running_mean.item() != 0.5:
    raise AssertionError(f"broadcast: BatchNorm's buffers are not rank 0's: {list(model[2].buffers())}")
checked.append("broadcast")
dp.close()

# 3. Several training steps through optimizer.step() (the pre-step hook), weights identical
#    on every rank after every step and equal to single-process training on the global batch.
model = make_model()
dp_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
dp = data_parallel(model, dp_opt, bucket_mb=0.003)
single = copy.deepcopy(model)
single_opt = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)
for step in range(5):
    step_both(model, dp_opt, single, single_opt, *data(8, seed=step))
    same_on_all_ranks(list(model.parameters()), f"weights after step {step}")
    for a, b in zip(model.parameters(), single.parameters()):
        if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
            raise AssertionError(f"step {step}: data-parallel weights differ from single-process training")
checked.append("5 steps == single process")
dp.close()

# 4. Gradient accumulation: two backward passes under no_sync, the third synchronised.
model = make_model()
dp = data_parallel(model, None, bucket_mb=0.002)
batches = [data(8, seed=10 + k) for k in range(3)]
ref = reference_grads(model, batches)
with dp.no_sync():
    for x, y in batches[:2]:
        local_step(model, x, y, split(8), 8)
local_step(model, *batches[2], split(8), 8)
dp.synchronize()
compare(model, ref, "accumulation (no_sync x2 + sync)", 1e-12, 1e-12)
dp.close()

# 4a. The same with backward_passes_per_step=3 (Horovod's option), twice over: only the third
#     backward averages, and a step then starts the count again; a step after one pass
#     averages what there is.
model = make_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt, bucket_mb=0.002, backward_passes_per_step=3)
for round_ in range(2):
    batches = [data(8, seed=20 + 3 * round_ + k) for k in range(3)]
    ref = reference_grads(model, batches)
    opt.zero_grad()
    for k, (x, y) in enumerate(batches):
        local_step(model, x, y, split(8), 8)
        if dp.step != round_ + (k == 2):
            raise AssertionError(f"backward_passes_per_step=3: after pass {k + 1} of round {round_ + 1}, "
                                 f"{dp.step} averagings")
    compare(model, ref, "accumulation backward_passes_per_step=3", 1e-12, 1e-12)
    opt.step()
opt.zero_grad()
x, y = data(8, seed=40)
ref = reference_grads(model, [(x, y)])
local_step(model, x, y, split(8), 8)
dp.synchronize()
compare(model, ref, "backward_passes_per_step=3: a step after one pass", 1e-12, 1e-12)
refused(lambda: data_parallel(make_model(), None, backward_passes_per_step=0), ValueError,
        "backward_passes_per_step=0: give a whole number >= 1", "backward_passes_per_step=0 was accepted")
dp.close()

# 5. Compression: fp16 / bf16 on the wire, fp32 model: cast back on the cast thread, or inline
#    without overlap; through torch.distributed too, where two buckets are in flight at once.
for comp, tol, algo, overlap in (("fp16", 2e-3, "auto", True), ("bf16", 2e-2, "auto", True),
                                 ("fp16", 2e-3, "auto", False), ("fp16", 2e-3, "torch", True)):
    model = make_model(torch.float32)
    dp = data_parallel(model, None, compression=comp, bucket_mb=0.002, algo=algo, overlap=overlap)
    x, y = data(16, torch.float32)
    ref = reference_grads(model, [(x, y)])
    local_step(model, x, y, split(16), 16)
    dp.synchronize()
    compare(model, ref, f"compression {comp}" + ("" if algo == "auto" else f" algo={algo}")
            + ("" if overlap else " overlap=False"), tol, tol)
    dp.close()


# 5b. PowerSGD: each step's gradients equal a one-process run of the scheme over every rank's
#     gradient (each rank recomputes them all): exact steps first, then compressed ones with
#     warm-started Q and the error feedback carried from step to step.
def powersgd_case(r, start, steps):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    dp = data_parallel(model, opt, compression="powersgd", powersgd_rank=r, powersgd_start=start, bucket_mb=0.002)
    sim = copy.deepcopy(model)  # rank 0's weights, after the broadcast
    sim_opt = torch.optim.SGD(sim.parameters(), lr=0.2)
    state, compressed = {}, 0
    for step in range(steps):
        x, y = data(12, seed=20 + step)
        grads = []  # every rank's own gradient
        for k in range(size):
            m = copy.deepcopy(sim)
            idx = DistributedSampler(12, 12, k, size, shuffle=False).next().indices
            (loss_fn(m, x[idx], y[idx]) * (len(idx) * size / 12)).backward()
            grads.append({n: q.grad for n, q in m.named_parameters()})
        expected = {}
        for b, names in enumerate(dp.buckets):
            for i, name in enumerate(names):
                gs = [g[name] for g in grads]
                shape = shape_of(gs[0], r)
                if step < start or shape is None or size == 1:  # one rank sends nothing, so compresses nothing
                    expected[name] = sum(gs) / size
                    continue
                n, mcols, rr = shape
                q, errs = state.get(name) or (initial_q(mcols, rr, b * 1000 + i).to(gs[0].dtype),
                                              [torch.zeros(n, mcols, dtype=gs[0].dtype)] * size)
                ms = [g.reshape(n, mcols) + e for g, e in zip(gs, errs)]
                pp = torch.linalg.qr(sum(mm @ q for mm in ms) / size).Q
                q = sum(mm.t() @ pp for mm in ms) / size
                approx = pp @ q.t()
                state[name] = (q, [mm - approx for mm in ms])
                expected[name] = approx.reshape(gs[0].shape)
                compressed += 1
        opt.zero_grad()
        local_step(model, x, y, split(12), 12)
        dp.synchronize()
        compare(model, expected, f"powersgd r={r} step {step}", 1e-9, 1e-11)
        checked.pop()
        opt.step()
        for n, q in sim.named_parameters():
            q.grad = expected[n].clone()
        sim_opt.step()
    if size > 1 and not compressed:
        raise AssertionError("powersgd: no gradient was compressed; the case tests nothing")
    dp.close()


for r, start in ((1, 0), (2, 2)):
    powersgd_case(r, start, 5)
    checked.append(f"powersgd r={r} start={start}")

# 6. Unused parameters: head `a` is used on even ranks only, head `b` on no rank.
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8, dtype=torch.float64)
        self.a = nn.Linear(8, 3, dtype=torch.float64)
        self.b = nn.Linear(8, 3, dtype=torch.float64)

    def forward(self, x, use_a):
        h = torch.tanh(self.body(x))
        return self.a(h) if use_a else h[:, :3]


for find_unused in (True, False):
    model = TwoHeads()
    dp = data_parallel(model, None, find_unused_parameters=find_unused, bucket_mb=0.0005)
    x, y = data(4 * size)
    ref_model = copy.deepcopy(model)
    for r in range(size):  # reference: every rank's contribution, averaged, on one process
        rows = slice(4 * r, 4 * r + 4)
        (((ref_model(x[rows], r % 2 == 0) - y[rows]) ** 2).mean() / size).backward()
    rows = slice(4 * rank, 4 * rank + 4)
    ((model(x[rows], rank % 2 == 0) - y[rows]) ** 2).mean().backward()
    dp.synchronize()
    for n, p in model.named_parameters():
        expect = dict(ref_model.named_parameters())[n].grad
        if expect is None:  # unused on every rank
            if find_unused and p.grad is not None:
                raise AssertionError(f"find_unused: {n} is unused everywhere but got a gradient")
            if not find_unused and (p.grad is None or p.grad.abs().max() != 0):
                raise AssertionError(f"{n} is unused everywhere: expected a zero gradient")
        elif p.grad is None or not torch.allclose(p.grad, expect, rtol=1e-12, atol=1e-14):
            raise AssertionError(f"unused-parameter case (find_unused={find_unused}): gradient of {n} is wrong")
    checked.append(f"unused parameters find_unused={find_unused}")
    dp.close()

# 7. Two losses, two backward passes before one step: the gradients of their sum (each
#    backward averages before it returns, as DDP does); a step inside no_sync() is an error.
model = make_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt, bucket_mb=0.002)
batches = [data(8, seed=20), data(8, seed=21)]
ref = reference_grads(model, batches)
for x, y in batches:
    local_step(model, x, y, split(8), 8)
compare(model, ref, "two backward passes before a step", 1e-12, 1e-12)
opt.step()
with dp.no_sync():
    try:
        opt.step()
        raise AssertionError("optimizer.step() inside no_sync() was accepted")
    except RuntimeError as e:
        if "no_sync" not in str(e):
            raise
dp.close()
# algo="torch" over a torch.distributed group that disagrees with MPI (here one group per
# rank): refused on every rank, naming both views, before any reduction could pair wrong ranks.
if size > 1:
    import torch.distributed as dist

    from mpirt.torchdist import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        data_parallel(make_model(), None, algo="torch")
        raise AssertionError("algo=torch accepted a torch.distributed group of other ranks")
    except ValueError as e:
        if not str(e).startswith(f"torch.distributed disagrees with MPI about the {size} ranks: MPI rank 0 is its "
                                 "rank 0 of 1, MPI rank 1 is its rank 0 of 1"):
            raise
    dist.destroy_process_group()
# what auto runs: NCCL for a CUDA model only where NCCL serves every rank; names stay as given
for args, runs in ((("auto", True, True), "torch"), (("auto", True, False), "core"), (("auto", False, True), "core"),
                   (("auto", False, False), "core"), (("core", True, True), "core"), (("ring", True, True), "ring"),
                   (("mpi4py", True, True), "mpi4py")):
    if choose_algo(*args) != runs:
        raise AssertionError(f"choose_algo{args} = {choose_algo(*args)!r}, not {runs!r}")
# MPIRT_ALGO is the default an argument overrides; a wrong one is refused by name.
os.environ["MPIRT_ALGO"] = "mpi4py"
for given, runs in ((None, "mpi4py"), ("shm", "shm"), ("auto", "core")):  # a CPU model: the core
    dp = data_parallel(make_model(), None, algo=given)
    if dp.algo != runs:
        raise AssertionError(f"algo={given!r} with MPIRT_ALGO=mpi4py ran {dp.algo!r}, not {runs!r}")
    dp.close()
os.environ["MPIRT_ALGO"] = "nccl"
try:
    data_parallel(make_model(), None)
    raise AssertionError("MPIRT_ALGO=nccl was accepted")
except ValueError as e:
    if not str(e).startswith("MPIRT_ALGO='nccl' is not an algorithm: set one of auto, core, mpi,") or \
            "algo='torch' reduces through it" not in str(e):
        raise
del os.environ["MPIRT_ALGO"]
# A model wrapped twice (a new data_parallel each epoch, the last one never closed): refused
# before any collective, since both would average every gradient; after close(), allowed.
model = make_model()
dp = data_parallel(model, None)
refused(lambda: data_parallel(model, None), RuntimeError,
        "parameter '0.weight' is already data-parallel under a data_parallel() not yet closed: use that one, or call "
        "its close()", "a model already data-parallel was wrapped again")
dp.close()
data_parallel(model, None).close()
checked.append("misuse errors")

# 7b. Freezing and unfreezing: a parameter frozen after wrapping keeps grad None, so AdamW's
#     weight decay leaves it alone as in one process (it still contributes zeros to its
#     bucket); one frozen when wrapped and thawed later is refused by name, since nothing
#     averages it, and training goes on after close() and a new data_parallel.
model = make_model()
opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5)
dp = data_parallel(model, opt, bucket_mb=0.002)
single = copy.deepcopy(model)  # rank 0's weights, as broadcast
single_opt = torch.optim.AdamW(single.parameters(), lr=0.01, weight_decay=0.5)
for m in (model, single):
    m[0].weight.requires_grad_(False)
for step in range(2):
    step_both(model, opt, single, single_opt, *data(8, seed=40 + step))
    if model[0].weight.grad is not None:
        raise AssertionError("a parameter frozen after wrapping was given a gradient")
    for (n, a), b in zip(model.named_parameters(), single.parameters()):
        if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
            raise AssertionError(f"frozen after wrapping, step {step}: {n} differs from one-process training")
dp.close()
model[0].weight.requires_grad_(True)
model[2].weight.requires_grad_(False)
dp = data_parallel(model, opt, bucket_mb=0.002)
model[2].weight.requires_grad_(True)
opt.zero_grad()
refused(lambda: local_step(model, *data(8, seed=42), split(8), 8), RuntimeError,
        "parameter '2.weight' did not require grad when data_parallel() was built, so its gradient is not averaged",
        "a parameter thawed after wrapping trained without averaging")
dp.close()
dp = data_parallel(model, opt, bucket_mb=0.002)
opt.zero_grad()
local_step(model, *data(8, seed=42), split(8), 8)
opt.step()
same_on_all_ranks(list(model.parameters()), "thawed, then wrapped again")
dp.close()
checked.append("frozen and thawed parameters")

# 7c. Two optimizers (SGD for the weights, Adam for the biases, as Muon and AdamW are split)
#     and a global batch of 2, so that at 4 ranks two ranks run no backward: they take part from
#     the first optimizer's pre-hook; the second optimizer starts no averaging of its own.
for optimizers in (1, 2):
    model = make_model()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]

    def make_opts(m_weights, m_biases):
        if optimizers == 1:
            return [torch.optim.SGD([{"params": m_weights}, {"params": m_biases}], lr=0.05, momentum=0.9)]
        return [torch.optim.SGD(m_weights, lr=0.05, momentum=0.9), torch.optim.Adam(m_biases, lr=0.01)]

    opts = make_opts(weights, biases)
    dp = data_parallel(model, opts if optimizers == 2 else opts[0], bucket_mb=0.002)
    single = copy.deepcopy(model)
    single_opts = make_opts([p for n, p in single.named_parameters() if n.endswith("weight")],
                            [p for n, p in single.named_parameters() if n.endswith("bias")])
    for step in range(3):
        x, y = data(2, seed=50 + step)
        for o in opts:
            o.zero_grad()
        local_step(model, x, y, split(2), 2)
        for o in opts:
            o.step()
        for o in single_opts:
            o.zero_grad()
        loss_fn(single, x, y).backward()
        for o in single_opts:
            o.step()
        if dp.step != step + 1:
            raise AssertionError(f"{optimizers} optimizer(s): after {step + 1} steps data_parallel averaged {dp.step} "
                                 "times")
        for (n, a), b in zip(model.named_parameters(), single.parameters()):
            if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"{optimizers} optimizer(s), step {step}: {n} differs from one-process training")
    dp.close()
checked.append("empty shards, two optimizers")

# 7d. A dataset loaded through the sampler by a DataLoader with two worker processes each (forked
#     from a rank that has MPI and the communication thread running): 19 samples in global batches
#     of 8, so each epoch ends with 3 (at 4 ranks one rank's shard is empty), against one process
#     training on each whole global batch in the same order.
x_all, y_all = data(19, seed=77)
model = make_model()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
dp = data_parallel(model, opt, bucket_mb=0.002)
single = copy.deepcopy(model)
single_opt = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)
sampler = DistributedSampler(torch.utils.data.TensorDataset(x_all, y_all), 8, rank, size, seed=3)
loader = sampler.loader(torch.utils.data.TensorDataset(x_all, y_all), num_workers=2, persistent_workers=True)
whole = DistributedSampler(19, 8, 0, 1, seed=3)
for epoch in range(2):
    for shard, batch in loader:
        opt.zero_grad()
        if batch is not None:
            (loss_fn(model, *batch) * shard.weight(size)).backward()
        opt.step()
        idx = whole.next().indices
        single_opt.zero_grad()
        loss_fn(single, x_all[idx], y_all[idx]).backward()
        single_opt.step()
        for (n, a), b in zip(model.named_parameters(), single.parameters()):
            if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
                raise AssertionError(f"DataLoader, epoch {epoch} step {shard.step_in_epoch}: {n} differs from "
                                     "one-process training")
if dp.step != 6 or sampler.state_dict()["position"] != 3 or sampler.epoch != 1:
    raise AssertionError(f"DataLoader: {dp.step} steps averaged, sampler at {sampler.state_dict()}")
same_on_all_ranks(list(model.parameters()), "DataLoader through the sampler")
dp.close()
checked.append("DataLoader through the sampler, 2 workers")

# 8. AMP's recipe as PyTorch documents it, no synchronize(): GradScaler.unscale_ and gradient
#    clipping right after backward see averaged gradients; an inf on one rank only makes every
#    rank skip the step (a local inf check would let the ranks' weights part).
model = make_model(torch.float32)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt, bucket_mb=0.002)
scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
x, y = data(8, torch.float32, seed=30)
ref = reference_grads(model, [(x, y)])
idx = split(8)
scaler.scale(loss_fn(model, x[idx], y[idx]) * (len(idx) * size / 8)).backward()
scaler.unscale_(opt)
compare(model, ref, "amp: averaged before unscale_", 1e-5, 1e-6)
torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
scaler.step(opt)
scaler.update()
same_on_all_ranks(list(model.parameters()), "amp: weights after a step")
before = [p.detach().clone() for p in model.parameters()]
opt.zero_grad()
poison = float("inf") if rank == size - 1 else 1.0
scaler.scale(loss_fn(model, x[idx], y[idx]) * poison).backward()
scaler.step(opt)
scaler.update()
if not all(torch.equal(a, p) for a, p in zip(before, model.parameters())):
    raise AssertionError("amp: a rank stepped although one rank's gradients were not finite")
scales = comm.allgather(scaler.get_scale())
if len(set(scales)) != 1 or scales[0] >= 2.0 ** 10:
    raise AssertionError(f"amp: loss scales after an inf step: {scales}")
checked.append("amp grad scaler")
dp.close()

# 9. Buckets in memory the ranks of a node share (the core's shm then reduces them without
#    staging): the same bits as private buckets (shm folds in local rank order either way), on
#    the wire in fp16 too; gradients still there after close(), which frees that memory; and not
#    shared where it cannot help, or with MPIRT_SHARED_BUCKETS=0.
def shared_case(setting, compression):
    os.environ["MPIRT_SHARED_BUCKETS"] = setting
    model = make_model(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = data_parallel(model, opt, bucket_mb=0.002, algo="shm", compression=compression)
    for seed in (40, 41):
        opt.zero_grad()
        x, y = data(10, torch.float32, seed=seed)
        local_step(model, x, y, split(10), 10)
        opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    dp.close()
    del os.environ["MPIRT_SHARED_BUCKETS"]
    if not all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters())):
        raise AssertionError("shared buckets: gradients changed when close() freed the shared memory")
    return dp.shared_buckets, grads + [p.detach().clone() for p in model.parameters()]


for compression in ("none", "fp16"):
    (on, shared), (off, private) = shared_case("1", compression), shared_case("0", compression)
    if (on, off) != (size > 1, False):
        raise AssertionError(f"shared buckets with {size} ranks: {on}, with MPIRT_SHARED_BUCKETS=0: {off}")
    if not all(torch.equal(a, b) for a, b in zip(shared, private)):
        raise AssertionError(f"shared buckets ({compression}): gradients or weights differ from private buckets'")
    same_on_all_ranks(shared, f"shared buckets ({compression})")
    checked.append(f"shared buckets {compression}")
for options in ({"algo": "ring"}, {"algo": "mpi4py"}, {"compression": "powersgd"}):
    dp = data_parallel(make_model(torch.float32), None, **options)
    if dp.shared_buckets:
        raise AssertionError(f"buckets shared with {options}, where no reduction reads them in place")
    dp.close()
disk_usage = shutil.disk_usage
if rank == size - 1:  # a full /dev/shm on one rank: private buckets on all of them, and training goes on
    shutil.disk_usage = lambda path: disk_usage(path)._replace(free=4096)
model = make_model(torch.float32)
dp = data_parallel(model, torch.optim.SGD(model.parameters(), lr=0.1), algo="shm")
shutil.disk_usage = disk_usage
x, y = data(10, torch.float32, seed=42)
ref = reference_grads(model, [(x, y)])
local_step(model, x, y, split(10), 10)
dp.synchronize()
compare(model, ref, "shared buckets: /dev/shm full on one rank", 1e-5, 1e-6)
if dp.shared_buckets:
    raise AssertionError("buckets shared although one rank's /dev/shm had no room")
dp.close()
checked.append("shared buckets only where shm reads them")

# 10. Buffers (BatchNorm statistics): after every step each rank holds rank 0's, as DDP's
#     broadcast_buffers makes them before the next forward, and rank 0 its own; with
#     broadcast_buffers=False each rank keeps the statistics of its own batches.
for broadcast in (True, False):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = data_parallel(model, opt, broadcast_buffers=broadcast)
    for step in range(3):
        x, y = data(8, seed=70 + 10 * step + rank)  # every rank a batch of its own
        with torch.no_grad():
            own = copy.deepcopy(model)
            own(x)  # the statistics this rank's batch gives
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
        buffers = [b.clone() for b in model.buffers()]
        first = comm.bcast(buffers if rank == 0 else None, root=0)
        expected = first if broadcast else list(own.buffers())
        if not all(torch.equal(a, b) for a, b in zip(buffers, expected)):
            raise AssertionError(f"broadcast_buffers={broadcast}: rank {rank}'s buffers after step {step} are not "
                                 f"{'rank 0' if broadcast else 'its own'}'s")
        if rank == 0 and not all(torch.equal(a, b) for a, b in zip(buffers, own.buffers())):
            raise AssertionError(f"broadcast_buffers={broadcast}: rank 0's buffers are not its own")
        if rank > 0 and all(torch.equal(a, b) for a, b in zip(list(own.buffers())[:2], first[:2])):
            raise AssertionError("buffers: the ranks' batches gave the same statistics; the case shows nothing")
    dp.close()
    checked.append(f"buffers broadcast_buffers={broadcast}")

# Buffers and parameters of every layout: empty, bool, an int64 after an odd number of float32s,
# 0-dim, complex, and non-contiguous (a strided view, whose flat form is not a plain view).
class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6, generator=torch.Generator().manual_seed(rank))[:, ::2])
        for name, t in (("empty", torch.zeros(0)), ("flag", torch.tensor([True, False])), ("odd", torch.zeros(3)),
                        ("count", torch.zeros((), dtype=torch.int64)), ("c", torch.zeros(2, dtype=torch.complex64)),
                        ("strided", torch.zeros(4, 4)[:, ::2])):
            self.register_buffer(name, t)

    def forward(self, x):
        with torch.no_grad():  # each rank its own values: rank 0's must win
            self.flag.fill_(rank % 2 == 1)
            for b in (self.odd, self.count, self.strided):
                b.add_(rank + 1)
            self.c.add_(1j * (rank + 1))
        return x @ self.weight


model = Odd()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt)
same_on_all_ranks([model.weight], "a non-contiguous parameter after the broadcast")
for _ in range(3):
    opt.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
expected = {"flag": [False, False], "odd": [3.0] * 3, "count": 3, "c": [3j, 3j], "strided": [[3.0, 3.0]] * 4,
            "empty": []}
got = {name: b.tolist() for name, b in model.named_buffers()}
if got != expected or model.strided.is_contiguous():
    raise AssertionError(f"buffers of every layout after 3 steps on rank {rank}: {got}")
same_on_all_ranks([model.weight], "a non-contiguous parameter after 3 steps")
dp.close()
checked.append("buffers of every layout")

if rank == 0:
    print(json.dumps({"ranks": size, "checked": checked}))
sys.stdout.flush()
