#!/usr/bin/env python3
"""Launcher benchmarks (root, iproute2, openssh-server):

1. Launch overhead: `mpirt launch --no-guard` against a bare `mpirun` of the same hostfile and program on
   4 network-namespace hosts running `mpirt worker` (the tests' cluster), alternating runs.
   Overhead = median(mpirt launch) - median(bare mpirun); target <= 0.5 s.
2. Readiness: `launcher.ready.wait_ready` over 64 hosts, each its own `mpirt worker` on its own
   loopback address (127.0.1.1 .. 127.0.1.64); target <= 2 s.
3. How a job ends, on the 4 hosts against the same bare mpirun: a rank that exits 1 (from its
   exit to the job's end; target: at most 0.5 s more than mpirun) and a SIGTERM to the launcher
   (until the job's end, and whether every rank's SIGTERM handler ran; target: all did).

    python benchmarks/launch.py            # writes results/launch.{json,md}
"""

from __future__ import annotations

import argparse
import os
import re
import signal
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


class _Bare:
    """A bare `mpirun` of the cluster's hostfile from the launcher namespace, with the ssh setup
    `mpirt launch` makes (so only what mpirt adds differs)."""

    def __init__(self, c: Cluster, tmp: Path, names: list[str]):
        self.c, self.names, self.impl = c, names, detect(find_mpirun())
        state = tmp / "bare"
        state.mkdir(exist_ok=True)
        self.hostfile = tmp / "hostfile"
        self.hostfile.write_text("".join(f"{n} slots=1\n" for n in names))
        self.setup = prepare(c.secret, state / "ssh", 2222)
        self.env = {**os.environ, **ssh_env(self.impl, self.setup.ssh_args())}

    def start(self, program: list[str], **kw) -> subprocess.Popen:
        argv = build_argv(self.impl, len(self.names), str(self.hostfile), program, uid=os.getuid(), tag_output=True,
                          export=["PATH"])
        return self.c.run_in("launcher", argv, env=self.env, **kw)

    def close(self) -> None:
        """Its shared connections must not carry the next run (untimed)."""
        for n in self.names:  # in the launcher namespace: the socket name hashes its host name
            self.c.run_in("launcher", ["ssh", *self.setup.ssh_args(), "-O", "stop", n],
                          stderr=subprocess.DEVNULL).wait()


def _cluster(tmp: Path) -> tuple[Cluster, list[str]]:
    tmp.mkdir()
    c = Cluster(tmp, 4)
    names = [f"w{i}" for i in range(4)]
    for n in names:
        c.start_worker(n)
    for n in names:
        c.wait_listening(n)
    return c, names


GUARDED = "mpirt, guarded (python -m mpirt)"


def launch_overhead(tmp: Path, reps: int) -> dict:
    c, names = _cluster(tmp)
    try:
        program = [sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]
        bare = _Bare(c, tmp, names)

        def run_bare():
            if bare.start(program, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait() != 0:
                sys.exit("bare mpirun failed")

        def run_mpirt(*options):
            p = c.start_launch(names, program, *options)
            out, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"mpirt launch failed:\n{err}")

        # the launcher's own cost: the program as given (--no-guard), as bare mpirun runs it; and
        # what a user gets by default, the program under python -m mpirt (launcher.guard)
        runs = {"mpirun": run_bare, "mpirt": lambda: run_mpirt("--no-guard"), GUARDED: run_mpirt}
        samples = {name: [] for name in runs}
        run_bare(), bare.close(), run_mpirt()  # warm caches (imports, host keys, DNS)
        for i in range(reps):
            for name, fn in (list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]):
                samples[name].append(timed(fn))
                bare.close()
        med = {k: statistics.median(v) for k, v in samples.items()}
        key = {"case": "launch: mpi4py init + barrier + finalize", "hosts": 4, "ranks": 4}
        return [{"kind": "launch", "key": {**key, "system": "mpirun"}, "metrics": {"seconds": stat(samples["mpirun"])}}] + [
            {"kind": "launch", "key": {**key, "system": name}, "metrics": {"seconds": stat(samples[name])},
             "derived": {"overhead_s": med[name] - med["mpirun"], "vs_mpirun": med[name] / med["mpirun"]}}
            for name in ("mpirt", GUARDED)]
    finally:
        c.close()


