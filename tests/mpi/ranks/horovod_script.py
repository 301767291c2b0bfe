"""A Horovod training script, as mpi-operator's PyTorch example is written, with `import
mpirt.horovod as hvd` its one changed line: three runs (plain with gradient clipping between
synchronize() and step(); backward_passes_per_step=2 over half batches; fp16 compression)
each reach the weights of one process on the global batch; then the collectives against
values each rank computes itself, and the errors. Rank 0 prints one JSON line, with where each
rank ran. `horovod_script.py cuda`: the model, data and tensors on each rank's GPU."""

import copy
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import mpirt.horovod as hvd
from mpirt.world import world

checked = []


def refused(call, error, starts, what):
    try:
        call()
    except error as e:
        if not str(e).startswith(starts):
            raise
        checked.append(what)
        return
    raise AssertionError(f"{what}: no {error.__name__}")


refused(hvd.size, ValueError, "Horovod has not been initialized; use hvd.init().", "size() before init()")
hvd.init()
hvd.init()  # a second call does nothing
torch.set_num_threads(1)
rank, size = hvd.rank(), hvd.size()
DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
if DEVICE.type == "cuda":
    DEVICE = torch.device("cuda", hvd.local_rank() % torch.cuda.device_count())
    torch.cuda.set_device(DEVICE)

GLOBAL_BATCH, SAMPLES, EPOCHS = 12, 48, 2
g = torch.Generator().manual_seed(7)
dataset = TensorDataset(torch.randn(SAMPLES, 8, generator=g, dtype=torch.float64),
                        torch.randn(SAMPLES, 1, generator=g, dtype=torch.float64))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def train(passes=1, compression=hvd.Compression.none, clip=False, dtype=torch.float64):
    """(this rank's model, the one-process reference) after EPOCHS epochs."""
    torch.manual_seed(100 + rank)  # each rank its own start: broadcast_parameters makes it rank 0's
    model = Net().to(dtype).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, op=hvd.Average, backward_passes_per_step=passes)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    ref_scheduler = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // size, sampler=sampler)
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for k, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            for px, py in zip(x.chunk(passes), y.chunk(passes)):  # each part's mean, weighted to its share
                (F.mse_loss(model(px.to(DEVICE, dtype)), py.to(DEVICE, dtype)) * (len(px) / len(x))).backward()
            if clip:
                optimizer.synchronize()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                with optimizer.skip_synchronize():
                    optimizer.step()
            else:
                optimizer.step()
            scheduler.step()
            # rank r's rows are r, r + size, ...: the step's rows together are this block
            xs, ys = dataset[GLOBAL_BATCH * k:GLOBAL_BATCH * (k + 1)]
            ref_opt.zero_grad()
            F.mse_loss(reference(xs.to(DEVICE, dtype)), ys.to(DEVICE, dtype)).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
            ref_opt.step()
            ref_scheduler.step()
    if not isinstance(optimizer, torch.optim.SGD) or type(optimizer).__name__ != "SGD":
        raise AssertionError(f"DistributedOptimizer is a {type(optimizer)}, not an SGD")
    steps = EPOCHS * SAMPLES // GLOBAL_BATCH
    if optimizer._mpirt_dp.step != steps:  # one averaging a step, however many backward passes
        raise AssertionError(f"{optimizer._mpirt_dp.step} averagings in {steps} steps of {passes} backward passes")
    return model, reference


def same_everywhere(model, what):
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().cpu().numpy().tobytes()
    if len(set(hvd.allgather_object(flat))) != 1:
        raise AssertionError(f"{what}: the ranks' weights differ")


for what, kwargs, tol in (("horovod script, clipped", {"clip": True}, 1e-12),
                          ("horovod script, backward_passes_per_step=2", {"passes": 2}, 1e-12),
                          ("horovod script, fp16 compression", {"compression": hvd.Compression.fp16,
                                                                "dtype": torch.float32}, 3e-3)):
    model, reference = train(**kwargs)
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        if not torch.allclose(p, q, rtol=tol, atol=tol):
            raise AssertionError(f"{what}: {n} is {(p - q).abs().max().item():g} from one process's training")
    same_everywhere(model, what)
    checked.append(what)
