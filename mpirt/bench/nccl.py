"""Rank side of the NCCL baseline in `mpirt bench scaling` on GPUs: torch.distributed's NCCL
allreduce over the same sizes, timed like the compiled harness (CUDA events around ``iters``
back-to-back calls, busbw = algbw * 2(n-1)/n) and checked, printed by rank 0 in the harness's
document shape so both become rows of the same table.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from mpirt import torchdist
from mpirt.comm import MPI
from mpirt.world import pick_device, world


def sizes(lo: int, hi: int, factor: int) -> list[int]:
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= factor
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minbytes", type=int, required=True)
    ap.add_argument("--maxbytes", type=int, required=True)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    w = world()
    if not torch.cuda.is_available() or not dist.is_nccl_available():
        raise SystemExit("the NCCL baseline needs CUDA and a torch built with NCCL")
    dev = pick_device("cuda", w.local_rank)
    torch.cuda.set_device(dev)
    comm = MPI.COMM_WORLD
    torchdist.join_default_group(comm, "nccl", timeout_s=120)
    rows = []
    for size in sizes(max(4, args.minbytes), args.maxbytes, args.factor):
        x = torch.full((size // 4,), float(w.rank + 1), device=dev)
        dist.all_reduce(x)
        wrong = int((x != w.size * (w.size + 1) / 2).sum().item())
        for _ in range(max(2, args.iters // 10)):
            dist.all_reduce(x)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        comm.Barrier()
        start.record()
        for _ in range(args.iters):
            dist.all_reduce(x)
        stop.record()
        stop.synchronize()
        t = comm.allreduce(start.elapsed_time(stop) / 1e3 / args.iters, op=MPI.MAX)
        algbw = size / t / 1e9
        rows.append({"size": size, "count": size // 4, "algo": "nccl", "algo_used": "nccl", "mode": "out-of-place",
                     "iters": args.iters, "time_us": {"avg": t * 1e6}, "algbw_gbs": algbw,
                     "busbw_gbs": algbw * 2 * (w.size - 1) / w.size, "wrong": comm.allreduce(wrong)})
    torchdist.leave_default_group()
    if w.rank == 0:
        print(json.dumps({"schema": "mpirt.bench.nccl/1", "config": {"dtype": "float32", "op": "sum"},
                          "device": "cuda", "world": {"nodes": w.nodes}, "results": rows,
                          "nccl": ".".join(map(str, torch.cuda.nccl.version()))}), flush=True)


if __name__ == "__main__":
    main()
