#!/usr/bin/env python3
"""Gradient compression on a slow network (root, iproute2 with tc, openssh-server):

Two network-namespace hosts (the tests' cluster), each running `mpirt worker`, one rank each,
with every link into a host limited by a token bucket (`tc ... tbf rate RATE`, default 1 Gbit/s:
the TCP tier of many clusters). The communication-bound model of the scaling benchmark trains
three ways in one job per compression (none, fp16, powersgd): without communication (the
ideal), with mpirt, and with torch DDP over gloo using its own hooks (fp16_compress_hook,
powerSGD_hook at the same rank and warm-up). Writes results/powersgd-tcp.{json,md}.

    python benchmarks/powersgd.py [--rate 1gbit] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "cluster"))

from netns import Cluster, namespaces_usable  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.scaling import json_in  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402

COMPRESSIONS = ("none", "fp16", "powersgd")
MODEL = "comm"


def measure(c: Cluster, compression: str, args) -> dict:
    proc = c.launch(["w0", "w1"], [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", MODEL,
                                   "--scaling", "weak", "--batch", str(args.batch), "--steps", str(args.steps),
                                   "--warmup", "3", "--repeats", str(args.repeats), "--compression", compression],
                    "--no-tag-output", timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"the {compression} job failed:\n{proc.stderr[-3000:]}")
    return json_in(proc.stdout, lambda d: "results" in d and d.get("compression") == compression)


def rows_of(doc: dict, compression: str) -> list[dict]:
    rows = []
    for r in doc["results"]:
        system = r["system"] if r["system"] == "compute-only" or compression == "none" else \
            f"{r['system']} {compression}"
        rows.append({"kind": "train", "key": {"np": doc["ranks"], "scaling": "weak", "system": system, "model": MODEL,
                                              "device": "cpu"},
                     "metrics": {"samples_per_s": stat([r["global_batch"] / t for t in r["step_s"]]),
                                 "step_s": stat(r["step_s"])}})
    return rows


def derive(rows: list[dict]) -> None:
    """Each mpirt row against DDP with the same compression, and against uncompressed mpirt."""
    rate = {r["key"]["system"]: r["metrics"]["samples_per_s"]["median"] for r in rows}
    for r in rows:
        system = r["key"]["system"]
        if system.startswith("mpirt"):
            r["derived"] = {"vs_ddp": rate[system] / rate[system.replace("mpirt", "ddp")],
                            "vs_uncompressed": rate[system] / rate["mpirt"]}


def markdown(doc: dict) -> str:
    env, cfg = doc["env"], doc["config"]
    by = {r["key"]["system"]: r for r in doc["rows"]}
    lines = ["# Gradient compression on a rate-limited link", "",
             f"2 network-namespace hosts, 1 rank each, every link into a host limited to {cfg['rate']} (tc tbf); "
             f"model `{MODEL}` ({cfg['params'] / 1e6:.1f} M parameters, {cfg['params'] * 4 / 2**20:.0f} MiB of "
             f"fp32 gradients), per-rank batch {cfg['batch']}; median of {cfg['repeats']} repeats of "
             f"{cfg['steps']} steps; {env['cpu']['model']}, {env['cpu']['cores']} cores; taken {env['timestamp']}",
             "", "| compression | compute only | mpirt | DDP (gloo, its hooks) | mpirt / DDP "
                 "| mpirt / mpirt uncompressed |",
             "|---|---:|---:|---:|---:|---:|"]
    ideal = by["compute-only"]["metrics"]["samples_per_s"]["median"]
    for comp in COMPRESSIONS:
        suffix = "" if comp == "none" else f" {comp}"
        ours, theirs = by[f"mpirt{suffix}"], by[f"ddp{suffix}"]
        lines.append(f"| {comp} | {ideal:.0f} samples/s | {ours['metrics']['samples_per_s']['median']:.0f} | "
                     f"{theirs['metrics']['samples_per_s']['median']:.0f} | {ours['derived']['vs_ddp']:.2f}x | "
                     f"{ours['derived']['vs_uncompressed']:.2f}x |")
    lines += ["", "compute only: each rank trains on its own batch without communication (the ideal; one row, from "
              "the uncompressed job). PowerSGD: rank 4, two exact warm-up steps, for both.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="1gbit", help="tc rate of every link into a host")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    rows, params, view = [], 0, {}
    with tempfile.TemporaryDirectory(prefix="mpirt-bench-powersgd-") as tmp:
        c = Cluster(Path(tmp), 2)
        try:
            c.limit_rate(args.rate)
            for w in ("w0", "w1"):
                c.start_worker(w)
            for w in ("w0", "w1"):
                c.wait_listening(w)
            for comp in COMPRESSIONS:
                doc = measure(c, comp, args)
                params, view = doc["params"], doc["rank_view"]
                rows += [r for r in rows_of(doc, comp) if comp == "none" or r["key"]["system"] != "compute-only"]
                print(f"{comp}: " + ", ".join(f"{r['system']} {statistics.median(r['step_s']) * 1e3:.0f} ms"
                                              for r in doc["results"]), flush=True)
        finally:
            c.close()
    derive(rows)
    impl = detect(find_mpirun())
    hosts = {"count": 2, "slots": 2, "names": ["w0", "w1"], "oversubscribed": False, "nodes_seen": 2}
    env = environment.collect(impl=impl, hosts=hosts, launcher_added={}, rank_view=view,
                              argv=["python", "benchmarks/powersgd.py", *sys.argv[1:]])
    config = {"rate": args.rate, "repeats": args.repeats, "steps": args.steps, "batch": args.batch, "params": params}
    out = schema.document("powersgd", env, config, rows)
    schema.write(out, args.out / "powersgd-tcp.json")
    (args.out / "powersgd-tcp.md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