hvd.shutdown()  # closes the optimizers; init() again starts afresh
hvd.init()

torch.set_default_device(DEVICE)  # every tensor from here on

# The rank queries, against MPI's view (one node here; several in the cluster test).
w = world()
nodes = hvd.allgather_object(w.local_size)
if (hvd.local_rank(), hvd.local_size(), hvd.cross_rank(), hvd.cross_size(), hvd.is_homogeneous()) != (
        w.local_rank, w.local_size, w.node, w.nodes, len(set(nodes)) == 1):
    raise AssertionError(f"rank queries on rank {rank}: {hvd.local_rank(), hvd.local_size(), hvd.cross_rank()}, "
                         f"{hvd.cross_size()} against {w}")
checked.append("rank queries")
placement = hvd.allgather_object([w.host, hvd.local_rank(), hvd.cross_rank()])


def expect(got, want, what, tol=0.0):
    if got.shape != want.shape or got.dtype != want.dtype or not torch.allclose(got.double(), want.double(),
                                                                                 rtol=tol, atol=tol):
        raise AssertionError(f"{what}: {got} instead of {want}")
    checked.append(what)


ranks = torch.arange(size, dtype=torch.float64)
mine = torch.tensor([rank + 1.0, -rank - 0.5], dtype=torch.float32)
every = torch.stack([torch.tensor([r + 1.0, -r - 0.5]) for r in range(size)]).float()
expect(hvd.allreduce(mine), every.mean(0), "allreduce average", 1e-6)
expect(hvd.allreduce(mine, op=hvd.Sum), every.sum(0), "allreduce sum", 1e-6)
expect(hvd.allreduce(mine, average=False), every.sum(0), "allreduce average=False", 1e-6)
expect(hvd.allreduce(mine, op=hvd.Min), every.min(0).values, "allreduce min")
expect(hvd.allreduce(mine, op=hvd.Max), every.max(0).values, "allreduce max")
expect(hvd.allreduce(mine.double(), op=hvd.Product), every.double().prod(0), "allreduce product", 1e-12)
expect(hvd.allreduce(torch.tensor([rank * 3 + 1]), op=hvd.Sum), torch.tensor([int(ranks.sum()) * 3 + size]),
       "allreduce int64 sum")
expect(hvd.allreduce(torch.tensor([rank * 3 + 1])), torch.tensor([int((ranks.sum() * 3 + size) / size)]),
       "allreduce int64 average rounds toward zero")
expect(hvd.allreduce(mine.bfloat16(), op=hvd.Sum), every.sum(0).bfloat16(), "allreduce bfloat16 sum", 1e-2)
expect(hvd.allreduce(mine, prescale_factor=2.0, postscale_factor=0.5, op=hvd.Sum), every.sum(0),
       "allreduce pre- and postscale", 1e-6)
expect(hvd.allreduce(mine, compression=hvd.Compression.fp16), every.mean(0), "allreduce fp16 compression", 1e-3)
expect(hvd.allreduce(torch.tensor(float(rank))), ranks.mean().float(), "allreduce of a 0-d metric", 1e-6)
square = torch.full((3, 3), float(rank)).t()[:, :2]  # not contiguous: reduced in place all the same
same = hvd.allreduce_(square, op=hvd.Sum)
if same is not square:
    raise AssertionError("allreduce_ returned another tensor")
expect(square, torch.full((3, 2), float(ranks.sum())), "allreduce_ in place, non-contiguous")

rows = torch.full((rank + 1, 3), float(rank))
expect(hvd.allgather(rows), torch.cat([torch.full((r + 1, 3), float(r)) for r in range(size)]),
       "allgather of uneven first dimensions")
