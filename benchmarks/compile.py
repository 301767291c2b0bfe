#!/usr/bin/env python3
"""What `dp.compile()` buys over `torch.compile(model)` for a data-parallel model.

A model compiled whole runs its backward as one autograd node: every gradient appears when it
ends, so no bucket's reduction overlaps backward. `dp.compile()` splits the compiled graph where
data_parallel's buckets end (torch's DDPOptimizer, which DDP applies to a model it wraps), so
each bucket's reduction starts while the layers before it are still in backward. One job per
placement and model trains, taking turns in every repeat: without communication
(compute-only, compiled), mpirt compiled whole, mpirt through `dp.compile()`, and torch DDP
compiled (gloo; DDP splits the graph itself). Placements:

- here: 2 ranks on this machine;
- tcp: 2 network-namespace hosts (the tests' cluster), one rank each, every link into a host
  limited to --rate by a token bucket. Needs root, iproute2 with tc, and openssh-server.

Writes results/compile-<placement>.{json,md}.

    python benchmarks/compile.py [--placements here,tcp] [--repeats 3] [--rate 1gbit]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trainjobs
from trainjobs import HERE, launch_here, launcher_note, measure, namespace_hosts

ROOT = Path(__file__).resolve().parent
MODELS = {"comm": 32, "compute": 256}  # model -> per-rank batch, as in scaling.py
SYSTEMS = ("compute-only", "mpirt+whole", "mpirt+split", "ddp")
WATCHED = ("MPIRT_AUTO_RING_MIN_BYTES", "MPIRT_RING_SEGMENT_BYTES", "OMPI_MCA_btl", "OMPI_MCA_pml")


def rank_argv(model: str, args) -> list[str]:
    return [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", model, "--scaling", "weak",
            "--batch", str(MODELS[model]), "--steps", str(args.steps), "--warmup", "3", "--repeats",
            str(args.repeats), "--device", "cpu", "--compile", "whole,split"]


def derive(rows: list[dict]) -> None:
    """The split model against the whole one and against DDP, per model."""
    rate = {(r["key"]["model"], r["key"]["system"]): r["metrics"]["samples_per_s"]["median"] for r in rows}
    for r in rows:
        model, system = r["key"]["model"], r["key"]["system"]
        if system.startswith("mpirt"):
            r["derived"] = {"vs_ddp": rate[model, system] / rate[model, "ddp"],
                            "vs_whole": rate[model, system] / rate[model, "mpirt+whole"]}


def markdown(doc: dict, title: str) -> str:
    env, cfg = doc["env"], doc["config"]
    by = {(r["key"]["model"], r["key"]["system"]): r for r in doc["rows"]}
    lines = [f"# torch.compile and overlap: {title}", "",
             "models " + ", ".join(f"`{m}` (batch {b} a rank)" for m, b in MODELS.items()) +
             f", every system compiled (inductor) and taking turns in one job per model; median of {cfg['repeats']} "
             f"repeats of {cfg['steps']} steps; {env['cpu']['model']}, {env['cpu']['cores']} cores; "
             f"taken {env['timestamp']}", "",
             "| model | compute only | mpirt, compiled whole | mpirt, `dp.compile()` | DDP, compiled "
             "| split / whole | split / DDP |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        med = {s: by[model, s]["metrics"]["samples_per_s"]["median"] for s in SYSTEMS}
        split = by[model, "mpirt+split"]["derived"]
        lines.append(f"| {model} | " + " | ".join(f"{med[s]:.0f}" for s in SYSTEMS) +
                     f" | {split['vs_whole']:.2f}x | {split['vs_ddp']:.2f}x |")
    lines += ["", "Samples per second over both ranks. DDP compiled splits its graph at its own 25 MiB buckets "
              "(torch's DDPOptimizer); `dp.compile()` splits at mpirt's."]
    return "\n".join(lines + launcher_note(env, WATCHED)) + "\n"


def write(placement: str, title: str, rows: list[dict], view: dict, hosts: dict, added: dict, args) -> None:
    derive(rows)
    config = {"placement": placement, "repeats": args.repeats, "steps": args.steps, "batch": MODELS,
              "rate": args.rate if placement == "tcp" else None}
    trainjobs.write("compile", placement, title, rows, view, hosts, added, config, args.out, markdown)


def here(args) -> None:
    rows, view = measure(launch_here, "on this machine", MODELS, lambda m: rank_argv(m, args))
    write("here", "2 ranks on this machine", rows, view, HERE, {}, args)


def tcp(args) -> None:
    with namespace_hosts(args.rate, 1, "mpirt-bench-compile-", WATCHED) as (launch, added, where):
        rows, view = measure(launch, "on 2 hosts", MODELS, lambda m: rank_argv(m, args))
    write("tcp", f"2 hosts, one rank each, links limited to {args.rate}", rows, view, where, added, args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host (tcp)")
    ap.add_argument("--placements", default="here,tcp", help="comma list of here, tcp")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    return trainjobs.run_placements(args, {"here": here, "tcp": tcp})


if __name__ == "__main__":
    sys.exit(main())
