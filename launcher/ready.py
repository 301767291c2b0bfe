"""Wait until every host answers: DNS, then TCP, then ssh authentication, under one deadline.

All hosts are checked in parallel (threads; each check is mostly waiting). A host moves
through the stages and retries the one it is stuck at, so the report says how far each got:
no DNS record (pod not scheduled, gang scheduling waiting, headless Service without the pod
yet), port closed (sshd not started, wrong port), or authentication refused (wrong key, wrong
user, not the pinned host key).

Authentication is checked with the OpenSSH client and the config mpirun's ssh will use
(launcher.ssh), so a host that passes is one mpirun can reach. That config shares
connections: the connection that proved a host ready stays open (ControlPersist) and
mpirun's own ssh to that host runs over it without a second handshake. ``release`` lets
them go when the job is over.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from launcher.ssh import SshSetup

CAUSES = {
    "dns": "no DNS record: the pod is not scheduled yet (gang scheduling or quota waiting), not Ready while the "
           "headless Service publishes only Ready pods, or the name is wrong",
    "tcp": "nothing accepts ssh on the port: sshd is not started in that pod (use `mpirt worker` as the worker "
           "command) or the port differs (--ssh-port / MPIRT_SSH_PORT)",
    "auth": "ssh refused us: the worker does not have this job's public key in authorized_keys (another Secret "
            "or sshAuthMountPath), the user differs, or its host key is not the pinned one",
}

# What OpenSSH prints when it gives up (exit 255), and the stage and words for the report.
_SSH_ERRORS = (
    ("Permission denied", "auth", "public key refused for user {user!r}"),
    ("Host key verification failed", "auth", "its host key is not the pinned one"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "auth", "its host key is not the pinned one"),
    ("Could not resolve hostname", "dns", "no DNS record (ssh could not resolve it)"),
    ("Connection refused", "tcp", "connection refused on port {port}"),
    ("timed out", "tcp", "no answer on port {port}"),
    ("No route to host", "tcp", "no route to host (port {port})"),
    ("Network is unreachable", "tcp", "network is unreachable (port {port})"),
)


@dataclass(frozen=True)
class Readiness:
    host: str
    stage: str  # ready | dns | tcp | auth (the stage it is stuck at)
    detail: str
    seconds: float
    output: str = ""  # what ``command`` printed on the host, once it was ready


def username() -> str:
    """The user ssh logs in as: ours, or the name nss_wrapper gives a UID without an entry."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "mpirt"


def ssh_argv(setup: SshSetup, host: str, command: str | None, user: str | None, timeout: float) -> list[str]:
    """One ssh that authenticates and then runs ``command``, or (without one) leaves the
    shared connection open in the background and returns: no remote shell is started."""
    argv = ["ssh", *setup.ssh_args(), "-o", f"ConnectTimeout={max(1, int(timeout))}", "-o", "ConnectionAttempts=1",
            *(["-l", user] if user else [])]
    # SHLVL=1 (accepted by `mpirt worker`): bash then skips ~/.bashrc for the command
    return argv + (["-N", "-f", host] if command is None else ["-o", "SendEnv=SHLVL", host, command])


def diagnose(stderr: str, user: str, port: int) -> tuple[str, str]:
    """(stage, why) for an ssh that exited 255."""
    for needle, stage, why in _SSH_ERRORS:
        if needle in stderr:
            return stage, why.format(user=user, port=port)
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no message")
    return "auth", f"ssh handshake failed: {last}"


def _ssh(host: str, setup: SshSetup, user: str | None, remaining: float, command: str | None,
         env: dict | None) -> tuple[str, str]:
    with tempfile.TemporaryFile() as err:  # a pipe would be held open by the connection left in the background
        try:
            done = subprocess.run(ssh_argv(setup, host, command, user, min(10.0, remaining)),
                                  env={**(os.environ if env is None else env), "SHLVL": "1"},
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if command else subprocess.DEVNULL,
                                  stderr=err, timeout=max(1.0, min(30.0, remaining)))
        except subprocess.TimeoutExpired:
            return "auth", "ssh did not finish its handshake in time"
        except FileNotFoundError:
            return "auth", "no ssh client on PATH: install openssh-client in the image"
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if done.returncode == 255:
        return diagnose(stderr, user or username(), setup.port)
    # authenticated; a command that failed there leaves no output (the probe falls back)
    return "ready", done.stdout.decode(errors="replace") if command and done.returncode == 0 else ""


