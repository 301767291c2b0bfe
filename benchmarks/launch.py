#!/usr/bin/env python3
"""Launcher benchmarks (root, iproute2, openssh-server):

1. Launch overhead: `mpirt launch` against a bare `mpirun` of the same hostfile and program on
   4 network-namespace hosts running `mpirt worker` (the tests' cluster), alternating runs.
   Overhead = median(mpirt launch) - median(bare mpirun); target <= 0.5 s.
2. Readiness: `launcher.ready.wait_ready` over 64 hosts, each its own `mpirt worker` on its own
   loopback address (127.0.1.1 .. 127.0.1.64); target <= 2 s.

    python benchmarks/launch.py            # writes results/launch.{json,md}
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "cluster"))

from netns import Cluster, namespaces_usable  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import build_argv, detect, find_mpirun, ssh_env  # noqa: E402
from launcher.ready import release, wait_ready  # noqa: E402
from launcher.ssh import prepare  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402


def timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def launch_overhead(tmp: Path, reps: int) -> dict:
    c = Cluster(tmp, 4)
    try:
        names = [f"w{i}" for i in range(4)]
        for n in names:
            c.start_worker(n)
        for n in names:
            c.wait_listening(n)
        program = [sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]
        impl = detect(find_mpirun())
        state = tmp / "bare"
        state.mkdir()
        hostfile = tmp / "hostfile"
        hostfile.write_text("".join(f"{n} slots=1\n" for n in names))
        setup = prepare(c.secret, state / "ssh", 2222)
        bare = build_argv(impl, 4, str(hostfile), program, uid=os.getuid(), tag_output=True, export=["PATH"])
        bare_env = {**os.environ, **ssh_env(impl, setup.ssh_args())}

        def run_bare():
            p = c.run_in("launcher", bare, env=bare_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if p.wait() != 0:
                sys.exit("bare mpirun failed")

        def close_bare():  # its shared connections must not carry the next run (untimed)
            for n in names:  # in the launcher namespace: the socket name hashes its host name
                c.run_in("launcher", ["ssh", *setup.ssh_args(), "-O", "stop", n], stderr=subprocess.DEVNULL).wait()

        def run_mpirt():
            p = c.start_launch(names, program)
            out, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"mpirt launch failed:\n{err}")

        samples = {"mpirun": [], "mpirt": []}
        run_bare(), close_bare(), run_mpirt()  # warm caches (imports, host keys, DNS)
        for i in range(reps):
            order = [("mpirun", run_bare), ("mpirt", run_mpirt)]
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                samples[name].append(timed(fn))
                close_bare()
        med = {k: statistics.median(v) for k, v in samples.items()}
        key = {"case": "launch: mpi4py init + barrier + finalize", "hosts": 4, "ranks": 4}
        return [{"kind": "launch", "key": {**key, "system": "mpirun"}, "metrics": {"seconds": stat(samples["mpirun"])}},
                {"kind": "launch", "key": {**key, "system": "mpirt"}, "metrics": {"seconds": stat(samples["mpirt"])},
                 "derived": {"overhead_s": med["mpirt"] - med["mpirun"], "vs_mpirun": med["mpirt"] / med["mpirun"]}}]
    finally:
        c.close()


def readiness(tmp: Path, n: int, reps: int) -> dict:
    secret = tmp / "secret64"
    secret.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "", "-f",
                    str(secret / "id_rsa")], check=True)
    (secret / "authorized_keys").write_bytes((secret / "id_rsa.pub").read_bytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addrs = [f"127.0.1.{i}" for i in range(1, n + 1)]
    workers = [subprocess.Popen([sys.executable, "-m", "launcher.cli", "worker", "--port", str(port), "--listen", a,
                                 "--ssh-dir", str(secret), "--state-dir", str(tmp / f"w{i}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, a in enumerate(addrs)]
    try:
        setup = prepare(secret, tmp / "client64", port)
        first = wait_ready(addrs, setup, 120)  # also waits for the workers to start
        if any(r.stage != "ready" for r in first):
            sys.exit(f"workers did not come up: {[r for r in first if r.stage != 'ready'][:3]}")
        release(addrs, setup)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            results = wait_ready(addrs, setup, 30)
            times.append(time.perf_counter() - t0)
            assert all(r.stage == "ready" for r in results)
            release(addrs, setup)  # each repeat makes fresh connections
        return [{"kind": "launch", "key": {"case": "readiness: DNS + TCP + ssh auth, all hosts in parallel",
                                           "hosts": n, "ranks": 0, "system": "mpirt"},
                 "metrics": {"seconds": stat(times)}}]
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait()


def markdown(doc: dict) -> str:
    rows = {(r["key"]["case"].split(":")[0], r["key"]["system"]): r for r in doc["rows"]}
    bare, ours, ready = rows[("launch", "mpirun")], rows[("launch", "mpirt")], rows[("readiness", "mpirt")]
    t = doc["config"]["targets"]
    over = ours["derived"]["overhead_s"]
    med = ready["metrics"]["seconds"]["median"]
    env = doc["env"]
    return "\n".join([
        "# Launcher overhead and readiness on this machine", "",
        f"{env['cpu']['model']}, {env['cpu']['cores']} cores; {env['mpi']['library']}; taken {env['timestamp']}  ",
        f"Command: `{env['command']}`", "",
        "| measurement | mpirt | baseline | difference | ratio | target |", "|---|---:|---:|---:|---:|---|",
        f"| launch, {ours['key']['hosts']} namespace hosts, {ours['key']['ranks']} ranks (median of "
        f"{ours['metrics']['seconds']['n']}) | {ours['metrics']['seconds']['median']:.2f} s | bare mpirun "
        f"{bare['metrics']['seconds']['median']:.2f} s | {over:+.2f} s | {ours['derived']['vs_mpirun']:.2f}x | "
        f"<= {t['overhead_s']} s: {'met' if over <= t['overhead_s'] else 'NOT met'} |",
        f"| readiness of {ready['key']['hosts']} hosts (median of {ready['metrics']['seconds']['n']}) | {med:.2f} s | | | | "
        f"<= {t['readiness_s']} s: {'met' if med <= t['readiness_s'] else 'NOT met'} |", "",
        "The launch includes everything `mpirt launch` adds: Python start-up, MPI detection, the hostfile, the "
        "ssh setup and the readiness check of every host, and the output relay.", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    with tempfile.TemporaryDirectory(prefix="mpirt-bench-launch-") as tmp:
        rows = launch_overhead(Path(tmp), args.reps) + readiness(Path(tmp), args.hosts, args.reps)
    impl = detect(find_mpirun())
    hosts = {"count": 4, "slots": 4, "names": [f"w{i}" for i in range(4)], "oversubscribed": False, "nodes_seen": 4}
    env = environment.collect(impl=impl, hosts=hosts, launcher_added={}, rank_view={"mpi_library": impl.label},
                              argv=["python", "benchmarks/launch.py", *sys.argv[1:]])
    targets = {"overhead_s": 0.5, "readiness_s": 2.0}
    doc = schema.document("launch", env, {"reps": args.reps, "readiness_hosts": args.hosts, "targets": targets},
                          rows)
    schema.write(doc, args.out / "launch.json")
    (args.out / "launch.md").write_text(markdown(doc))
    print(markdown(doc))
    met = rows[1]["derived"]["overhead_s"] <= targets["overhead_s"] and \
        rows[2]["metrics"]["seconds"]["median"] <= targets["readiness_s"]
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
