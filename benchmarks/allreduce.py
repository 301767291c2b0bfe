#!/usr/bin/env python3
"""Allreduce benchmark to commit: every core algorithm and a concurrent memcpy baseline, in one
run of `mpirt bench allreduce`, then the ratios the collective-core issue asks for.

    python benchmarks/allreduce.py                 # 2 ranks, 8 B .. 256 MiB, float32 sum
    python benchmarks/allreduce.py --np 4 --max 64M
    python benchmarks/allreduce.py --shared-buffers   # -R: buffers the ranks share, shm without staging

Writes results/allreduce-cpu-np<N>[-shared].json (the data, mpirt.bench/1) and .md (a view of it). The memory bound:
every rank must read its S-byte input and write its S-byte output once, the traffic of one
memcpy of S; with all ranks copying at once each gets the measured memcpy rate B, so no
allreduce can beat algbw = B (busbw = B * 2(n-1)/n). Exchange through cache is taken as free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from launcher.mpi import detect, find_mpirun
from mpirt.bench import environment, schema
from mpirt.bench.report import fmt_size
from mpirt.bench.scaling import collective_rows, json_in
from mpirt.bench.schema import stat

RESULTS = Path(__file__).parent / "results"


def to_document(raws: list[dict], argv: list[str]) -> dict:
    """The harness's outputs, one per repeat (a fresh job each), as an mpirt.bench/1 document."""
    raw = raws[0]
    n = raw["world"]["size"]
    rows = collective_rows({n: raws})
    memcpy: dict[int, list[dict]] = {}
    for r in raws:
        for m in r["memcpy"]:
            memcpy.setdefault(m["size"], []).append(m)
    rows += [{"kind": "memcpy", "key": {"np": n, "size": size},
              "metrics": {"algbw_gbs": stat([m["algbw_gbs"] for m in ms]),
                          "time_us": stat([m["time_us"]["avg"] for m in ms])}} for size, ms in sorted(memcpy.items())]
    hosts = {"count": raw["world"]["nodes"], "slots": os.cpu_count(), "names": [raw["host"]],
             "oversubscribed": n > (os.cpu_count() or 1), "nodes_seen": raw["world"]["nodes"]}
    env = environment.collect(impl=detect(find_mpirun()), hosts=hosts, launcher_added={}, argv=argv,
                              rank_view={"mpi_library": raw["mpi"]["library"], "cuda_aware": raw["mpi"]["cuda_aware"]})
    config = {**raw["config"], "harness_command": raw["command"], "staging": raw["staging"], "repeats": len(raws),
              "core_round_trip_ns": [r.get("core_round_trip_ns") for r in raws]}
    return schema.document("allreduce", env, config, rows)


def per_run(a: dict, b: dict) -> list[float]:
    """a / b taken within each run: both ran in the same job, so a slow job slows both."""
    return [x / y for x, y in zip(a["samples"], b["samples"]) if y]


def ratio(a: dict, b: dict) -> tuple[float, float]:
    """(the median of the per-run ratios a / b, its noise: twice their coefficient of variation)."""
    rs = per_run(a, b)
    if not rs:
        return float("nan"), 0.0
    s = stat(rs)
    return s["median"], 2 * s["cv"]


SHARED_L3_NS = 150  # a cache line's round trip between the ranks' cores: about 55 ns sharing an L3 here, 330 not


def placements(doc: dict) -> dict[str, list[int]]:
    """Runs by where the ranks' cores were (the harness times a round trip before and after the
    sweep): sharing an L3, not, or mixed (moved during the run). Empty for older results."""
    out: dict[str, list[int]] = {}
    for i, rt in enumerate(doc["config"].get("core_round_trip_ns") or []):
        if rt:
            key = ("shared L3" if max(rt) < SHARED_L3_NS else "no shared L3" if min(rt) >= SHARED_L3_NS
                   else "moved during the run")
            out.setdefault(key, []).append(i)
    return out


