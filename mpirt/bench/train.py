"""Rank side of the training scaling benchmark (`mpirt bench scaling` starts it on N ranks).

In one job, the same model trains three ways: without communication ("compute-only": each
rank on its own batch, the ideal), with mpirt's data_parallel, and with torch DDP (gloo on
CPU, NCCL on GPU). The three take turns inside every repeat, so drift in the machine's state
hits all of them alike. A step's time is the slowest rank's. Communication's share of a step
is what it adds beyond compute-only: 1 - t_compute / t_step.

Weak scaling keeps the per-rank batch; strong scaling keeps the global batch (split evenly).
With several ``--bucket-mb`` sizes, mpirt trains once per size in the same turns ("mpirt@4":
4 MiB buckets), which is how the default bucket size was chosen (benchmarks/buckets.py).
With ``--compile whole,split`` every system runs under torch.compile: DDP and compute-only
compiled whole (DDP then splits the graph at its buckets itself), mpirt twice in the same
turns, compiled whole ("mpirt+whole") and split at its buckets by ``dp.compile()``
("mpirt+split"): what the split buys is the difference (benchmarks/compile.py).
With several ``--algo`` names, mpirt trains once per allreduce in the same turns ("mpirt:torch":
through torch.distributed), which is how the core's transport is weighed against gloo's on the
same link (benchmarks/powersgd.py).
Rank 0 writes one JSON file (--json) that the driver turns into mpirt.bench/1 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from mpirt import torchdist
from mpirt.comm import MPI
from mpirt.data_parallel import ALGOS, data_parallel
from mpirt.models import MLP, ConvNet
from mpirt.world import pick_device, world

# compute-bound: many FLOPs per gradient byte; communication-bound: the reverse; deep: many
# small layers (48 tensors of at most 1 MiB), where bucket count matters; cnn: a small ResNet
# whose BatchNorm statistics are broadcast after every step by both runtimes.
MODELS = {
    "compute": {"hidden": 1024, "layers": 4},
    "comm": {"hidden": 2048, "layers": 4},
    "deep": {"hidden": 512, "layers": 24},
    "cnn": {"width": 32, "blocks": 4},
}
D_IN, CLASSES = 256, 10  # the cnn sees the D_IN features as a 16 x 16 image


def make_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    spec = MODELS[name]
    if name == "cnn":
        return ConvNet(16, spec["width"], spec["blocks"], CLASSES).to(device)
    return MLP(D_IN, spec["hidden"], spec["layers"], CLASSES).to(device)


def _time_steps(model, opt, batch: int, steps: int, warmup: int, device, comm) -> float:
    """Median over ``steps`` of the slowest rank's step time. Both runtimes have averaged the
    gradients when backward returns; a ``dp.synchronize()`` after the step would start the next
    step's averaging (of the same gradients), as a rank that ran no backward does."""
    g = torch.Generator().manual_seed(comm.Get_rank())
    x = torch.randn(batch, D_IN, generator=g).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + steps):
        comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


# --compression powersgd: the same rank and exact warm-up steps for both runtimes.
POWERSGD_RANK, POWERSGD_START = 4, 2


def _ddp_hook(model, compression: str) -> None:
    """DDP's own hooks for the compression asked: the baseline users know."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if compression == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif compression == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=POWERSGD_RANK,
                                            start_powerSGD_iter=POWERSGD_START)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)


def systems(bucket_mbs: list[float] | None, compile_modes: list[str] = (), algos: list[str] | None = None) -> list[str]:
    """What trains in each turn: one mpirt per bucket size ("mpirt@SIZE" when there are several),
    per compile mode ("mpirt+MODE") or per allreduce ("mpirt:ALGO")."""
    if compile_modes:
        return ["compute-only", *(f"mpirt+{m}" for m in compile_modes), "ddp"]
    if algos and len(algos) > 1:
        return ["compute-only", *(f"mpirt:{a}" for a in algos), "ddp"]
    mpirt = ["mpirt"] if bucket_mbs is None or len(bucket_mbs) == 1 else [f"mpirt@{mb:g}" for mb in bucket_mbs]
    return ["compute-only", *mpirt, "ddp"]


def compile_modes(text: str) -> list[str]:
    modes = [] if text == "none" else text.split(",")
    if any(m not in ("whole", "split") for m in modes) or len(set(modes)) < len(modes):
        raise argparse.ArgumentTypeError(f"{text!r}: give none, or whole and/or split, e.g. whole,split")
    return modes


def bucket_sizes(text: str) -> list[float]:
    try:
        sizes = [float(x) for x in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0 or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give bucket sizes in MiB, positive and each once, e.g. 4,25")
    return sizes


def algo_names(text: str) -> list[str]:
    names = text.split(",")
    if any(a not in ALGOS for a in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give data_parallel algos, each once, from {', '.join(ALGOS)}; "
                                         "e.g. auto,torch")
    return names


def algo(system: str, algos: list[str] | None) -> str | None:
    """The ``algo`` a system passes to data_parallel (None: its default, $MPIRT_ALGO or auto)."""
    if system.startswith("mpirt:"):
        return system.removeprefix("mpirt:")
    return algos[0] if algos else None


def bucket_mb(system: str, bucket_mbs: list[float] | None) -> float | None:
    if not system.startswith("mpirt@"):
        return bucket_mbs[0] if bucket_mbs else None
    return float(system.removeprefix("mpirt@"))


def run_system(system: str, model_name: str, batch: int, args, device, comm) -> tuple[float, str, int | None]:
    """Seconds per step, the allreduce that ran (data_parallel's algo, or DDP's backend), and
    mpirt's number of buckets."""
    model = make_model(model_name, device)
    if system == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # PowerSGD's hook starts its second allreduce from a future's callback, which under gloo
        # can interleave with the next bucket's in a different order on each rank (gloo then
        # aborts: "Received data size doesn't match expected size"); one bucket avoids it.
        one_bucket = args.compression == "powersgd" and device.type == "cpu"
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    **({"bucket_cap_mb": 4096} if one_bucket else {}))
        _ddp_hook(model, args.compression)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    dp = data_parallel(model, opt, compression=args.compression, powersgd_rank=POWERSGD_RANK,
                       powersgd_start=POWERSGD_START, bucket_mb=bucket_mb(system, args.bucket_mb),
                       algo=algo(system, args.algo)) \
        if system.startswith("mpirt") else None
    run = model
    if args.compile:
        run = dp.compile() if system == "mpirt+split" else torch.compile(model)
    try:
        return (_time_steps(run, opt, batch, args.steps, args.warmup, device, comm),
                (f"{dp.algo} (shared buckets)" if dp.shared_buckets else dp.algo) if dp else
                torch.distributed.get_backend() if system == "ddp" else "none",
                len(dp.buckets) if dp else None)
    finally:
        if dp:
            dp.close()


