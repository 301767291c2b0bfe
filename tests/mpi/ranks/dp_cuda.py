"""Data-parallel gradients of a CUDA model (through a CUDA-aware MPI or pinned staging)
against a single-process reference on the same device; prints a JSON line on rank 0."""

import copy
import json

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
dev = torch.device("cuda", rank % torch.cuda.device_count())
torch.cuda.set_device(dev)
checked = []
# algo="core": the compiled core on device buffers (CUDA-aware MPI or pinned staging);
# algo="torch": NCCL where every rank has a GPU of its own, else gloo over the CUDA tensors
for compression, algo, tol in (("none", "core", 1e-5), ("bf16", "core", 2e-2), ("none", "torch", 1e-5)):
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 8)).to(dev)
    dp = data_parallel(model, None, compression=compression, bucket_mb=0.05, algo=algo)
    g = torch.Generator(device="cpu").manual_seed(5)
    x, y = torch.randn(8 * size, 32, generator=g).to(dev), torch.randn(8 * size, 8, generator=g).to(dev)
    ref = copy.deepcopy(model)
    ((ref(x) - y) ** 2).mean().backward()
    rows = slice(8 * rank, 8 * rank + 8)
    ((model(x[rows]) - y[rows]) ** 2).mean().backward()
    dp.synchronize()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        if not torch.allclose(p.grad, q.grad, rtol=tol, atol=tol):
            raise AssertionError(f"{algo} {compression}: gradient of {n} differs by {(p.grad - q.grad).abs().max().item()}")
    checked.append(compression if algo == "core" else f"{algo} {compression}")
    dp.close()
# AMP as PyTorch documents it (autocast, GradScaler, unscale_, clipping), with no
# synchronize(): the scaler must see averaged gradients, so an inf on one rank only makes
# every rank skip the step and the replicas stay identical. The default algo: NCCL or the core.
torch.manual_seed(rank)
model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 8)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt, bucket_mb=0.05)
scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
x, y = torch.randn(8, 32, device=dev), torch.randn(8, 8, device=dev)
for poison in (1.0, float("inf") if rank == size - 1 else 1.0):
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = ((model(x) - y) ** 2).mean() * poison
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    stepped = not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if stepped != all(v == 1.0 for v in comm.allgather(poison)):
        raise AssertionError(f"amp: rank {rank} stepped={stepped} with poison {poison}")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy().tobytes()
    if len(set(comm.allgather(flat))) != 1:
        raise AssertionError("amp: replicas differ after a step")
checked.append("amp")
dp.close()
# BatchNorm statistics on the GPU: after a step every rank holds rank 0's (packed on the device,
# through host memory, written back on the communication thread before the next forward).
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 8)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
dp = data_parallel(model, opt)
for step in range(2):
    x = torch.randn(16, 32, device=dev) + rank  # ranks' statistics differ
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    mine = torch.cat([b.double().reshape(-1) for b in model.buffers()]).cpu().numpy().tobytes()
    if len(set(comm.allgather(mine))) != 1:
        raise AssertionError(f"buffers: ranks hold different BatchNorm statistics after step {step}")
checked.append("buffers")
dp.close()
if rank == 0:
    print(json.dumps({"ranks": size, "checked": checked}))
