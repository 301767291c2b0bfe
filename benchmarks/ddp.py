#!/usr/bin/env python3
"""mpirt data_parallel against torch DDP (gloo): one run, 1 and 2 ranks, a compute-bound and a
communication-bound model, one intra-op thread per rank.

    python benchmarks/ddp.py                     # writes results/train-ddp-cpu.{json,md}
    python benchmarks/ddp.py --steps 10 --rounds 1 --out /tmp/quick

For each model it reports throughput (samples/s, from the median step time of the slowest
rank), scaling efficiency throughput(2) / (2 * throughput(1)) for each system, and the
mpirt/DDP throughput ratio; at 2 ranks it also sweeps mpirt's bucket size (the data behind
the default). Exits 1 if mpirt is slower than DDP at 2 ranks on any model (target >= 1.0x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

from launcher.mpi import detect, find_mpirun, local_argv_here

ROOT = Path(__file__).resolve().parent

SCHEMA = "mpirt.bench.train-vs-ddp/1"


def run_ranks(np_: int, args: list[str]) -> dict:
    cmd = local_argv_here(detect(find_mpirun()), np_) + [sys.executable, "-m", "mpirt.bench.train", *args]
    # cwd: the installed package (with its compiled core), never the source tree beside it
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def best(rows, **match) -> dict:
    """The best round of the rows matching ``match`` (both systems get the same treatment)."""
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return max(chosen, key=lambda r: r["samples_per_s"])


def derive(one: dict, two: dict, default_bucket: float) -> list[dict]:
    out = []
    for model in sorted({r["model"] for r in two["results"]}):
        m1 = best(one["results"], model=model, system="mpirt")
        d1 = best(one["results"], model=model, system="ddp")
        m2 = best(two["results"], model=model, system="mpirt", bucket_mb=default_bucket)
        d2 = best(two["results"], model=model, system="ddp")
        sweep = {str(b): best(two["results"], model=model, system="mpirt", bucket_mb=b)["samples_per_s"]
                 for b in sorted({r["bucket_mb"] for r in two["results"] if r["system"] == "mpirt"})}
        out.append({
            "model": model, "params": m2["params"], "grad_mb": m2["grad_bytes"] / 2**20,
            "batch_per_rank": m2["batch_per_rank"],
            "samples_per_s": {"mpirt_1": m1["samples_per_s"], "ddp_1": d1["samples_per_s"],
                              "mpirt_2": m2["samples_per_s"], "ddp_2": d2["samples_per_s"]},
            "scaling_efficiency": {"mpirt": m2["samples_per_s"] / (2 * m1["samples_per_s"]),
                                   "ddp": d2["samples_per_s"] / (2 * d1["samples_per_s"])},
            "mpirt_over_ddp": {"1": m1["samples_per_s"] / d1["samples_per_s"],
                               "2": m2["samples_per_s"] / d2["samples_per_s"]},
            "mpirt_bucket_sweep_samples_per_s": sweep,
        })
    return out


def markdown(doc: dict) -> str:
    lines = ["# mpirt data_parallel vs torch DDP (gloo) on this machine", "",
             f"{doc['machine']}; torch {doc['torch']}; {doc['mpi']}; 1 intra-op thread per rank; taken "
             f"{doc['timestamp']}  ", f"Command: `{doc['command']}`", "",
             "| model | grads | batch/rank | mpirt 1 rank | DDP 1 rank | mpirt 2 ranks | DDP 2 ranks | "
             "efficiency mpirt | efficiency DDP | mpirt/DDP (2 ranks) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in doc["summary"]:
        s = d["samples_per_s"]
        lines.append(f"| {d['model']} | {d['grad_mb']:.0f} MiB | {d['batch_per_rank']} | {s['mpirt_1']:.0f} | "
                     f"{s['ddp_1']:.0f} | {s['mpirt_2']:.0f} | {s['ddp_2']:.0f} | "
                     f"{d['scaling_efficiency']['mpirt']:.2f} | {d['scaling_efficiency']['ddp']:.2f} | "
                     f"**{d['mpirt_over_ddp']['2']:.2f}x** |")
    lines += ["", "Throughput in samples/s (median step of the slowest rank, best of the alternating rounds). "
              "Efficiency = throughput(2) / (2 x throughput(1)). Two ranks share two cores, so neither system "
              "can reach 1.0 when a rank's compute needs the whole machine.", "",
              f"mpirt bucket sweep at 2 ranks (samples/s; default {doc['default_bucket_mb']} MiB):", ""]
    for d in doc["summary"]:
        lines.append(f"- {d['model']}: " + ", ".join(f"{b} MiB: {v:.0f}" for b, v in
                                                   d["mpirt_bucket_sweep_samples_per_s"].items()))
    lines += ["", f"Target mpirt >= 1.0x DDP at 2 ranks: **{'met' if doc['target_met'] else 'NOT met'}**"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--buckets", default="1,4,25", help="mpirt bucket sizes (MiB) swept at 2 ranks")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="directory for train-ddp-cpu.{json,md}")
    args = ap.parse_args()
    # (importing mpirt.data_parallel here would initialise MPI in this process, which must only run mpirun)
    buckets = sorted({float(b) for b in args.buckets.split(",")})
    base = ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    one = run_ranks(1, base)
    two = run_ranks(2, base + [a for b in buckets for a in ("--bucket-mb", str(b))])
    default_bucket = two["default_bucket_mb"]
    summary = derive(one, two, default_bucket)
    doc = {"schema": SCHEMA, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/ddp.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {two['host_cores']} cores", "torch": two["torch"], "mpi": two["mpi"],
           "default_bucket_mb": default_bucket, "summary": summary,
           "target_met": all(d["mpirt_over_ddp"]["2"] >= 1.0 for d in summary),
           "runs": {"1": one["results"], "2": two["results"]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train-ddp-cpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "train-ddp-cpu.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0 if doc["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
