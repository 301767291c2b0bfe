"""Run mpirun and stay in charge of it: forward SIGTERM/SIGINT, stop the whole process tree
after a grace period, return its exit code, and explain a failure from the ranks' error
records (``mpirt.errors``): the earliest failing rank, its host, exception and last lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from mpirt import errors


def exit_code(returncode: int) -> int:
    """A shell-style exit status: 128 + signal number for a process killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(argv: list[str], env: dict[str, str], grace_s: float) -> tuple[int, int]:
    """Run ``argv``; returns (exit code, the signal that asked us to stop or 0)."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    stopping = threading.Event()
    stopped_by = 0

    def forward(signum, _frame):
        nonlocal stopped_by
        if proc.poll() is not None:
            return
        proc.send_signal(signum)
        if not stopping.is_set():
            stopping.set()
            stopped_by = signum
            # mpirun stops its ranks within the grace period itself; this is the backstop
            threading.Timer(grace_s + 2, _kill_group, args=(proc,)).start()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = exit_code(proc.wait())
        return code, stopped_by
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _signal_name(code: int) -> str:
    if code > 128:
        try:
            return f" ({signal.Signals(code - 128).name})"
        except ValueError:
            return ""
    return ""


def root_cause(code: int, error_dir: str, tail: int = 12) -> str:
    """What to tell the user when the job exited with ``code``."""
    records = errors.read_all(error_dir)
    if not records:
        return (f"mpirt: job failed: mpirun exited {code}{_signal_name(code)}; no rank left an error record "
                "(a rank was killed by a signal or exited without a Python exception; see its output above)")
    first = records[0]
    lines = first.get("traceback", "").rstrip().splitlines()[-tail:]
    others = [r["rank"] for r in records[1:]]
    text = [f"mpirt: job failed (exit {code}{_signal_name(code)}). Root cause (first failure): rank {first['rank']} "
            f"on {first['host']} (pid {first['pid']}): {first['exception']}: {first['message']}"]
    text += ["    " + line for line in lines]
    if others:
        text.append(f"  later failures on rank(s) {', '.join(map(str, others))}; records in {error_dir}")
    return "\n".join(text)


def report(code: int, error_dir: str, stopped_by: int = 0) -> int:
    """Say how the job ended; returns the launcher's exit status (128 + signal when stopped)."""
    if stopped_by:
        name = signal.Signals(stopped_by).name
        print(f"mpirt: stopped by {name} (forwarded to the ranks); mpirun exited {code}", file=sys.stderr, flush=True)
        return 128 + stopped_by
    if code != 0:
        print(root_cause(code, error_dir), file=sys.stderr, flush=True)
    return code
