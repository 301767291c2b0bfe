"""`mpirt worker`: a hardened sshd in the foreground, as root or as any UID.

Everything sshd needs lives in a private state directory of our own, so read-only Secret
mounts, missing /etc/ssh host keys and odd file modes do not matter:
- our sshd_config: public-key authentication only, no forwarding of any kind, only the
  mounted authorized_keys (copied), no PAM (so it runs without root), a PidFile we can write;
- host keys from the Secret (``ssh_host_*_key``) so the launcher can pin them, else generated
  once (kept across restarts of the container);
- a UID with no passwd entry (OpenShift) gets one through nss_wrapper: a passwd and group
  file in the state directory, preloaded into sshd and, through SetEnv, into every session;
- sessions get this container's environment (``session_environment``): ``orted`` and
  Python are found over non-interactive ssh, and ranks see what the pod spec set for the
  worker (HF_HOME, a Secret's token, NCCL_* for this host), as a process in this container
  would; only what a login sets for itself is left out.
sshd runs as our child: we reap orphans (we may be PID 1) and restart sshd if it dies on its
own. A SIGTERM (the pod is being deleted, evicted or drained) first stops the ranks running
here, as the launcher would, then sshd (``_Drain``).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from launcher import fleet, limits, ranks
from launcher.ssh import SshSetupError, private_dir, state_default, write_private

PRIVSEP_DIR = "/run/sshd"
_NAME = re.compile(r"^[-._A-Za-z][-._A-Za-z0-9]*$")  # what Kubernetes allows in a container's env
NSS_WRAPPER_PATHS = ("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so", "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
                     "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so")


@dataclass(frozen=True)
class WorkerConfig:
    port: int = 2222
    ssh_dir: str = "/root/.ssh"
    state_dir: str = ""  # default: $TMPDIR (else /tmp)/mpirt-sshd-<uid>
    listen: str = "0.0.0.0"
    sshd: str = "/usr/sbin/sshd"
    check_only: bool = False  # write everything, run `sshd -t`, exit
    grace_s: float = 10.0  # on SIGTERM, how long this host's ranks may take to end (launcher.sshd._Drain)


def state_path(cfg: WorkerConfig) -> Path:
    return Path(cfg.state_dir) if cfg.state_dir else state_default("mpirt-sshd")


def _host_keys(ssh_dir: Path, state: Path, env: dict[str, str]) -> list[Path]:
    keys = []
    for src in sorted(ssh_dir.glob("ssh_host_*_key")):
        dst = state / src.name
        write_private(dst, src.read_bytes())
        keys.append(dst)
    if keys:
        return keys
    generated = state / "ssh_host_ed25519_key"
    if not generated.exists():
        made = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mpirt-worker", "-f",
                               str(generated)], capture_output=True, text=True, env=env)
        if made.returncode != 0:
            raise SshSetupError(f"ssh-keygen could not make a host key in {state}: {made.stderr.strip()}")
    return [generated]


def nss_wrapper_env(state: Path) -> dict[str, str]:
    """Variables that give this UID a passwd entry, when it has none; {} when it has one."""
    uid, gid = os.getuid(), os.getgid()
    try:
        pwd.getpwuid(uid)
        return {}
    except KeyError:
        pass
    lib = next((p for p in NSS_WRAPPER_PATHS if Path(p).exists()), None)
    if lib is None:
        raise SshSetupError(f"uid {uid} has no passwd entry and nss_wrapper is not installed; install libnss-wrapper "
                            "in the image (or run with a uid that /etc/passwd lists)")
    home = os.environ.get("HOME") or str(state)
    passwd = state / "passwd"
    group = state / "group"
    base = Path("/etc/passwd").read_text() if Path("/etc/passwd").exists() else ""
    write_private(passwd, (base + f"mpirt:x:{uid}:{gid}:mpirt worker:{home}:/bin/sh\n").encode())
    base_g = Path("/etc/group").read_text() if Path("/etc/group").exists() else ""
    write_private(group, (base_g + f"mpirt:x:{gid}:\n").encode())
    os.chmod(passwd, 0o644)
    os.chmod(group, 0o644)
    return {"LD_PRELOAD": lib, "NSS_WRAPPER_PASSWD": str(passwd), "NSS_WRAPPER_GROUP": str(group)}


# What a login sets for itself: sshd (the user's identity, the client's connection, the
# terminal) and the shell. SHLVL also comes from the launcher's probe session (AcceptEnv),
# which a SetEnv would override.
LOGIN_OWN = frozenset({"HOME", "USER", "LOGNAME", "SHELL", "MAIL", "TERM", "PWD", "OLDPWD", "SHLVL", "_",
                       "HOSTNAME"})


def session_environment(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(what every ssh session gets from this container's environment, names left out because
    sshd_config cannot carry them): everything but what a login sets for itself."""
    kept, skipped = {}, []
    for name, value in env.items():
        if name in LOGIN_OWN or name.startswith("SSH_") or not _NAME.match(name):
            continue
        if "\n" in value or "\r" in value:
            skipped.append(name)
        else:
            kept[name] = value
    return kept, sorted(skipped)


