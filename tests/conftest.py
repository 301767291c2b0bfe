"""Shared fixtures: `mpiexec` starts real ranks on this machine through the same mpirun
argv the launcher builds, with a timeout so a hung job fails the test instead of CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.mpi import detect, find_mpirun, local_argv_here

RANKS = Path(__file__).parent / "mpi" / "ranks"

# Every Python the tests start (ranks, `python -m mpirt`, the CLI) imports the installed mpirt,
# with its compiled core, not the source tree that `python -m pytest` run from the checkout
# would put first on its path: that one has no core, and its ranks would quietly fall back to
# mpi4py.
os.environ["PYTHONSAFEPATH"] = "1"


class MpiRun:
    def __init__(self):
        self.impl = detect(find_mpirun())

    def __call__(self, np: int, argv: list[str], timeout: float = 180, env: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
        cmd = self.argv(np) + argv
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{e.stdout}\n{e.stderr}")
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def argv(self, np: int) -> list[str]:
        """mpirun's words for ``np`` ranks here, the command to follow."""
        return local_argv_here(self.impl, np)

    def python(self, np: int, script: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self(np, [sys.executable, str(RANKS / script), *args], **kw)


@pytest.fixture(scope="session")
def mpiexec() -> MpiRun:
    return MpiRun()


def last_json(text: str) -> dict:
    """The last line of output that parses as a JSON object (what rank 0 reported)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{text}")



def killed_outright(argv: list[str], up: int) -> set[int]:
    """SIGKILL, which no handler sees, to the process started from ``argv`` once ``up`` processes
    of its job run; those of its job still there 30 s later. Its job: what carries its
    environment, found through a mark only this run's processes have."""
    import signal
    import time
    import uuid

    mark = uuid.uuid4().hex
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MPIRT_TEST_MARK": mark})
    try:
        deadline = time.monotonic() + 60
        while len(_marked(mark) - {proc.pid}) < up:
            assert proc.poll() is None, "the job ended before it was up"
            assert time.monotonic() < deadline, f"fewer than {up} processes of the job after 60 s"
            time.sleep(0.1)
        time.sleep(1)  # the ranks into their work
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        return _marked(mark)
    finally:
        proc.kill()
        for pid in _marked(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _marked(mark: str) -> set[int]:
    """The processes whose environment carries MPIRT_TEST_MARK=``mark`` (zombies left out)."""
    found = set()
    for d in Path("/proc").iterdir():
        try:
            if f"MPIRT_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0") and \
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.add(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found

class Cgroup:
    """A cgroup with a limit on one controller (memory, cpu), made in the hierarchy that has the
    controller: cgroup v2 where it is there, else v1 (hybrid hosts). ``limits`` maps each
    version to (file, value) pairs, the first required, the rest written where the file exists.
    With ``child``, processes go into a child of it without a limit of its own, as a container's
    under a pod's or a slice's."""

    def __init__(self, controller: str, limits: dict[int, list[tuple[str, str]]], child: bool = False):
        self.controller = controller
        self.v2 = False
        self.top = self._make(limits)
        self.path = self.top
        if child:
            self.path = self.top / "inner"
            self.path.mkdir()

    @staticmethod
    def _mounts() -> list[tuple[str, str, str]]:
        return [tuple(line.split()[1:4]) for line in Path("/proc/mounts").read_text().splitlines()]

    def _make(self, limits: dict[int, list[tuple[str, str]]]) -> Path:
        name = f"mpirt-test-{os.getpid()}-{id(self)}"
        for mount, fstype, _ in self._mounts():
            if fstype == "cgroup2" and self.controller in (Path(mount) / "cgroup.controllers").read_text().split():
                root = Path(mount)
                if self.controller not in (root / "cgroup.subtree_control").read_text().split():
                    (root / "cgroup.subtree_control").write_text(f"+{self.controller}")
                self.v2 = True
                return self._limited(root / name, limits[2])
        for mount, fstype, opts in self._mounts():
            if fstype == "cgroup" and self.controller in opts.split(","):
                return self._limited(Path(mount) / name, limits[1])
        raise OSError(f"no {self.controller} cgroup controller mounted")

    @staticmethod
    def _limited(cg: Path, files: list[tuple[str, str]]) -> Path:
        cg.mkdir()
        for i, (file, value) in enumerate(files):
            if i == 0 or (cg / file).exists():
                (cg / file).write_text(value)
        return cg

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup (with all it starts)."""
        return ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", str(self.path), *argv]

    def mounted(self, argv: list[str]) -> list[str]:
        """``argv`` with this cgroup's hierarchy mounted at /sys/fs/cgroup, as a container runtime
        does: for a process in a fresh /sys (`ip netns exec` mounts one without cgroups)."""
        hierarchy = self.top.parent
        if self.v2:
            mount = 'mount -t cgroup2 cgroup2 /sys/fs/cgroup'
        else:
            mount = (f'mount -t tmpfs cgroup /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/{hierarchy.name} && '
                     f'mount -t cgroup -o {self.controller} cgroup /sys/fs/cgroup/{hierarchy.name}')
        return ["sh", "-c", mount + ' && exec "$@"', "sh", *argv]

    def close(self) -> None:
        import signal
        import time

        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.path != self.top:
            self.path.rmdir()
        self.top.rmdir()


def _cgroups(controller: str, make):
    """A fixture's body: cgroups made by ``make`` (which returns a Cgroup), skipped where this
    process may not make one or move into it (not root, no controller), all removed after."""
    made: list[Cgroup] = []

    def made_one(*args, **kw) -> Cgroup:
        try:
            cg = make(*args, **kw)
        except OSError as e:
            pytest.skip(f"cannot make a {controller} cgroup here: {e}")
        made.append(cg)
        moved = subprocess.run(cg.wrap(["true"]), capture_output=True, text=True)
        if moved.returncode != 0:
            pytest.skip(f"cannot move a process into a {controller} cgroup here: {moved.stderr.strip()}")
        return cg

    yield made_one
    for cg in made:
        cg.close()


@pytest.fixture
def memory_cgroup():
    """Makes memory-limited cgroups (bytes; no swap): the pod's container for the OOM tests."""
    yield from _cgroups("memory", lambda limit: Cgroup("memory", {
        2: [("memory.max", str(limit)), ("memory.swap.max", "0")],
        1: [("memory.limit_in_bytes", str(limit)), ("memory.memsw.limit_in_bytes", str(limit))]}))


@pytest.fixture
def cpu_cgroup():
    """Makes CPU-limited cgroups (a quota in CPUs, e.g. 0.5), each holding its processes in a
    child: the quota sits above them, as a pod's resources.limits.cpu above its container."""
    period = 100000
    yield from _cgroups("cpu", lambda cpus: Cgroup("cpu", {
        2: [("cpu.max", f"{int(cpus * period)} {period}")],
        1: [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(int(cpus * period)))]}, child=True))


@pytest.fixture
def user_venv(tmp_path) -> Path:
    """An image's venv: its bin (python3, and mpirt launching from it) first on the PATH this
    returns, the system's /usr/bin behind it. Built on the tests' Python, whose packages it
    sees. (Run through pyenv's shims, `mpirt` would put pyenv's own bin first instead.)"""
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs a system /usr/bin/python3 for the venv's to win over")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    (venv / "bin" / "mpirt").write_text(f"#!{venv}/bin/python3\nimport sys\nfrom launcher.cli import main\n"
                                        "sys.exit(main())\n")
    (venv / "bin" / "mpirt").chmod(0o755)
    return venv / "bin"
