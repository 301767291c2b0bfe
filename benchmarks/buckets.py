#!/usr/bin/env python3
"""How large mpirt's gradient buckets should be: the benchmark behind `data_parallel`'s default.

The training benchmark's models (`mpirt.bench.train`: "comm", few FLOPs per gradient byte,
"compute", the reverse, and "deep", 24 small layers) train in one job per placement and model,
mpirt once per bucket size in every turn, beside DDP (gloo, its default 25 MiB buckets) and without communication.
The first bucket stays 1 MiB. Placements:

- here: 2 ranks on this machine (the core's `shm`, on shared buckets);
- tcp: 2 network-namespace hosts (the tests' cluster), one rank each, every link into a host
  limited to --rate by a token bucket (the core's `ring` over TCP). Needs root, iproute2 with
  tc, and openssh-server;
- tcp2x2: the same hosts with 2 ranks each (the core's `hier`: shared memory within a host, a
  ring between them).

Writes results/buckets-<placement>.{json,md}.

    python benchmarks/buckets.py [--sizes 1,2,5,10,25] [--repeats 3] [--placements here,tcp,tcp2x2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trainjobs
from trainjobs import HERE, launch_here, launcher_note, measure, namespace_hosts

ROOT = Path(__file__).resolve().parent
MODELS = {"comm": 32, "compute": 256, "deep": 64}  # model -> per-rank batch (the first two as in scaling.py)
WATCHED = ("MPIRT_AUTO_RING_MIN_BYTES", "MPIRT_RING_SEGMENT_BYTES", "MPIRT_RING_WAIT_US", "OMPI_MCA_btl",
           "OMPI_MCA_pml", "OMPI_MCA_mpi_yield_when_idle")


def rank_argv(model: str, args) -> list[str]:
    return [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", model, "--scaling", "weak",
            "--batch", str(MODELS[model]), "--steps", str(args.steps), "--warmup", "2", "--repeats",
            str(args.repeats), "--bucket-mb", args.sizes, "--device", "cpu"]


def derive(rows: list[dict]) -> None:
    """Each bucket size against DDP and against the best size, per model."""
    for model in {r["key"]["model"] for r in rows}:
        rate = {r["key"]["system"]: r["metrics"]["samples_per_s"]["median"] for r in rows if r["key"]["model"] == model}
        best = max(v for k, v in rate.items() if k.startswith("mpirt@"))
        for r in rows:
            system = r["key"]["system"]
            if r["key"]["model"] == model and system.startswith("mpirt@"):
                r["derived"] = {"vs_ddp": rate[system] / rate["ddp"], "vs_best": rate[system] / best}


def markdown(doc: dict, title: str) -> str:
    env, cfg = doc["env"], doc["config"]
    lines = [f"# Bucket sizes: {title}", "",
             "models " + ", ".join(f"`{m}` (batch {b} a rank)" for m, b in MODELS.items()) + ", "
             f"first bucket 1 MiB, median of {cfg['repeats']} repeats of {cfg['steps']} steps, every size and DDP "
             f"taking turns in one job per model; {env['cpu']['model']}, {env['cpu']['cores']} cores; "
             f"taken {env['timestamp']}", "",
             "| model | bucket size | buckets | mpirt samples/s | × DDP | × best size |",
             "|---|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        mine = [r for r in doc["rows"] if r["key"]["model"] == model]
        ddp = next(r for r in mine if r["key"]["system"] == "ddp")["metrics"]["samples_per_s"]["median"]
        for r in mine:
            if "derived" in r:
                size = r["key"]["system"].removeprefix("mpirt@")
                lines.append(f"| {model} | {size} MiB | {r['info']['buckets']} | "
                             f"{r['metrics']['samples_per_s']['median']:.0f} | "
                             f"{r['derived']['vs_ddp']:.2f} | {r['derived']['vs_best']:.2f} |")
        lines.append(f"| {model} | DDP (25 MiB) | | {ddp:.0f} | 1.00 | |")
    return "\n".join(lines + launcher_note(env, WATCHED)) + "\n"


def write(placement: str, title: str, rows: list[dict], view: dict, hosts: dict, added: dict, args) -> None:
    derive(rows)
    config = {"placement": placement, "sizes_mb": [float(x) for x in args.sizes.split(",")], "first_bucket_mb": 1.0,
              "repeats": args.repeats, "steps": args.steps, "batch": MODELS, "rate": args.rate}
    trainjobs.write("buckets", placement, title, rows, view, hosts, added, config, args.out, markdown)


def here(args) -> None:
    rows, view = measure(launch_here, "on this machine", MODELS, lambda m: rank_argv(m, args))
    write("here", "2 ranks on this machine", rows, view, HERE, {}, args)


def hosts(args, slots: int) -> None:
    with namespace_hosts(args.rate, slots, "mpirt-bench-buckets-", WATCHED) as (launch, added, where):
        rows, view = measure(launch, f"on 2 hosts of {slots}", MODELS, lambda m: rank_argv(m, args))
    placement, title = ("tcp", "2 hosts, one rank each") if slots == 1 else \
        (f"tcp2x{slots}", f"2 hosts of {slots} ranks")
    write(placement, f"{title}, links limited to {args.rate}", rows, view, where, added, args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,5,10,25", help="bucket sizes in MiB, a comma list")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host (tcp)")
    ap.add_argument("--placements", default="here,tcp,tcp2x2", help="comma list of here, tcp, tcp2x2")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    return trainjobs.run_placements(args, {"here": here, "tcp": lambda a: hosts(a, 1), "tcp2x2": lambda a: hosts(a, 2)})


if __name__ == "__main__":
    sys.exit(main())
