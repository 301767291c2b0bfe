#!/usr/bin/env python3
"""Allreduce benchmark to commit: every core algorithm and a concurrent memcpy baseline, in one
run of `mpirt bench allreduce`, then the ratios the collective-core issue asks for.

    python benchmarks/allreduce.py                 # 2 ranks, 8 B .. 256 MiB, float32 sum
    python benchmarks/allreduce.py --np 4 --max 64M

Writes results/allreduce-cpu-np<N>.json (the data, mpirt.bench/1) and .md (a view of it). The memory bound:
every rank must read its S-byte input and write its S-byte output once, the traffic of one
memcpy of S; with all ranks copying at once each gets the measured memcpy rate B, so no
allreduce can beat algbw = B (busbw = B * 2(n-1)/n). Exchange through cache is taken as free.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from launcher.mpi import detect, find_mpirun
from mpirt.bench import environment, schema
from mpirt.bench.report import fmt_size
from mpirt.bench.scaling import collective_rows, json_in
from mpirt.bench.schema import stat

RESULTS = Path(__file__).parent / "results"


def to_document(raw: dict, argv: list[str]) -> dict:
    """The harness's own output as an mpirt.bench/1 document (one sample per measurement)."""
    n = raw["world"]["size"]
    rows = collective_rows({n: [raw]})
    rows += [{"kind": "memcpy", "key": {"np": n, "size": m["size"]},
              "metrics": {"algbw_gbs": stat([m["algbw_gbs"]]), "time_us": stat([m["time_us"]["avg"]])}}
             for m in raw["memcpy"]]
    hosts = {"count": raw["world"]["nodes"], "slots": os.cpu_count(), "names": [raw["host"]],
             "oversubscribed": n > (os.cpu_count() or 1), "nodes_seen": raw["world"]["nodes"]}
    env = environment.collect(impl=detect(find_mpirun()), hosts=hosts, launcher_added={}, argv=argv,
                              rank_view={"mpi_library": raw["mpi"]["library"], "cuda_aware": raw["mpi"]["cuda_aware"]})
    config = {**raw["config"], "harness_command": raw["command"], "staging": raw["staging"]}
    return schema.document("allreduce", env, config, rows)


def summarize(doc: dict) -> str:
    rows = {(r["key"]["size"], r["key"]["algo"], r["key"]["mode"]): r for r in doc["rows"] if r["kind"] == "collective"}
    memcpy = {r["key"]["size"]: r["metrics"]["algbw_gbs"]["median"] for r in doc["rows"] if r["kind"] == "memcpy"}
    sizes = sorted({k[0] for k in rows})
    modes = ("out-of-place", "in-place")
    n, cfg, env = doc["rows"][0]["key"]["np"], doc["config"], doc["env"]
    out = [f"# Allreduce on this machine: {n} ranks, {cfg['dtype']} {cfg['op']}", "",
           f"MPI: {env['mpi']['library']}  ", f"mpirt {env['mpirt']['version']} ({env['mpirt']['git_commit']})  ",
           f"Command: `{env['command']}`  ", f"Taken: {env['timestamp']}", "",
           "busbw in GB/s (nccl-tests definition); time in µs; memcpy = per-rank rate with every rank copying "
           "at once (the bound: algbw ≤ memcpy rate).", "",
           "| size | mode | mpi busbw | ring busbw | shm busbw | auto busbw (→algo) | memcpy GB/s | shm/mpi | "
           "shm algbw / bound | auto time / mpi time |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst_auto, small_auto, big = 0.0, 0.0, []
    for size in sizes:
        for mode in modes:
            m = {a: rows[(size, a, mode)]["metrics"] for a in ("mpi", "ring", "shm", "auto")}
            bus = {a: m[a]["busbw_gbs"]["median"] for a in m}
            shm_mpi = bus["shm"] / bus["mpi"] if bus["mpi"] else float("nan")
            bound = m["shm"]["algbw_gbs"]["median"] / memcpy[size]
            auto_ratio = m["auto"]["time_us"]["median"] / m["mpi"]["time_us"]["median"]
            worst_auto = max(worst_auto, auto_ratio)
            if size <= 4096:
                small_auto = max(small_auto, auto_ratio)
            if size >= 16 << 20:
                big.append((shm_mpi, bound))
            out.append(f"| {fmt_size(size)} | {mode} | {bus['mpi']:.2f} | {bus['ring']:.2f} | {bus['shm']:.2f} | "
                       f"{bus['auto']:.2f} (→{rows[(size, 'auto', mode)]['info']['algo_used']}) | {memcpy[size]:.2f} | "
                       f"{shm_mpi:.2f} | {bound:.0%} | {auto_ratio:.2f} |")
    out += ["", "## Against the targets", ""]
    if big:
        out.append(f"- ≥ 16 MiB: shm busbw / mpi busbw from {min(b[0] for b in big):.2f}× to "
                   f"{max(b[0] for b in big):.2f}× (target ≥ 2×); shm algbw / memory bound from "
                   f"{min(b[1] for b in big):.0%} to {max(b[1] for b in big):.0%} (target ≥ 70%).")
    out.append(f"- ≤ 4 KiB: auto time / mpi time at most {small_auto:.2f} (target ≤ 1.10).")
    out.append(f"- every size: auto time / mpi time at most {worst_auto:.2f} (target ≤ 1.05).")
    out.append("- wrong values: 0 (the sweep refuses results with any).")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--min", default="8")
    ap.add_argument("--max", default="256M")
    ap.add_argument("--summarize", metavar="JSON", help="only rewrite the .md view of an existing result")
    args = ap.parse_args()
    path = Path(os.path.relpath(RESULTS / f"allreduce-cpu-np{args.np}.json"))
    if args.summarize:
        path = Path(args.summarize)
        doc = schema.load(path)
    else:
        cmd = ["mpirt", "bench", "allreduce", "--np", str(args.np), "-b", args.min, "-e", args.max, "-f", "2",
               "-a", "all", "--memcpy", "-J", "-"]
        proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
        print(proc.stdout[:proc.stdout.find("\n{")], flush=True)  # the harness's table
        if proc.returncode != 0:
            print(f"benchmark failed with exit status {proc.returncode}", file=sys.stderr)
            return proc.returncode
        raw = json_in(proc.stdout, lambda d: d.get("schema") == "mpirt.bench.allreduce/1")
        doc = to_document(raw, ["python", "benchmarks/allreduce.py", *sys.argv[1:]])
        schema.write(doc, path)
    text = summarize(doc)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