def per_rank_batch(scaling: str, batch: int, global_batch: int, size: int) -> int:
    if scaling == "weak":
        return batch
    if global_batch % size:
        raise SystemExit(f"--global-batch {global_batch} does not split evenly over {size} ranks; "
                         "give a multiple of every world size in the sweep")
    return global_batch // size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="rank 0 writes the measurements here (-: stdout)")
    ap.add_argument("--model", choices=sorted(MODELS), default="comm")
    ap.add_argument("--scaling", default="weak,strong", help="comma list of weak, strong")
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch (weak scaling)")
    ap.add_argument("--global-batch", type=int, default=64, help="global batch (strong scaling)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads a rank, whatever OMP_NUM_THREADS says (the same for every system)")
    ap.add_argument("--bucket-mb", type=bucket_sizes, default=None,
                    help="mpirt's bucket size in MiB (default: data_parallel's); a comma list trains mpirt "
                         "once per size")
    ap.add_argument("--compression", choices=("none", "fp16", "powersgd"), default="none",
                    help="gradients on the wire, for mpirt and for DDP (its fp16 and PowerSGD hooks)")
    ap.add_argument("--compile", type=compile_modes, default=[],
                    help="none, or whole and/or split: every system under torch.compile, mpirt once per mode")
    ap.add_argument("--algo", type=algo_names, default=None,
                    help="data_parallel's allreduce (default: its own, $MPIRT_ALGO or auto); a comma list "
                         "trains mpirt once per algo")
    args = ap.parse_args()
    # each names mpirt's systems in a turn: one at a time
    naming = [f"--{name}" for name, many in (("bucket-mb", args.bucket_mb and len(args.bucket_mb) > 1),
                                             ("compile", args.compile), ("algo", args.algo and len(args.algo) > 1))
              if many]
    if len(naming) > 1:
        ap.error(f"{' with '.join(naming)}: each trains mpirt once per value; give several values to one of them")
    if args.compression == "powersgd" and args.warmup < POWERSGD_START:
        raise SystemExit(f"--compression powersgd: --warmup must cover the {POWERSGD_START} exact steps")
    if args.threads < 1:
        ap.error(f"--threads {args.threads}: give 1 or more")
    torch.set_num_threads(args.threads)
    comm = MPI.COMM_WORLD
    w = world()
    try:
        device = pick_device(args.device, w.local_rank)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)

    torchdist.join_default_group(comm, "nccl" if device.type == "cuda" else "gloo", timeout_s=120)
    results, reduced_by, buckets = [], {}, {}
    for scaling in args.scaling.split(","):
        batch = per_rank_batch(scaling, args.batch, args.global_batch, w.size)
        turn = systems(args.bucket_mb, args.compile, args.algo)
        times: dict[str, list[float]] = {s: [] for s in turn}
        for r in range(args.repeats):
            order = turn[r % len(turn):] + turn[:r % len(turn)]
            for system in order:
                seconds, reduced_by[system], buckets[system] = run_system(system, args.model, batch, args, device,
                                                                          comm)
                times[system].append(seconds)
        results += [{"scaling": scaling, "system": s, "per_rank_batch": batch, "global_batch": batch * w.size,
                     "step_s": times[s], **({"buckets": buckets[s]} if buckets[s] else {})} for s in turn]
    torchdist.leave_default_group()
    from mpirt.comm import core

    view = {"mpi_library": MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0],
            "cuda_aware": bool(core().info()["cuda_aware"]),
            "device": device.type, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else "",
            "threads_per_rank": torch.get_num_threads(), "nodes": w.nodes, "reduced_by": reduced_by}
    if w.rank == 0:
        doc = {"ranks": w.size, "model": args.model, "compression": args.compression, "rank_view": view,
               "results": results,
               "params": sum(p.numel() for p in make_model(args.model, torch.device("cpu")).parameters())}
        if args.json == "-":  # rank 0 may be on another host than the driver: stdout reaches it
            print(json.dumps(doc), flush=True)
        else:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, args.json)

if __name__ == "__main__":
    main()