def setenv_line(values: Mapping[str, str]) -> str:
    """One ``SetEnv`` line (sshd reads only its first), in the order given, every value quoted
    as sshd's argv_split reads it: inside double quotes a backslash escapes only ``\\``,
    ``"`` and ``'``."""
    quoted = ('"' + f"{k}={v}".replace("\\", "\\\\").replace('"', '\\"') + '"' for k, v in values.items())
    return "SetEnv " + " ".join(quoted)


def write_config(cfg: WorkerConfig, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """Write the state directory; returns (sshd_config path, extra environment for sshd)."""
    if not 0 < cfg.port < 65536:
        raise SshSetupError(f"--port {cfg.port} is not a TCP port")
    ssh_dir = Path(cfg.ssh_dir)
    auth = ssh_dir / "authorized_keys"
    if not auth.is_file():
        raise SshSetupError(f"{auth} not found: mount the job's ssh Secret at {ssh_dir} (sshAuthMountPath) or "
                            "point --ssh-dir (MPIRT_SSH_DIR) at it")
    state = private_dir(state_path(cfg))
    keys_copy = state / "authorized_keys"
    try:
        keys = auth.read_bytes()
    except OSError as e:
        raise SshSetupError(f"cannot read {auth}: {e.strerror}; the pod's user (uid {os.getuid()}, gid {os.getgid()}) "
                            "needs read access: set the pod's fsGroup, or mount the Secret 0640/0644") from e
    write_private(keys_copy, keys)
    nss = nss_wrapper_env(state)
    host_keys = _host_keys(ssh_dir, state, {**env, **nss})
    ours = dict(nss)
    found = fleet.local(socket.gethostname(), Path(env.get("MPIRT_SYSFS_ROOT") or "/"), env=env)
    if found.probe:  # read by the launcher during its readiness check (fleet.probe_command)
        write_private(state / "probe.json", json.dumps(fleet.to_json(found)).encode())
        ours["MPIRT_PROBE"] = str(state / "probe.json")
    if found.oom:
        ours["MPIRT_OOM_FILE"] = found.oom.path  # read again at each launch: kills since then are the job's
    container, skipped = session_environment(env)
    if "LD_PRELOAD" in ours and container.get("LD_PRELOAD") not in (None, "", ours["LD_PRELOAD"]):
        ours["LD_PRELOAD"] += ":" + container["LD_PRELOAD"]  # the container's preload (jemalloc...) stays
    if skipped:
        print(f"mpirt worker: not passed to ssh sessions (sshd_config cannot hold a line break): "
              f"{', '.join(skipped)}", file=sys.stderr, flush=True)
    lines = [
        "# written by mpirt worker",
        f"Port {cfg.port}",
        f"ListenAddress {cfg.listen}",
        *(f"HostKey {k}" for k in host_keys),
        f"PidFile {state / 'sshd.pid'}",
        f"AuthorizedKeysFile {keys_copy}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "GatewayPorts no",
        "PermitUserEnvironment no",
        # The launcher's probe session sends SHLVL=1 so bash skips ~/.bashrc there (a conda or
        # pyenv init in it costs 0.5 s); mpirun's sessions send nothing and keep the user's rc.
        "AcceptEnv SHLVL",
        "PrintMotd no",
        "PrintLastLog no",
        "MaxStartups 200:30:1000",
        "MaxSessions 200",
        "ClientAliveInterval 5",
        "ClientAliveCountMax 3",
        "LogLevel INFO",
    ]
    session = {**container, **ours}
    if session:
        lines.append(setenv_line(session))
    config = state / "sshd_config"
    write_private(config, ("\n".join(lines) + "\n").encode())
    return config, nss


class _Wake(Exception):
    pass


# After its ranks have ended, how long sshd may go on serving the sessions still open: the
# launcher fetching their error records and stack dumps.
LINGER_S = 5.0


class _Drain:
    """A worker told to stop (a pod's SIGTERM): every rank its sshd started gets SIGTERM at
    once, then up to ``grace_s`` to end (SIGKILL after), while sshd serves on; then it waits
    for the open sessions to close, LINGER_S at most. Exiting at once, as PID 1 of the
    container, would kill every rank in it with SIGKILL: no checkpoint, no stack dump."""

    def __init__(self, grace_s: float):
        self.grace_s, self.started, self.left, self.since, self.ended = grace_s, False, [], 0.0, None

    def begin(self) -> None:
        if self.started:
            return
        self.started, self.since = True, time.monotonic()
        self.left = ranks.send(ranks.find(ranks.table(), below=os.getpid()))
        if self.left:
            print(f"mpirt worker: stopping: SIGTERM to {len(self.left)} rank{'s' if len(self.left) > 1 else ''} here; "
                  f"sshd serves on while they finish (SIGKILL after {self.grace_s:g} s)", file=sys.stderr, flush=True)
        else:
            self.ended = self.since - LINGER_S  # nothing ran here: no one to wait for

    def done(self, sshd_pid: int) -> bool:
        now = time.monotonic()
        if self.ended is None:
            self.left = [pid for pid in self.left if ranks.alive(pid)]
            if self.left and now - self.since < self.grace_s:
                return False
            if self.left:
                print(f"mpirt worker: {len(self.left)} rank(s) still running after {self.grace_s:g} s; SIGKILL",
                      file=sys.stderr, flush=True)
                ranks.send(self.left, signal.SIGKILL)
            self.ended = now
        return not ranks.children(sshd_pid) or now - self.ended >= LINGER_S


def run(cfg: WorkerConfig) -> int:
    sshd = shutil.which(cfg.sshd) if not os.path.isabs(cfg.sshd) else cfg.sshd
    if not sshd or not os.access(sshd, os.X_OK):
        raise SshSetupError(f"sshd not found at {cfg.sshd!r}; install openssh-server or give --sshd")
    if os.getuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
        try:  # a root sshd insists on its (empty) privilege separation directory
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        except OSError as e:
            raise SshSetupError(f"sshd as root needs {PRIVSEP_DIR} and it cannot be created ({e.strerror}); "
                                "make /run writable in the image") from e
    config, extra = write_config(cfg, dict(os.environ))
    env = {**os.environ, **extra}
    test = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True, env=env)
    if test.returncode != 0:
        raise SshSetupError(f"sshd rejected the generated config {config}: {test.stderr.strip()}")
    if cfg.check_only:
        print(f"mpirt worker: {config} is valid (port {cfg.port})")
        return 0
    print(f"mpirt worker: sshd on port {cfg.port}, uid {os.getuid()}, config {config}", file=sys.stderr, flush=True)
    ranks.become_subreaper()  # ranks whose daemon died stay below us, where a stop finds them
    limits.raise_open_files()  # the ranks started through sshd inherit it
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], env=env)
    drain = _Drain(cfg.grace_s)
    blocking = False

    def stop(_signum, _frame):
        drain.begin()
        if blocking:  # wake the wait below (a handler that returns would let it go on waiting)
            raise _Wake

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts: list[float] = []
    sshd_told = sshd_gone = False
    while True:
        if drain.started and not sshd_told and drain.done(proc.pid):
            if sshd_gone:
                return 0
            sshd_told = True
            ranks.send([proc.pid])
        try:
            blocking = not drain.started
            pid, status = os.waitpid(-1, 0 if blocking else os.WNOHANG)  # also reaps orphans reparented to us
        except _Wake:
            continue
        except ChildProcessError:
            if not drain.started or sshd_told:
                return 0
            pid = 0
        finally:
            blocking = False
        if pid == 0:
            time.sleep(0.2)
            continue
        if pid != proc.pid:
            continue
        if drain.started:
            if sshd_told:
                return 0
            sshd_gone = True  # it died while its ranks finish: no restart now
            continue
        code = os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 5:
            print(f"mpirt worker: sshd exited {code} six times in a minute; giving up", file=sys.stderr, flush=True)
            return 1
        print(f"mpirt worker: sshd exited {code}; restarting it", file=sys.stderr, flush=True)
        time.sleep(1)
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], env=env)
