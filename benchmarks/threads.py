#!/usr/bin/env python3
"""Threads a rank, as `mpirt launch` sets them, against what a rank got before: a training loop
as users write one (threads_loop.py: no thread settings, an MLP, `data_parallel`) on 1 and 2
local ranks, launched with the launcher's defaults (OMP_NUM_THREADS = the rank's share of the
CPUs) and with --no-env-defaults (torch's own choice under MPI), taking turns. Writes
results/threads.{json,md}.

    python benchmarks/threads.py [--ranks 1,2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from trainjobs import launcher_note  # noqa: E402

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.scaling import json_in  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402

SYSTEMS = {"launcher": [], "torch alone": ["--no-env-defaults"]}  # the launcher's threads; torch's own under MPI
WATCHED = ("OMP_NUM_THREADS",)


def job(np_: int, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(["mpirt", "launch", "-np", str(np_), "--no-tag-output", *extra, "--", sys.executable,
                           str(ROOT / "threads_loop.py")], capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        sys.exit(f"the {np_}-rank job {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json_in(proc.stdout, lambda d: "step_s" in d)


def markdown(doc: dict) -> str:
    rows = {(r["key"]["np"], r["key"]["system"]): r for r in doc["rows"]}
    env, cfg = doc["env"], doc["config"]
    ours, theirs = SYSTEMS
    lines = ["# Threads a rank: the launcher's against torch's own under MPI", "",
             f"A training loop with no thread settings (`benchmarks/threads_loop.py`: an MLP of 2048 wide layers, "
             f"global batch 512, `data_parallel`) on local ranks of this machine ({env['cpu']['model']}, "
             f"{env['cpu']['cores']} cores); median of {cfg['repeats']} jobs a system, taking turns, of 10 timed "
             f"steps each; taken {env['timestamp']}. `{ours}`: `mpirt launch` with its defaults, OMP_NUM_THREADS "
             f"the rank's share of the CPUs; `{theirs}`: with --no-env-defaults, torch's own choice in a process "
             "with MPI's rank variables.", "",
             f"| ranks | threads a rank, {ours} | threads a rank, {theirs} | samples/s, {ours} | "
             f"samples/s, {theirs} | {ours} / {theirs} |", "|---:|---:|---:|---:|---:|---:|"]
    for n in cfg["ranks"]:
        a, b = rows[(n, ours)], rows[(n, theirs)]
        lines.append(f"| {n} | {a['info']['threads']} | {b['info']['threads']} | "
                     f"{a['metrics']['samples_per_s']['median']:.0f} | {b['metrics']['samples_per_s']['median']:.0f} | "
                     f"{a['derived']['ratio']:.2f}x |")
    return "\n".join(lines + [line.replace("every rank", f"every rank of {max(cfg['ranks'])}")
                               for line in launcher_note(env, WATCHED)] + [""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2", help="comma list of local rank counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    counts = [int(n) for n in args.ranks.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {}
    for n in counts:
        for _ in range(args.repeats):
            for system, extra in SYSTEMS.items():
                runs.setdefault((n, system), []).append(job(n, extra))
        print(f"{n} ranks done", flush=True)
    rows = []
    for (n, system), docs in runs.items():
        per_job = [docs[0]["global_batch"] / statistics.median(d["step_s"]) for d in docs]
        rows.append({"kind": "train", "key": {"np": n, "scaling": "weak", "system": system, "model": "threads_loop",
                                              "device": "cpu"},
                     "metrics": {"samples_per_s": stat(per_job),
                                 "step_s": stat([statistics.median(d["step_s"]) for d in docs])},
                     "info": {"threads": docs[0]["threads"]}})
    ours, theirs = SYSTEMS
    for row in rows:
        base = next(r for r in rows if r["key"]["np"] == row["key"]["np"] and r["key"]["system"] == theirs)
        row["derived"] = {"ratio": row["metrics"]["samples_per_s"]["median"] / base["metrics"]["samples_per_s"]["median"]}
    probe = subprocess.run(["mpirt", "launch", "-np", str(max(counts)), "--dry-run", "--", "true"], capture_output=True,
                           text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    added = {k: v for k, v in json_in(probe.stdout, lambda d: "env" in d)["env"].items() if k in WATCHED}
    first = next(iter(runs.values()))[0]
    env = environment.collect(impl=detect(find_mpirun()), launcher_added=added, argv=sys.argv,
                              rank_view={"mpi_library": first["mpi_library"], "cuda_aware": False},
                              hosts={"count": 1, "slots": os.cpu_count(), "names": ["localhost"],
                                     "oversubscribed": max(counts) > (os.cpu_count() or 1), "nodes_seen": 1})
    doc = schema.document("threads", env, {"ranks": counts, "repeats": args.repeats}, rows)
    schema.publish(doc, args.out / "threads.json", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
