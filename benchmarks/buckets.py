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
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "cluster"))

from netns import namespaces_usable, rate_limited  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.scaling import json_in  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402

MODELS = {"comm": 32, "compute": 256, "deep": 64}  # model -> per-rank batch (the first two as in scaling.py)
WATCHED = ("MPIRT_AUTO_RING_MIN_BYTES", "MPIRT_RING_SEGMENT_BYTES", "MPIRT_RING_WAIT_US", "OMPI_MCA_btl",
           "OMPI_MCA_pml")


def rank_argv(model: str, args) -> list[str]:
    return [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", model, "--scaling", "weak",
            "--batch", str(MODELS[model]), "--steps", str(args.steps), "--warmup", "2", "--repeats",
            str(args.repeats), "--bucket-mb", args.sizes, "--device", "cpu"]


def rows_of(doc: dict, model: str) -> list[dict]:
    return [{"kind": "train", "key": {"np": doc["ranks"], "scaling": "weak", "system": r["system"], "model": model,
                                      "device": "cpu"},
             "metrics": {"samples_per_s": stat([r["global_batch"] / t for t in r["step_s"]]),
                         "step_s": stat(r["step_s"])},
             **({"info": {"buckets": r["buckets"]}} if "buckets" in r else {})} for r in doc["results"]]


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
    mine = {k: v["value"] for k, v in env["network"]["env"].items() if k in WATCHED}
    if mine:
        lines += ["", "Set by the launcher on every rank, among others: " +
                  ", ".join(f"`{k}={v}`" for k, v in sorted(mine.items()))]
    return "\n".join(lines) + "\n"


def write(placement: str, title: str, rows: list[dict], view: dict, hosts: dict, added: dict, args) -> None:
    derive(rows)
    env = environment.collect(impl=detect(find_mpirun()), hosts=hosts, launcher_added=added, rank_view=view,
                              argv=["python", "benchmarks/buckets.py", *sys.argv[1:]])
    config = {"placement": placement, "sizes_mb": [float(x) for x in args.sizes.split(",")], "first_bucket_mb": 1.0,
              "repeats": args.repeats, "steps": args.steps, "batch": MODELS, "rate": args.rate}
    doc = schema.document("buckets", env, config, rows)
    schema.write(doc, args.out / f"buckets-{placement}.json")
    (args.out / f"buckets-{placement}.md").write_text(markdown(doc, title))
    print(markdown(doc, title), flush=True)


def measure(launch, where: str, args) -> tuple[list[dict], dict]:
    """Every model's rows, each from one job that ``launch(argv)`` runs; and rank 0's view."""
    rows, view = [], {}
    for model in MODELS:
        proc = launch(rank_argv(model, args))
        if proc.returncode != 0:
            sys.exit(f"the {model} job {where} failed:\n{proc.stderr[-3000:]}")
        doc = json_in(proc.stdout, lambda d: "results" in d and "rank_view" in d)
        rows += rows_of(doc, model)
        view = doc["rank_view"]
    return rows, view


def here(args) -> None:
    rows, view = measure(lambda argv: subprocess.run(["mpirt", "launch", "-np", "2", "--no-tag-output", "--", *argv],
                                                     capture_output=True, text=True, timeout=3600),
                         "on this machine", args)
    write("here", "2 ranks on this machine", rows, view,
          {"count": 1, "slots": 2, "names": ["localhost"], "oversubscribed": False, "nodes_seen": 1}, {}, args)


def hosts(args, slots: int) -> None:
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run across namespace hosts: {reason}")
    with rate_limited(2, args.rate, "mpirt-bench-buckets-") as (c, names):
        added = c.rank_env(names, WATCHED)
        rows, view = measure(lambda argv: c.launch(names, argv, "--no-tag-output", timeout=3600, slots=slots),
                             f"on 2 hosts of {slots}", args)
    placement, title = ("tcp", "2 hosts, one rank each") if slots == 1 else \
        (f"tcp2x{slots}", f"2 hosts of {slots} ranks")
    write(placement, f"{title}, links limited to {args.rate}", rows, view,
          {"count": 2, "slots": 2 * slots, "names": list(names), "oversubscribed": slots > 1, "nodes_seen": 2},
          added, args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,5,10,25", help="bucket sizes in MiB, a comma list")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host (tcp)")
    ap.add_argument("--placements", default="here,tcp,tcp2x2", help="comma list of here, tcp, tcp2x2")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    chosen = args.placements.split(",")
    run = {"here": here, "tcp": lambda a: hosts(a, 1), "tcp2x2": lambda a: hosts(a, 2)}
    if set(chosen) - set(run):
        sys.exit(f"--placements {args.placements}: choose from {', '.join(run)}")
    for placement in chosen:
        run[placement](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
