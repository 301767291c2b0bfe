#!/usr/bin/env python3
"""Gradient compression on a slow network (root, iproute2 with tc, openssh-server):

2 and 3 network-namespace hosts (the tests' cluster), each running `mpirt worker`, one rank
each, with every link into a host limited by a token bucket (`tc ... tbf rate RATE`, default
1 Gbit/s: the TCP tier of many clusters), through `mpirt launch` with its defaults. The
communication-bound model of the scaling benchmark trains three ways in one job per
compression (none, fp16, powersgd): without communication (the ideal), with mpirt, and with
torch DDP over gloo using its own hooks (fp16_compress_hook, powerSGD_hook at the same rank and
warm-up). Uncompressed and in fp16, mpirt also trains with ``algo="torch"`` in the same turns:
its buckets reduced through gloo, the transport DDP uses, beside the core's (the default).
Writes results/powersgd-tcp.{json,md}.

    python benchmarks/powersgd.py [--rate 1gbit] [--hosts 2,3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "cluster"))

from netns import Cluster, namespaces_usable, rate_limited  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.scaling import json_in  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402

COMPRESSIONS = ("none", "fp16", "powersgd")
BOTH_TRANSPORTS = ("none", "fp16")  # mpirt trains with the core's allreduce and with gloo's
NAMES = {"mpirt:auto": "mpirt", "mpirt:torch": "mpirt torch"}
MODEL = "comm"
WATCHED = ("MPIRT_AUTO_RING_MIN_BYTES", "MPIRT_RING_SEGMENT_BYTES", "MPIRT_RING_WAIT_US", "OMPI_MCA_btl",
           "OMPI_MCA_pml", "OMPI_MCA_mpi_yield_when_idle", "OMP_NUM_THREADS")


def measure(c: Cluster, names: list[str], compression: str, args) -> dict:
    proc = c.launch(names, [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", MODEL,
                                   "--scaling", "weak", "--batch", str(args.batch), "--steps", str(args.steps),
                                   "--warmup", "3", "--repeats", str(args.repeats), "--compression", compression,
                                   *(["--algo", "auto,torch"] if compression in BOTH_TRANSPORTS else [])],
                    "--no-tag-output", timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"the {compression} job on {len(names)} hosts failed:\n{proc.stderr[-3000:]}")
    return json_in(proc.stdout, lambda d: "results" in d and d.get("compression") == compression)


def rows_of(doc: dict, compression: str) -> list[dict]:
    rows = []
    for r in doc["results"]:
        name = NAMES.get(r["system"], r["system"])
        system = name if name == "compute-only" or compression == "none" else f"{name} {compression}"
        rows.append({"kind": "train", "key": {"np": doc["ranks"], "scaling": "weak", "system": system, "model": MODEL,
                                              "device": "cpu"},
                     "metrics": {"samples_per_s": stat([r["global_batch"] / t for t in r["step_s"]]),
                                 "step_s": stat(r["step_s"])}})
    return rows


def derive(rows: list[dict]) -> None:
    """Each mpirt row against DDP with the same compression, and against uncompressed mpirt (with
    the same allreduce), at the same host count."""
    rate = {(r["key"]["np"], r["key"]["system"]): r["metrics"]["samples_per_s"]["median"] for r in rows}
    for r in rows:
        n, system = r["key"]["np"], r["key"]["system"]
        if system.startswith("mpirt"):
            who, _, comp = system.rpartition(" ")
            who, suffix = (who, f" {comp}") if comp in COMPRESSIONS else (system, "")
            r["derived"] = {"vs_ddp": rate[n, system] / rate[n, f"ddp{suffix}"],
                            "vs_uncompressed": rate[n, system] / rate[n, who]}


def markdown(doc: dict) -> str:
    env, cfg = doc["env"], doc["config"]
    by = {(r["key"]["np"], r["key"]["system"]): r for r in doc["rows"]}
    hosts = sorted({n for n, _ in by})
    lines = ["# Gradient compression on a rate-limited link", "",
             f"{', '.join(map(str, hosts))} network-namespace hosts, 1 rank each, every link into a host limited to "
             f"{cfg['rate']} (tc tbf); "
             f"model `{MODEL}` ({cfg['params'] / 1e6:.1f} M parameters, {cfg['params'] * 4 / 2**20:.0f} MiB of "
             f"fp32 gradients), per-rank batch {cfg['batch']}; median of {cfg['repeats']} repeats of "
             f"{cfg['steps']} steps; {env['cpu']['model']}, {env['cpu']['cores']} cores; taken {env['timestamp']}",
             "", "| hosts | compression | compute only | mpirt | DDP (gloo, its hooks) | mpirt / DDP "
                 "| mpirt / mpirt uncompressed | mpirt `torch` | mpirt `torch` / DDP |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in hosts:
        ideal = by[n, "compute-only"]["metrics"]["samples_per_s"]["median"]
        for comp in COMPRESSIONS:
            suffix = "" if comp == "none" else f" {comp}"
            ours, theirs, gloo = by[n, f"mpirt{suffix}"], by[n, f"ddp{suffix}"], by.get((n, f"mpirt torch{suffix}"))
            lines.append(f"| {n} | {comp} | {ideal:.0f} samples/s | {ours['metrics']['samples_per_s']['median']:.0f} | "
                         f"{theirs['metrics']['samples_per_s']['median']:.0f} | {ours['derived']['vs_ddp']:.2f}x | "
                         f"{ours['derived']['vs_uncompressed']:.2f}x | " +
                         (f"{gloo['metrics']['samples_per_s']['median']:.0f} | {gloo['derived']['vs_ddp']:.2f}x |"
                          if gloo else "– | – |"))
    mine = {k: v["value"] for k, v in env["network"]["env"].items() if k in WATCHED}
    lines += ["", "compute only: each rank trains on its own batch without communication (the ideal; one row per host "
              "count, from the uncompressed job). mpirt: the core's allreduce (`auto`, the default); mpirt `torch`: the same "
              "buckets reduced through gloo (`algo=\"torch\"`), in the same turns. PowerSGD: rank 4, two exact warm-up "
              "steps, for both.", "",
              "Set by the launcher on every rank, among others: " +
              ", ".join(f"`{k}={v}`" for k, v in sorted(mine.items())), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host")
    ap.add_argument("--hosts", default="2,3", help="comma list of host counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    rows, params, view, added = [], 0, {}, {}
    counts = [int(h) for h in args.hosts.split(",")]
    for n in counts:
        with rate_limited(n, args.rate, "mpirt-bench-powersgd-") as (c, names):
            added = c.rank_env(names, WATCHED)
            for comp in COMPRESSIONS:
                doc = measure(c, names, comp, args)
                params, view = doc["params"], doc["rank_view"]
                rows += [r for r in rows_of(doc, comp) if comp == "none" or r["key"]["system"] != "compute-only"]
                print(f"{n} hosts, {comp}: " + ", ".join(
                    f"{r['system']} {statistics.median(r['step_s']) * 1e3:.0f} ms" for r in doc["results"]), flush=True)
    derive(rows)
    impl = detect(find_mpirun())
    top = max(counts)
    hosts = {"count": top, "slots": top, "names": [f"w{i}" for i in range(top)], "oversubscribed": False,
             "nodes_seen": top}
    env = environment.collect(impl=impl, hosts=hosts, launcher_added=added, rank_view=view,
                              argv=["python", "benchmarks/powersgd.py", *sys.argv[1:]])
    config = {"rate": args.rate, "hosts": counts, "repeats": args.repeats, "steps": args.steps, "batch": args.batch, "params": params}
    out = schema.document("powersgd", env, config, rows)
    schema.publish(out, args.out / "powersgd-tcp.json", markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
