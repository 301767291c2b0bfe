#!/usr/bin/env python3
"""Allreduce benchmark to commit: every core algorithm and a concurrent memcpy baseline, in one
run of `mpirt bench allreduce`, then the ratios the collective-core issue asks for.

    python benchmarks/allreduce.py                 # 2 ranks, 8 B .. 256 MiB, float32 sum
    python benchmarks/allreduce.py --np 4 --max 64M

Writes results/allreduce-cpu-np<N>.json (the data) and .md (a view of it). The memory bound:
every rank must read its S-byte input and write its S-byte output once, the traffic of one
memcpy of S; with all ranks copying at once each gets the measured memcpy rate B, so no
allreduce can beat algbw = B (busbw = B * 2(n-1)/n). Exchange through cache is taken as free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def by_key(doc: dict) -> dict:
    return {(r["size"], r["algo"], r["mode"]): r for r in doc["results"]}


def fmt_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def summarize(doc: dict) -> str:
    rows = by_key(doc)
    memcpy = {m["size"]: m["algbw_gbs"] for m in doc["memcpy"]}
    sizes = sorted({r["size"] for r in doc["results"]})
    modes = ("out-of-place", "in-place")
    n = doc["world"]["size"]
    out = [f"# Allreduce on this machine: {n} ranks, {doc['config']['dtype']} {doc['config']['op']}", "",
           f"MPI: {doc['mpi']['library']}  ", f"Command: `{doc['command']}`  ", f"Taken: {doc['timestamp']}", "",
           "busbw in GB/s (nccl-tests definition); time in µs; memcpy = per-rank rate with every rank copying "
           "at once (the bound: algbw ≤ memcpy rate).", "",
           "| size | mode | mpi busbw | ring busbw | shm busbw | auto busbw (→algo) | memcpy GB/s | shm/mpi | "
           "shm algbw / bound | auto time / mpi time |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst_auto, small_auto, big = 0.0, 0.0, []
    for size in sizes:
        for mode in modes:
            g = {a: rows[(size, a, mode)] for a in ("mpi", "ring", "shm", "auto")}
            shm_mpi = g["shm"]["busbw_gbs"] / g["mpi"]["busbw_gbs"] if g["mpi"]["busbw_gbs"] else float("nan")
            bound = g["shm"]["algbw_gbs"] / memcpy[size]
            auto_ratio = g["auto"]["time_us"]["avg"] / g["mpi"]["time_us"]["avg"]
            worst_auto = max(worst_auto, auto_ratio)
            if size <= 4096:
                small_auto = max(small_auto, auto_ratio)
            if size >= 16 << 20:
                big.append((shm_mpi, bound))
            out.append(f"| {fmt_size(size)} | {mode} | {g['mpi']['busbw_gbs']:.2f} | {g['ring']['busbw_gbs']:.2f} | "
                       f"{g['shm']['busbw_gbs']:.2f} | {g['auto']['busbw_gbs']:.2f} (→{g['auto']['algo_used']}) | "
                       f"{memcpy[size]:.2f} | {shm_mpi:.2f} | {bound:.0%} | {auto_ratio:.2f} |")
    out += ["", "## Against the targets", ""]
    if big:
        out.append(f"- ≥ 16 MiB: shm busbw / mpi busbw from {min(b[0] for b in big):.2f}× to "
                   f"{max(b[0] for b in big):.2f}× (target ≥ 2×); shm algbw / memory bound from "
                   f"{min(b[1] for b in big):.0%} to {max(b[1] for b in big):.0%} (target ≥ 70%).")
    out.append(f"- ≤ 4 KiB: auto time / mpi time at most {small_auto:.2f} (target ≤ 1.10).")
    out.append(f"- every size: auto time / mpi time at most {worst_auto:.2f} (target ≤ 1.05).")
    out.append(f"- wrong values: {doc['summary']['wrong']}.")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--min", default="8")
    ap.add_argument("--max", default="256M")
    ap.add_argument("--summarize", metavar="JSON", help="only rewrite the .md view of an existing result")
    args = ap.parse_args()
    if args.summarize:
        path = Path(args.summarize)
    else:
        RESULTS.mkdir(exist_ok=True)
        path = Path(os.path.relpath(RESULTS / f"allreduce-cpu-np{args.np}.json"))  # recorded in the JSON
        cmd = ["mpirt", "bench", "allreduce", "--np", str(args.np), "-b", args.min, "-e", args.max, "-f", "2",
               "-a", "all", "--memcpy", "-J", str(path)]
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            print(f"benchmark failed with exit status {rc}", file=sys.stderr)
            return rc
    doc = json.loads(path.read_text())
    text = summarize(doc)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
