"""A small cluster on this machine: one network namespace per host (veth pair to a bridge,
its own address, /etc/hosts, host name and TMPDIR), each worker running `mpirt worker`, and a
launcher namespace running `mpirt launch`. Only these namespace addresses are ever targets.
Used by tests/cluster and benchmarks/launch.py (a module, not a conftest, so that it never
shadows tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

# Sets the UTS host name of a fresh UTS namespace, then becomes the real command (no shell).
SETHOST = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"
# Mounts a fresh tmpfs at $1, then becomes the command: a pod's own /tmp-like directory.
PRIVATE_TMP = 'mount -t tmpfs -o mode=1777 pod-tmp "$1" && shift && exec "$@"'
# Waits, then becomes the command: a pod whose sshd starts late.
LATER = "import os, sys, time; time.sleep(float(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])"
ENV_REPORT = Path(__file__).parent / "ranks" / "env_report.py"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_usable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "iproute2/unshare not installed"
    if not Path("/usr/sbin/sshd").exists():
        return "no /usr/sbin/sshd (openssh-server)"
    probe = f"mpirt-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as e:
        return f"cannot create a network namespace here: {e.stderr.strip()}"
    return None


class Cluster:
    def __init__(self, tmp: Path, workers: int, uid: int | None = None):
        self.tag = f"{os.getpid() % 10000}"
        self.tmp = tmp
        self.uid = uid
        self.bridge = f"mbr{self.tag}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.names = ["launcher"] + [f"w{i}" for i in range(workers)]
        self.addr = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(self.names)}
        self.procs: dict[str, subprocess.Popen] = {}
        # Each host's TMPDIR: the same path everywhere, a separate tmpfs in each host, as every
        # pod has its own /tmp; what a rank writes there stays on its host.
        self.pod_tmp = Path(f"/run/mpirt-pod-tmp-{self.tag}")
        self.pod_tmp.mkdir(exist_ok=True)
        self.secret = self._secret()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            ns, host_end, ns_end = self.ns(name), f"mv{self.tag}h{i}", f"mv{self.tag}n{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", ns_end, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n" +
                                       "".join(f"{self.addr[n]} {n}\n" for n in self.names))

    def ns(self, name: str) -> str:
        return f"mpirt{self.tag}-{name}"

    def _secret(self) -> Path:
        """The job Secret as mpi-operator mounts it, key 0640 as an fsGroup leaves it, directory read-only."""
        d = self.tmp / "secret"
        d.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "", "-f",
                        str(d / "id_rsa")], check=True)
        shutil.copy(d / "id_rsa.pub", d / "authorized_keys")
        os.chmod(d / "id_rsa", 0o640 if self.uid is None else 0o644)  # fsGroup 0640; 0644 for other users
        os.chmod(d / "authorized_keys", 0o644)
        os.chmod(d, 0o555)
        return d

    def run_in(self, name: str, argv: list[str], cgroup=None, **kw) -> subprocess.Popen:
        """Start ``argv`` in host ``name``'s network and UTS namespaces; with ``cgroup`` (the
        ``memory_cgroup`` fixture's), in that cgroup and seeing it, like a pod's container."""
        as_user = [] if self.uid is None else ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}",
                                               "--clear-groups"]
        inside = ["unshare", "--uts", sys.executable, "-c", SETHOST, name, "sh", "-c", PRIVATE_TMP, "sh",
                  str(self.pod_tmp), *as_user, *argv]
        cmd = ["ip", "netns", "exec", self.ns(name), *(cgroup.mounted(inside) if cgroup else inside)]
        kw["env"] = {**kw.get("env", os.environ), "TMPDIR": str(self.pod_tmp)}
        return subprocess.Popen(cgroup.wrap(cmd) if cgroup else cmd, start_new_session=True, **kw)

    def start_worker(self, name: str, delay: float = 0.0, cgroup=None, env: dict | None = None,
                     preexec_fn=None) -> None:
        """``mpirt worker`` on host ``name``; ``env``: what its pod spec would add;
        ``preexec_fn``: run in the pod's process first (a container's limits)."""
        argv = [sys.executable, "-m", "launcher.cli", "worker", "--ssh-dir", str(self.secret), "--state-dir",
                str(self.tmp / f"sshd-{name}")]
        if delay:
            argv = [sys.executable, "-c", LATER, str(delay), *argv]
        self.procs[name] = self.run_in(name, argv, cgroup, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)

    def limit_rate(self, rate: str) -> None:
        """Every link into a host limited to ``rate`` (e.g. 1gbit) by a token bucket (tc tbf):
        a slow TCP network, for the benchmarks."""
        for i in range(len(self.names)):
            subprocess.run(["tc", "qdisc", "add", "dev", f"mv{self.tag}h{i}", "root", "tbf", "rate", rate, "burst",
                            "256kb", "latency", "100ms"], check=True)

    def wait_listening(self, name: str, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            probe = subprocess.run(["ip", "netns", "exec", self.ns("launcher"), sys.executable, "-c",
                                    "import socket, sys; socket.create_connection((sys.argv[1], 2222), 1).close()",
                                    self.addr[name]], capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        pytest.fail(f"worker {name} never listened on 2222")

    def start_launch(self, hosts: list[str], command: list[str], *extra: str, env: dict | None = None,
                     slots: int | list[int] | None = 1) -> subprocess.Popen:
        """``mpirt launch`` in the launcher namespace over a hostfile of ``hosts`` (no counts
        with ``slots=None``, as Volcano writes them; a list: each host's own)."""
        hostfile = self.tmp / "hostfile"
        counts = slots if isinstance(slots, list) else [slots] * len(hosts)
        hostfile.write_text("".join(f"{h}{f' slots={n}' if n else ''}\n" for h, n in zip(hosts, counts)))
        argv = ["mpirt", "launch", "--hostfile", str(hostfile), "--ssh-dir", str(self.secret), "--state-dir",
                str(self.tmp / "launch"), *extra, "--", *command]
        return self.run_in("launcher", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **(env or {})})

    def launch(self, hosts: list[str], command: list[str], *extra: str, timeout: float = 180,
               env: dict | None = None, slots: int | list[int] | None = 1) -> subprocess.CompletedProcess:
        proc = self.start_launch(hosts, command, *extra, env=env, slots=slots)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"mpirt launch hung past {timeout} s:\n{out}\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def rank_env(self, hosts: list[str], names: tuple[str, ...], *extra: str,
                 python: str = sys.executable, slots: int = 1) -> dict[str, str]:
        """The variables among ``names`` that rank 0 sees under ``mpirt launch ...extra`` on
        ``hosts`` with ``slots`` ranks each (the launcher's defaults, from the hosts' probes and
        the ranks on each), for a benchmark's record; ``python``: one whose mpi4py matches the
        MPI launched."""
        proc = self.launch(hosts, [python, str(ENV_REPORT), *names], *extra, timeout=120, slots=slots)
        if proc.returncode != 0:
            sys.exit(f"mpirt launch cannot start on {len(hosts)} hosts:\n{proc.stderr[-3000:]}")
        # Tagged: the other ranks write their lines in pieces, which untagged output interleaves.
        line = next(x for x in proc.stdout.splitlines() if x.startswith("[0] [{"))
        return {k: v for k, v in json.loads(line[4:])[0].items() if k in names and v is not None}

    def kill_host(self, name: str) -> None:
        """Every process in the host's network namespace dies at once, as when a pod is lost."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns(name)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for name in self.names:
            self.kill_host(name)
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for i, name in enumerate(self.names):
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"mv{self.tag}h{i}"], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / self.ns(name), ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        os.chmod(self.secret, 0o755)
        self.pod_tmp.rmdir()


@contextmanager
def rate_limited(hosts: int, rate: str, prefix: str):
    """``hosts`` workers serving ssh, every link into a host limited to ``rate``: the benchmarks'
    slow network. Yields the cluster and the worker names."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        c = Cluster(Path(tmp), hosts)
        try:
            c.limit_rate(rate)
            names = c.names[1:]
            for w in names:
                c.start_worker(w)
            for w in names:
                c.wait_listening(w)
            yield c, names
        finally:
            c.close()


@pytest.fixture
def cluster(tmp_path):
    """Makes clusters of N worker hosts (optionally all under one UID); skips where namespaces cannot be made."""
    reason = namespaces_usable()
    if reason:
        pytest.skip(reason)
    made = []

    def make(workers: int = 3, uid: int | None = None) -> Cluster:
        base = tmp_path
        if uid is not None:  # a directory the unprivileged user can reach and write
            base = Path(tempfile.mkdtemp(prefix="mpirt-cluster-"))
            os.chown(base, uid, uid)
        c = Cluster(base, workers, uid)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
        if c.uid is not None:
            shutil.rmtree(c.tmp, ignore_errors=True)