flags = torch.tensor([rank % 2 == 0])
expect(hvd.allgather(flags), torch.tensor([r % 2 == 0 for r in range(size)]), "allgather of bool")
empty = torch.empty(0, 2) if rank == 0 else torch.ones(1, 2)
expect(hvd.allgather(empty), torch.ones(size - 1, 2), "allgather with an empty first dimension")
with torch.device("meta"):  # another default device: the shim's host buffers stay on the CPU
    got = hvd.allgather(torch.full((1, 2), float(rank), device="cpu"))
expect(got.to(DEVICE), torch.cat([torch.full((1, 2), float(r)) for r in range(size)]),
       "allgather under another default device")
root = size - 1
expect(hvd.broadcast(torch.tensor([float(rank), 2.0]), root_rank=root), torch.tensor([float(root), 2.0]),
       "broadcast from the last rank")
t = torch.tensor([rank], dtype=torch.int16)
hvd.broadcast_(t, 0)
expect(t, torch.tensor([0], dtype=torch.int16), "broadcast_ in place")
handle = hvd.allreduce_async(mine, op=hvd.Sum)
if not hvd.poll(handle):
    raise AssertionError("poll() of a started allreduce")
expect(hvd.synchronize(handle), every.sum(0), "allreduce_async and synchronize", 1e-6)
refused(lambda: hvd.synchronize(handle), ValueError, f"handle {handle} is not an operation in flight",
        "a handle synchronized twice")
pair = [mine.clone(), mine.double()]
hvd.synchronize(hvd.allreduce_async_(pair[0]))
expect(hvd.grouped_allreduce_(pair)[1], every.mean(0).double(), "grouped_allreduce_", 1e-6)
expect(hvd.synchronize(hvd.allgather_async(rows)), torch.cat([torch.full((r + 1, 3), float(r)) for r in range(size)]),
       "allgather_async")
expect(hvd.synchronize(hvd.broadcast_async(torch.tensor([rank]), 0)), torch.tensor([0]), "broadcast_async")
if hvd.broadcast_object({"epoch": rank}, root_rank=0) != {"epoch": 0} or hvd.allgather_object(rank) != list(
        range(size)):
    raise AssertionError("object collectives")
checked.append("object collectives")
hvd.barrier()

# What is not here, and misuse: each an error that says what to do.
refused(lambda: hvd.allreduce(mine, op=hvd.Adasum), NotImplementedError, "hvd.Adasum is not in mpirt", "Adasum")
refused(lambda: hvd.allreduce(mine, average=True, op=hvd.Sum), ValueError, "hvd.allreduce: give op=",
        "average= and op= together")
refused(hvd.join, NotImplementedError, "hvd.join() is not in mpirt", "join")
refused(lambda: hvd.SyncBatchNorm, AttributeError, "mpirt.horovod has no SyncBatchNorm: use torch.nn.SyncBatchNorm",
        "a Horovod name left out says what to use")
net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
refused(lambda: hvd.DistributedOptimizer(opt, named_parameters=net.fc1.named_parameters()), ValueError,
        "DistributedOptimizer: 2 parameter(s) of the optimizer are not in named_parameters", "unnamed parameters")
refused(lambda: hvd.DistributedOptimizer(opt, op=hvd.Sum), NotImplementedError,
        "DistributedOptimizer(op=hvd.Sum): mpirt averages", "optimizer op=Sum")
if size > 1:  # what only differs between ranks
    refused(lambda: hvd.allgather(torch.zeros(1, rank + 1)), ValueError, "hvd.allgather: tensors differ beyond",
            "allgather of different row shapes")
    other = Net() if rank == 0 else nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 1))
    refused(lambda: hvd.broadcast_parameters(other.state_dict(), root_rank=0), ValueError,
            "hvd.broadcast_parameters: the ranks hold different tensors", "broadcast_parameters of different models")
hvd.shutdown()

if rank == 0:
    print(json.dumps({"ranks": size, "checked": checked, "placement": placement}))
sys.stdout.flush()
