"""Rank side of the training benchmark: the same model and per-rank batch trained by mpirt's
data_parallel and by torch DDP (gloo), in one job, alternating rounds so both see the same
machine state. Rank 0 prints one JSON document; ``benchmarks/ddp.py`` runs this at 1 and 2
ranks and derives scaling efficiency and the mpirt/DDP ratio.

    mpirun -np 2 python -m mpirt.bench.train --model comm --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from datetime import timedelta

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import DEFAULT_BUCKET_MB, data_parallel
from mpirt.models import MLP

# compute-bound: many FLOPs per gradient byte; communication-bound: the reverse.
MODELS = {
    "compute": {"hidden": 1024, "layers": 4, "batch": 256},
    "comm": {"hidden": 2048, "layers": 4, "batch": 8},
}


def make_model(hidden: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    return MLP(256, hidden, layers, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(model, opt, batch: int, steps: int, warmup: int, comm) -> list[float]:
    g = torch.Generator().manual_seed(comm.Get_rank())
    x = torch.randn(batch, 256, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        dt = time.perf_counter() - t0
        # the step of the slowest rank is the step of the job
        dt = comm.allreduce(dt, op=MPI.MAX)
        if i >= warmup:
            times.append(dt)
    return times


def run_mpirt(spec, steps, warmup, comm, bucket_mb) -> list[float]:
    model = make_model(spec["hidden"], spec["layers"])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    dp = data_parallel(model, opt, bucket_mb=bucket_mb)
    try:
        return _steps(model, opt, spec["batch"], steps, warmup, comm)
    finally:
        dp.close()


def run_ddp(spec, steps, warmup, comm) -> list[float]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(spec["hidden"], spec["layers"]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return _steps(model, opt, spec["batch"], steps, warmup, comm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), action="append", help="default: all")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating mpirt/DDP rounds; the best round counts")
    ap.add_argument("--bucket-mb", type=float, action="append",
                    help="mpirt bucket sizes to try besides the default")
    args = ap.parse_args()
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    import torch.distributed as dist

    port = comm.bcast(_free_port() if rank == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=120))
    results = []
    for name in args.model or sorted(MODELS):
        spec = MODELS[name]
        params = sum(p.numel() for p in make_model(spec["hidden"], spec["layers"]).parameters())
        for rnd in range(args.rounds):
            buckets = sorted({DEFAULT_BUCKET_MB, *(args.bucket_mb or [])})
            systems = [("mpirt", b) for b in buckets] + [("ddp", None)]
            if rnd % 2:
                systems.reverse()
            for system, bucket in systems:
                times = (run_mpirt(spec, args.steps, args.warmup, comm, bucket) if system == "mpirt"
                         else run_ddp(spec, args.steps, args.warmup, comm))
                med = statistics.median(times)
                results.append({
                    "model": name, "system": system, "bucket_mb": bucket if system == "mpirt" else 25.0,
                    "ranks": size, "round": rnd, "params": params, "grad_bytes": params * 4,
                    "batch_per_rank": spec["batch"], "step_s_median": med, "step_s_min": min(times),
                    "step_s_max": max(times), "samples_per_s": spec["batch"] * size / med})
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"ranks": size, "default_bucket_mb": DEFAULT_BUCKET_MB, "threads_per_rank": torch.get_num_threads(), "torch": torch.__version__,
                          "mpi": MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0],
                          "host_cores": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