# Rank 3 fails after a barrier (printing when; os._exit, as a crash: sys.exit would wait in
# MPI_Finalize for the others); the others wait in a second barrier.
FAILING = ("import os, time\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\nc.Barrier()\n"
           "if c.Get_rank() == 3:\n    print(f'failing at {time.time()}', flush=True)\n    os._exit(1)\nc.Barrier()\n")
# Every rank notes in DIR that it runs; on SIGTERM it works WORK seconds (a checkpoint), notes
# when its SIGTERM came, and exits.
STOPPING = ("import os, signal, sys, time\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
            "def stop(*_):\n    came = time.time()\n    time.sleep(float(sys.argv[2]))\n"
            "    with open(os.path.join(sys.argv[1], f'stopped-{c.Get_rank()}'), 'w') as f:\n"
            "        f.write(str(came))\n    os._exit(143)\n"
            "signal.signal(signal.SIGTERM, stop)\nc.Barrier()\n"
            "open(os.path.join(sys.argv[1], f'running-{c.Get_rank()}'), 'w').close()\n"
            "while True:\n    time.sleep(0.05)\n")
WORK_S = 3.0


def _failure(p: subprocess.Popen) -> tuple[float]:
    """Seconds from rank 3's failure to the end of the job."""
    out, _ = p.communicate()
    ended = time.time()
    said = re.search(r"failing at (\d+\.\d+)", out)  # one write: Open MPI 4 tags each piece
    if not said:
        sys.exit(f"rank 3 never said it was failing:\n{out}")
    return (ended - float(said[1]),)


def _placed(err: str) -> int:
    """How many ranks the launcher said the place of, after the stop (none from a bare mpirun)."""
    lines = err.split("where the ranks were when it was stopped:\n", 1)[1:]
    ranks = 0
    for line in lines[0].splitlines() if lines else []:
        said = re.match(r"    ranks? ([\d, -]+) \(", line)
        if not said:
            break
        for part in said[1].split(", "):
            first, _, last = part.partition("-")
            ranks += int(last or first) - int(first) + 1
    return ranks


def _stop(p: subprocess.Popen, marks: Path) -> tuple[float, int, float | None, int]:
    """Once every rank runs, SIGTERM to ``p``: seconds until the job has ended, how many ranks'
    SIGTERM handlers finished their work, when the last of those got its SIGTERM, and how many
    ranks' places the launcher said."""
    deadline = time.time() + 60
    while len(list(marks.glob("running-*"))) < 4:
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"the ranks never all started:\n{''.join(p.communicate())}")
        time.sleep(0.02)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    ended = time.time()
    came = [float(f.read_text()) for f in marks.glob("stopped-*")]
    for f in marks.iterdir():
        f.unlink()
    return ended - t0, len(came), max(came) - t0 if came else None, _placed(err)


