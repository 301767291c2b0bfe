"""Wait until every host answers: DNS, then TCP, then ssh authentication, under one deadline.

All hosts are checked in parallel (threads; each check is mostly waiting). A host moves
through the stages and retries the one it is stuck at, so the report says how far each got:
no DNS record (pod not scheduled, gang scheduling waiting, headless Service without the pod
yet), port closed (sshd not started, wrong port), or authentication refused (wrong key, wrong
user). Authentication is checked with paramiko against the same key and pinned host keys that
mpirun's ssh will use.
"""

from __future__ import annotations

import os
import pwd
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import paramiko

from launcher.ssh import SshSetup

CAUSES = {
    "dns": "no DNS record: the pod is not scheduled yet (gang scheduling or quota waiting), not Ready while the "
           "headless Service publishes only Ready pods, or the name is wrong",
    "tcp": "nothing accepts ssh on the port: sshd is not started in that pod (use `mpirt worker` as the worker "
           "command) or the port differs (--ssh-port / MPIRT_SSH_PORT)",
    "auth": "ssh refused us: the worker does not have this job's public key in authorized_keys (another Secret "
            "or sshAuthMountPath), the user differs, or its host key is not the pinned one",
}


@dataclass(frozen=True)
class Readiness:
    host: str
    stage: str  # ready | dns | tcp | auth (the stage it is stuck at)
    detail: str
    seconds: float
    output: str = ""  # what ``command`` printed on the host, once it was ready


def username() -> str:
    """The user to log in as: ours, or the name nss_wrapper gives a UID without an entry."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "mpirt"


def _run(transport: paramiko.Transport, command: str, timeout: float) -> str:
    """``command``'s standard output over the authenticated connection ('' if it fails)."""
    chan = transport.open_session(timeout=timeout)
    chan.settimeout(timeout)
    chan.exec_command(command)
    out = b""
    try:
        while chunk := chan.recv(65536):
            out += chunk
        ok = chan.recv_exit_status() == 0
    except (TimeoutError, socket.timeout):
        ok = False
    return out.decode(errors="replace") if ok else ""


def _auth(sock: socket.socket, host: str, setup: SshSetup, pkey, timeout: float, user: str,
          command: str | None = None) -> str:
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.auth_timeout = timeout
        transport.start_client(timeout=timeout)
        if setup.known_hosts is not None:
            server = transport.get_remote_server_key()
            pinned = [ln.split()[1:3] for ln in setup.known_hosts.read_text().splitlines() if len(ln.split()) >= 3]
            if [server.get_name(), server.get_base64()] not in pinned:
                raise paramiko.SSHException(f"host key {server.get_name()} of {host} is not the pinned one")
        transport.auth_publickey(user, pkey)
        if not transport.is_authenticated():
            raise paramiko.AuthenticationException("not authenticated")
        return _run(transport, command, timeout) if command else ""
    finally:
        transport.close()


def _attempt(host: str, setup: SshSetup, pkey, user: str, remaining: float,
             command: str | None = None) -> tuple[str, str]:
    """One pass through the stages: ("ready", command's output) or (the stage that failed, why)."""
    try:
        addrs = socket.getaddrinfo(host, setup.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return "dns", f"no DNS record ({e.strerror})"
    try:
        sock = socket.create_connection(addrs[0][4][:2], timeout=max(0.1, min(3.0, remaining)))
    except ConnectionRefusedError:
        return "tcp", f"connection refused on port {setup.port}"
    except (TimeoutError, socket.timeout):
        return "tcp", f"no answer on port {setup.port}"
    except OSError as e:
        return "tcp", f"{e.strerror or e} (port {setup.port})"
    try:
        sock.settimeout(max(0.5, min(10.0, remaining)))
        output = _auth(sock, host, setup, pkey, max(0.5, min(10.0, remaining)), user, command)
    except paramiko.AuthenticationException:
        return "auth", f"public key refused for user {user!r}"
    except (paramiko.SSHException, EOFError, OSError) as e:
        return "auth", f"ssh handshake failed: {e or type(e).__name__}"
    finally:
        sock.close()
    return "ready", output


def check(host: str, setup: SshSetup, deadline: float, pkey, user: str, stop: threading.Event,
          command: str | None = None) -> Readiness:
    """Retry ``host`` with backoff (50 ms doubling to 1 s) until it is ready or the deadline."""
    t0, delay = time.monotonic(), 0.05
    while True:
        stage, detail = _attempt(host, setup, pkey, user, deadline - time.monotonic(), command)
        if stage == "ready":
            return Readiness(host, stage, "", time.monotonic() - t0, detail)
        if stop.is_set() or time.monotonic() + delay >= deadline:
            return Readiness(host, stage, detail, time.monotonic() - t0)
        stop.wait(delay)
        delay = min(delay * 2, 1.0)


def wait_ready(hosts: list[str], setup: SshSetup, wait_s: float,
               on_progress: Callable[[int, int], None] | None = None, user: str | None = None,
               command: str | None = None) -> list[Readiness]:
    """Readiness of every host (in the order given) within ``wait_s`` seconds in all; with
    ``command``, each host runs it on the connection that proved it ready (one handshake)."""
    if not hosts:
        return []
    pkey = paramiko.PKey.from_path(str(setup.key))
    user = user or username()
    deadline = time.monotonic() + wait_s
    stop = threading.Event()
    ready = 0
    lock = threading.Lock()

    def one(host: str) -> Readiness:
        nonlocal ready
        r = check(host, setup, deadline, pkey, user, stop, command)
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
