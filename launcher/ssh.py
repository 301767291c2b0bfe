"""The launcher's ssh client setup: a private copy of the mounted key and an ssh config of our own.

Secret mounts are read-only and their modes are whatever the operator and the pod's fsGroup
made them (0600, 0640, 0644); OpenSSH refuses a private key readable by others. So the key
is copied to a 0600 file in a private directory and every ssh we start reads our config
(``ssh -F``): that key only, the worker port, BatchMode, connection attempts and keepalives.
Host keys pinned in the Secret (``ssh_host_*_key.pub`` or ``known_hosts`` next to the key)
turn on StrictHostKeyChecking; without them host keys cannot be known in advance and are
not checked (the operators' own default).

Two choices make a launch fast. Connections are shared (ControlMaster): the one that proved a
host ready (launcher.ready) carries mpirun's ssh to that host too. Key exchange prefers
curve25519: OpenSSH 9's default, the post-quantum sntrup761 hybrid, costs about 0.15 s of CPU
per connection on each side, which is 6 s for 64 hosts on a 2-core launcher pod.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from launcher.mpi import TMP_FIX

KEY_NAMES = ("id_rsa", "id_ed25519", "id_ecdsa", "ssh-privatekey")
# Every OpenSSH since 7.4 knows these names (an unknown one is a config error); no sntrup761.
KEX = ("curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"
       "diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,"
       "diffie-hellman-group14-sha256")
# A socket path fits sun_path: 107 bytes and a NUL. ControlPath ends in %C, a 40-character
# hash, and a master first binds "<that path>.<16 random characters>", then renames it.
SOCKET_PATH_MAX = 107
MUX_NAME_LEN = 1 + 40 + 17


class SshSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class SshSetup:
    key: Path
    config: Path
    known_hosts: Path | None  # None: host keys are not checked
    port: int

    def ssh_args(self) -> list[str]:
        """Arguments every ssh call gets (the rest is in the config file)."""
        return ["-F", str(self.config)]


def state_default(name: str) -> Path:
    """A private directory's default place: under TMPDIR, else /tmp, named for this UID."""
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"{name}-{os.getuid()}"


def make_dir(path: Path, private: bool = False) -> Path:
    """``path`` made (0700 when ``private``); one that cannot be said with the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if private:
            os.chmod(path, 0o700)
    except OSError as e:
        raise SshSetupError(f"cannot make the {'private ' if private else ''}directory {path} ({e.strerror}): point "
                            f"--state-dir (MPIRT_STATE_DIR) at a writable directory, or {TMP_FIX}") from e
    return path


def private_dir(path: Path) -> Path:
    return make_dir(path, private=True)


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def find_key(ssh_dir: Path) -> Path:
    for name in KEY_NAMES:
        if (ssh_dir / name).is_file():
            return ssh_dir / name
    raise SshSetupError(f"no private key in {ssh_dir} (looked for {', '.join(KEY_NAMES)}); mount the job's ssh "
                        "Secret there or point --ssh-dir (MPIRT_SSH_DIR) at it")


def pinned_host_keys(ssh_dir: Path) -> list[str]:
    """known_hosts lines from the Secret: a ``known_hosts`` file, or host public keys that
    every worker serves (one Secret for the job), pinned for any host name."""
    lines = []
    known = ssh_dir / "known_hosts"
    if known.is_file():
        lines += [ln.strip() for ln in known.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for pub in sorted(ssh_dir.glob("ssh_host_*_key.pub")):
        fields = pub.read_text().split()
        if len(fields) >= 2:
            lines.append(f"* {fields[0]} {fields[1]}")
    return lines


def prepare(ssh_dir: Path, state_dir: Path, port: int, connect_timeout: int = 10) -> SshSetup:
    """Copy the key, write known_hosts (if pinned) and the ssh config under ``state_dir``."""
    if not 0 < port < 65536:
        raise SshSetupError(f"ssh port {port} is not a TCP port; use 2222 (the workers' default) or 22")
    src = find_key(ssh_dir)
    try:
        data = src.read_bytes()
    except OSError as e:
        raise SshSetupError(f"cannot read the private key {src}: {e.strerror}; the pod's user (uid {os.getuid()}) "
                            "needs read access (fsGroup or a 0640/0644 mount)") from e
    d = private_dir(state_dir)
    key = d / "id_key"
    write_private(key, data)
    pinned = pinned_host_keys(ssh_dir)
    known = None
    if pinned:
        known = d / "known_hosts"
        write_private(known, ("\n".join(pinned) + "\n").encode())
    check = (f"StrictHostKeyChecking yes\n  UserKnownHostsFile {known}" if known else
             "StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null")
    sockets = d / "mux"
    if len(str(sockets)) + MUX_NAME_LEN > SOCKET_PATH_MAX:  # a long --state-dir: a short private one
        sockets = Path(tempfile.gettempdir()) / f"mpirt-ssh-{hashlib.sha1(str(d).encode()).hexdigest()[:12]}"
    if len(str(sockets)) + MUX_NAME_LEN > SOCKET_PATH_MAX:
        raise SshSetupError(f"no directory for ssh's control sockets is short enough ({sockets}); set TMPDIR to a "
                            f"shorter one (at most {SOCKET_PATH_MAX - MUX_NAME_LEN} characters)")
    sockets = private_dir(sockets)
    config = d / "ssh_config"
    write_private(config, (
        "# written by mpirt launch\n"
        "Host *\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        f"  Port {port}\n"
        "  BatchMode yes\n"
        "  PasswordAuthentication no\n"
        "  KbdInteractiveAuthentication no\n"
        "  ConnectionAttempts 10\n"
        f"  ConnectTimeout {connect_timeout}\n"
        "  ServerAliveInterval 5\n"
        "  ServerAliveCountMax 3\n"
        f"  KexAlgorithms {KEX}\n"
        "  ControlMaster auto\n"
        f"  ControlPath {sockets}/%C\n"
        "  ControlPersist 30\n"
        "  ForwardAgent no\n"
        "  ForwardX11 no\n"
        "  LogLevel ERROR\n"
        f"  {check}\n").encode())
    return SshSetup(key, config, known, port)