def ending(tmp: Path, reps: int) -> list[dict]:
    """How a job ends: a failing rank, and a stop (SIGTERM, as from a deleted pod)."""
    c, names = _cluster(tmp)
    try:
        bare = _Bare(c, tmp, names)
        marks = tmp / "marks"
        marks.mkdir()
        fail, stop = [sys.executable, "-c", FAILING], [sys.executable, "-c", STOPPING, str(marks), str(WORK_S)]
        # -P: the installed mpirt, with its compiled stop handler, not this checkout's source tree
        armed = [sys.executable, "-P", "-m", "mpirt", "-c", STOPPING, str(marks), str(WORK_S)]
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        runs = {
            ("failure", "mpirun"): lambda: _failure(bare.start(fail, **out)),
            ("failure", "mpirt"): lambda: _failure(c.start_launch(names, fail, "--no-guard")),
            ("stop", "mpirun"): lambda: _stop(bare.start(stop, **out), marks),
            ("stop", "mpirt"): lambda: _stop(c.start_launch(names, stop, "--no-guard"), marks),
            ("stop", "mpirt, python -m mpirt"): lambda: _stop(c.start_launch(names, armed), marks),
        }
        seconds = {k: [] for k in runs}
        handlers = {k: [] for k in runs}
        for i in range(reps):
            for k, fn in (runs.items() if i % 2 == 0 else reversed(runs.items())):
                took, *more = fn()
                seconds[k].append(took)
                if more:
                    handlers[k].append(more)
                bare.close()
        cases = {"failure": "failure: a rank exits 1, until the job has ended",
                 "stop": f"stop: SIGTERM to mpirun or mpirt launch, ranks needing {WORK_S:g} s, until the job has ended"}
        rows = []
        for (case, system), samples in seconds.items():
            row = {"kind": "launch", "key": {"case": cases[case], "hosts": 4, "ranks": 4, "system": system},
                   "metrics": {"seconds": stat(samples)}}
            if handlers[(case, system)]:
                came = [t for _, t, _ in handlers[(case, system)] if t is not None]
                row["derived"] = {"sigterm_handlers_done_min": min(n for n, _, _ in handlers[(case, system)]),
                                  "last_sigterm_after_s": statistics.median(came) if came else None,
                                  "handler_work_s": WORK_S,
                                  "ranks_placed_min": min(n for _, _, n in handlers[(case, system)])}
            rows.append(row)
        return rows
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
    guarded = rows[("launch", GUARDED)]
    t = doc["config"]["targets"]
    over = ours["derived"]["overhead_s"]
    med = ready["metrics"]["seconds"]["median"]
    env = doc["env"]

    def median(case: str, system: str) -> float:
        return rows[(case, system)]["metrics"]["seconds"]["median"]

    def ran(system: str) -> str:
        d = rows[("stop", system)]["derived"]
        came = d["last_sigterm_after_s"]
        return f"{d['sigterm_handlers_done_min']}/4 done" + (f", SIGTERM after {came:.2f} s" if came is not None else "")

    placed = rows[("stop", "mpirt, python -m mpirt")]["derived"]["ranks_placed_min"]

    fail_over = median("failure", "mpirt") - median("failure", "mpirun")
    n = rows[("failure", "mpirt")]["metrics"]["seconds"]["n"]
    handled = all(rows[("stop", system)]["derived"]["sigterm_handlers_done_min"] == 4
                  for system in ("mpirt", "mpirt, python -m mpirt"))
    return "\n".join([
        "# Launcher overhead, readiness, and how jobs end, on this machine", "",
        f"{env['cpu']['model']}, {env['cpu']['cores']} cores; {env['mpi']['library']}; taken {env['timestamp']}  ",
        f"Command: `{env['command']}`", "",
        "| measurement | mpirt | baseline | difference | ratio | target |", "|---|---:|---:|---:|---:|---|",
        f"| launch, {ours['key']['hosts']} namespace hosts, {ours['key']['ranks']} ranks (median of "
        f"{ours['metrics']['seconds']['n']}) | {ours['metrics']['seconds']['median']:.2f} s | bare mpirun "
        f"{bare['metrics']['seconds']['median']:.2f} s | {over:+.2f} s | {ours['derived']['vs_mpirun']:.2f}x | "
        f"<= {t['overhead_s']} s: {'met' if over <= t['overhead_s'] else 'NOT met'} |",
        f"| the same program under `python -m mpirt`, as `mpirt launch` runs a Python program by default (the "
        f"guard) | {guarded['metrics']['seconds']['median']:.2f} s | bare mpirun "
        f"{bare['metrics']['seconds']['median']:.2f} s | {guarded['derived']['overhead_s']:+.2f} s | "
        f"{guarded['derived']['vs_mpirun']:.2f}x | |",
        f"| readiness of {ready['key']['hosts']} hosts (median of {ready['metrics']['seconds']['n']}) | {med:.2f} s | | | | "
        f"<= {t['readiness_s']} s: {'met' if med <= t['readiness_s'] else 'NOT met'} |",
        f"| a rank fails: from its exit to the job's end, 4 hosts (median of {n}) | {median('failure', 'mpirt'):.2f} s "
        f"| bare mpirun {median('failure', 'mpirun'):.2f} s | {fail_over:+.2f} s | "
        f"{median('failure', 'mpirt') / median('failure', 'mpirun'):.2f}x | <= {t['failure_overhead_s']} s: "
        f"{'met' if fail_over <= t['failure_overhead_s'] else 'NOT met'} |",
        f"| SIGTERM, each rank's handler working {WORK_S:g} s (a checkpoint): until the job's end, 4 hosts "
        f"(median of {n}); handlers that finished (fewest in a run); when the last rank got SIGTERM | "
        f"{median('stop', 'mpirt'):.2f} s, {ran('mpirt')} | bare mpirun {median('stop', 'mpirun'):.2f} s, "
        f"{ran('mpirun')} | {median('stop', 'mpirt') - median('stop', 'mpirun'):+.2f} s | "
        f"{median('stop', 'mpirt') / median('stop', 'mpirun'):.2f}x | every handler: {'met' if handled else 'NOT met'} |",
        f"| the same ranks under `python -m mpirt`: each writes its stack dump before its SIGTERM; ranks whose "
        f"place the launcher said (fewest in a run) | {median('stop', 'mpirt, python -m mpirt'):.2f} s, "
        f"{ran('mpirt, python -m mpirt')}, {placed}/4 placed | mpirt launch, plain ranks, "
        f"{median('stop', 'mpirt'):.2f} s | "
        f"{median('stop', 'mpirt, python -m mpirt') - median('stop', 'mpirt'):+.2f} s | "
        f"{median('stop', 'mpirt, python -m mpirt') / median('stop', 'mpirt'):.2f}x | every place: "
        f"{'met' if placed == 4 else 'NOT met'} |",
        "",
        "The launch includes everything `mpirt launch` adds: Python start-up, MPI detection, the hostfile, the "
        "ssh setup and the readiness check of every host, and the output relay; the rows against bare mpirun "
        "run the program as given (`--no-guard`), and the guarded row adds what `python -m mpirt` costs each "
        "rank at start. A stop with `mpirt launch` "
        "gives every rank SIGTERM itself (over ssh on the other hosts) and lets the job end within `--grace` "
        "(10 s); bare Open MPI 4 mpirun sends SIGTERM after its 1 s kill timeout and SIGKILL 1 s later, whatever "
        "the ranks are doing. Once a rank has ended, Open MPI 4 takes 2 s to tear the job down either way. Before the launcher signalled the ranks itself, a "
        "failing rank took about 9 s to end a job under Open MPI 4 (the kill timeout was set to half of `--grace`), "
        "and every stop about `--grace` + 2 s. Under `python -m mpirt` the launcher first has every rank write "
        "its stack dump (at most 2 s), then sends SIGTERM: a rank with its own SIGTERM handler, as here, "
        "used to leave no dump at all, its handler replacing the one that wrote it.", ""])


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
        rows = launch_overhead(Path(tmp) / "launch", args.reps) + readiness(Path(tmp), args.hosts, args.reps) + \
            ending(Path(tmp) / "ending", args.reps)
    impl = detect(find_mpirun())
    hosts = {"count": 4, "slots": 4, "names": [f"w{i}" for i in range(4)], "oversubscribed": False, "nodes_seen": 4}
    env = environment.collect(impl=impl, hosts=hosts, launcher_added={}, rank_view={"mpi_library": impl.label},
                              argv=["python", "benchmarks/launch.py", *sys.argv[1:]])
    targets = {"overhead_s": 0.5, "readiness_s": 2.0, "failure_overhead_s": 0.5}
    doc = schema.document("launch", env, {"reps": args.reps, "readiness_hosts": args.hosts, "targets": targets},
                          rows)
    text = markdown(doc)
    schema.publish(doc, args.out / "launch.json", text)
    return 0 if "NOT met" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