def summarize(doc: dict) -> str:
    rows = {(r["key"]["size"], r["key"]["algo"], r["key"]["mode"]): r for r in doc["rows"] if r["kind"] == "collective"}
    memcpy = {r["key"]["size"]: r["metrics"]["algbw_gbs"] for r in doc["rows"] if r["kind"] == "memcpy"}
    sizes = sorted({k[0] for k in rows})
    modes = ("out-of-place", "in-place")
    n, cfg, env = doc["rows"][0]["key"]["np"], doc["config"], doc["env"]
    shared = ", buffers shared by the ranks (-R)" if cfg.get("shared_buffers") else ""
    out = [f"# Allreduce on this machine: {n} ranks, {cfg['dtype']} {cfg['op']}{shared}", "",
           f"MPI: {env['mpi']['library']}  ", f"mpirt {env['mpirt']['version']} ({env['mpirt']['git_commit']})  ",
           f"Command: `{env['command']}`  ", f"Taken: {env['timestamp']}", "",
           "busbw in GB/s (nccl-tests definition); time in µs; memcpy = per-rank rate with every rank copying "
           "at once (the bound: algbw ≤ memcpy rate).", "",
           "| size | mode | mpi busbw | ring busbw | shm busbw | auto busbw (→algo) | ordered busbw | memcpy GB/s | "
           "shm/mpi | shm algbw / bound | auto time / mpi time |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    auto_all, auto_small, big = [], [], []
    for size in sizes:
        for mode in modes:
            m = {a: rows[(size, a, mode)]["metrics"] for a in ("mpi", "ring", "shm", "auto", "ordered")
                 if (size, a, mode) in rows}  # results from before `ordered` lack it
            bus = {a: f'{m[a]["busbw_gbs"]["median"]:.2f}' for a in m}
            shm_mpi = ratio(m["shm"]["busbw_gbs"], m["mpi"]["busbw_gbs"])
            bound = ratio(m["shm"]["algbw_gbs"], memcpy[size])
            best = max(per_run(m["shm"]["algbw_gbs"], memcpy[size]), default=float("nan"))
            auto_mpi = ratio(m["auto"]["time_us"], m["mpi"]["time_us"])
            auto_all.append((auto_mpi, size, mode))
            if size <= 4096:
                auto_small.append((auto_mpi, size, mode))
            if size >= 16 << 20:
                big.append((shm_mpi, bound, size, mode, best))
            out.append(f"| {fmt_size(size)} | {mode} | {bus['mpi']} | {bus['ring']} | {bus['shm']} | "
                       f"{bus['auto']} (→{rows[(size, 'auto', mode)]['info']['algo_used']}) | {bus.get('ordered', '–')} | "
                       f"{memcpy[size]['median']:.2f} | "
                       f"{shm_mpi[0]:.2f} ±{shm_mpi[1]:.2f} | {bound[0]:.0%} ±{bound[1]:.0%} | {auto_mpi[0]:.2f} ±{auto_mpi[1]:.2f} |")
    out += ["", f"Medians of {cfg.get('repeats', 1)} runs, each a fresh job. Ratios are taken within each run "
            "(a slow job slows every algorithm in it), then their median; ± is twice the coefficient of "
            "variation of those ratios.", "", "## Against the targets", ""]
    if big:
        out.append(f"- ≥ 16 MiB: shm busbw / mpi busbw from {min(b[0][0] for b in big):.2f}× to "
                   f"{max(b[0][0] for b in big):.2f}× (target ≥ 2×); shm algbw / memory bound from "
                   f"{min(b[1][0] for b in big):.0%} to {max(b[1][0] for b in big):.0%} (target ≥ 70%); in the "
                   f"best single run from {min(b[4] for b in big):.0%} to {max(b[4] for b in big):.0%}.")
        for where, runs in placements(doc).items():
            trips = [t for i in runs for t in doc["config"]["core_round_trip_ns"][i]]
            shares = [statistics.median([per_run(rows[(size, "shm", mode)]["metrics"]["algbw_gbs"], memcpy[size])[i]
                                         for i in runs]) for _, _, size, mode, _ in big]
            out.append(f"  - run{'s' if len(runs) > 1 else ''} {', '.join(str(i + 1) for i in runs)}, {where} "
                       f"(round trip {min(trips):.0f}–{max(trips):.0f} ns): shm algbw / memory bound from "
                       f"{min(shares):.0%} to {max(shares):.0%} (median of these runs).")
    for label, items, limit in (("≤ 4 KiB", auto_small, 1.10), ("every size", auto_all, 1.05)):
        (worst, noise), size, mode = max(items, key=lambda t: t[0][0])
        beyond = [f"{fmt_size(sz)} {md}" for (r, nz), sz, md in items if r > limit + nz]
        out.append(f"- {label}: auto time / mpi time at most {worst:.2f} ±{noise:.2f} ({fmt_size(size)} {mode}; "
                   f"target ≤ {limit:.2f}); beyond the target by more than the noise: "
                   f"{', '.join(beyond) if beyond else 'none'}.")
    out.append("- wrong values: 0 (the sweep refuses results with any).")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--min", default="8")
    ap.add_argument("--max", default="256M")
    ap.add_argument("--repeats", type=int, default=5, help="fresh jobs per measurement (medians and noise)")
    ap.add_argument("--shared-buffers", action="store_true",
                    help="buffers in memory the local ranks share (the harness's -R): shm reduces them without staging")
    ap.add_argument("--summarize", metavar="JSON", help="only rewrite the .md view of an existing result")
    args = ap.parse_args()
    name = f"allreduce-cpu-np{args.np}{'-shared' if args.shared_buffers else ''}.json"
    path = Path(os.path.relpath(RESULTS / name))
    if args.summarize:
        path = Path(args.summarize)
        doc = schema.load(path)
    else:
        cmd = ["mpirt", "bench", "allreduce", "--np", str(args.np), "-b", args.min, "-e", args.max, "-f", "2",
               "-a", "all", "--memcpy", "-J", "-"] + (["-R"] if args.shared_buffers else [])
        raws = []
        for i in range(args.repeats):
            proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
            if i == 0:
                print(proc.stdout[:proc.stdout.find("\n{")], flush=True)  # the harness's table, once
            if proc.returncode != 0:
                print(f"benchmark failed with exit status {proc.returncode}", file=sys.stderr)
                return proc.returncode
            raws.append(json_in(proc.stdout, lambda d: d.get("schema") == "mpirt.bench.allreduce/1"))
            print(f"run {i + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        doc = to_document(raws, ["python", "benchmarks/allreduce.py", *sys.argv[1:]])
        schema.write(doc, path)
    text = summarize(doc)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