def _attempt(host: str, setup: SshSetup, user: str | None, remaining: float, command: str | None,
             env: dict | None) -> tuple[str, str]:
    """One pass through the stages: ("ready", command's output) or (the stage that failed, why).
    DNS is asked here; the TCP stage is ssh's own connect (a probe connection of ours would
    make every sshd fork and re-exec a child for nothing)."""
    try:
        socket.getaddrinfo(host, setup.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return "dns", f"no DNS record ({e.strerror})"
    return _ssh(host, setup, user, remaining, command, env)


def check(host: str, setup: SshSetup, deadline: float, user: str | None, stop: threading.Event,
          command: str | None = None, env: dict | None = None) -> Readiness:
    """Retry ``host`` with backoff (50 ms doubling to 1 s) until it is ready or the deadline."""
    t0, delay = time.monotonic(), 0.05
    while True:
        stage, detail = _attempt(host, setup, user, deadline - time.monotonic(), command, env)
        if stage == "ready":
            return Readiness(host, stage, "", time.monotonic() - t0, detail)
        if stop.is_set() or time.monotonic() + delay >= deadline:
            return Readiness(host, stage, detail, time.monotonic() - t0)
        stop.wait(delay)
        delay = min(delay * 2, 1.0)


def wait_ready(hosts: list[str], setup: SshSetup, wait_s: float,
               on_progress: Callable[[int, int], None] | None = None, user: str | None = None,
               command: str | None = None, env: dict | None = None) -> list[Readiness]:
    """Readiness of every host (in the order given) within ``wait_s`` seconds in all; with
    ``command``, each host runs it on the connection that proved it ready (one handshake).
    ``env`` is the ssh client's environment (nss_wrapper for a UID without a passwd entry)."""
    if not hosts:
        return []
    deadline = time.monotonic() + wait_s
    stop = threading.Event()
    ready = 0
    lock = threading.Lock()

    def one(host: str) -> Readiness:
        nonlocal ready
        r = check(host, setup, deadline, user, stop, command, env)
        if r.stage == "ready" and on_progress:
            with lock:
                ready += 1
                on_progress(ready, len(hosts))
        return r

    with ThreadPoolExecutor(max_workers=min(len(hosts), 128), thread_name_prefix="mpirt-ready") as pool:
        try:
            return list(pool.map(one, hosts))
        finally:
            stop.set()


def output_of(host: str, setup: SshSetup, command: str, env: dict | None = None, user: str | None = None,
              timeout: float = 10.0) -> str:
    """What ``command`` printed on ``host`` (over the connection kept open, if it still is),
    or "" when the host cannot be reached or the command failed."""
    stage, output = _ssh(host, setup, user, timeout, command, env)
    return output if stage == "ready" else ""


def release(hosts: list[str], setup: SshSetup, env: dict | None = None, user: str | None = None) -> None:
    """Let the shared connections the readiness check left open go: each stops taking new
    sessions and closes when its last one ends, so a job still running over it (another
    launch from this pod) is not cut off. A no-op where there is none."""
    def close(host: str) -> None:
        try:
            subprocess.run(["ssh", *setup.ssh_args(), *(["-l", user] if user else []), "-O", "stop", host], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except (subprocess.TimeoutExpired, OSError):  # it ends by itself (ControlPersist) anyway
            pass

    with ThreadPoolExecutor(max_workers=max(1, min(len(hosts), 32))) as pool:
        list(pool.map(close, hosts))


def report(results: list[Readiness], wait_s: float) -> str:
    """The table for hosts that are not ready, and what each stage usually means."""
    bad = [r for r in results if r.stage != "ready"]
    if not bad:
        return ""
    width = max(len(r.host) for r in bad)
    lines = [f"mpirt: {len(bad)} of {len(results)} hosts not ready after {wait_s:g} s:",
             f"  {'HOST'.ljust(width)}  STAGE  WHY"]
    lines += [f"  {r.host.ljust(width)}  {r.stage.ljust(5)}  {r.detail}" for r in bad]
    lines.append("likely cause:")
    lines += [f"  {stage}: {CAUSES[stage]}" for stage in ("dns", "tcp", "auth") if any(r.stage == stage for r in bad)]
    return "\n".join(lines)
