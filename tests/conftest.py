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


class MemoryCgroup:
    """A memory cgroup with a hard limit and no swap: the pod's container for the OOM tests.
    cgroup v2 where the memory controller is there, else v1 (hybrid hosts)."""

    def __init__(self, limit: int):
        self.v2 = False
        self.path = self._make(limit)

    @staticmethod
    def _mounts() -> list[tuple[str, str, str]]:
        return [tuple(line.split()[1:4]) for line in Path("/proc/mounts").read_text().splitlines()]

    def _make(self, limit: int) -> Path:
        name = f"mpirt-test-{os.getpid()}-{id(self)}"
        for mount, fstype, opts in self._mounts():
            if fstype == "cgroup2" and "memory" in (Path(mount) / "cgroup.controllers").read_text().split():
                root = Path(mount)
                if "memory" not in (root / "cgroup.subtree_control").read_text().split():
                    (root / "cgroup.subtree_control").write_text("+memory")
                cg = root / name
                cg.mkdir()
                self.v2 = True
                (cg / "memory.max").write_text(str(limit))
                if (cg / "memory.swap.max").exists():
                    (cg / "memory.swap.max").write_text("0")
                return cg
        for mount, fstype, opts in self._mounts():
            if fstype == "cgroup" and "memory" in opts.split(","):
                cg = Path(mount) / name
                cg.mkdir()
                (cg / "memory.limit_in_bytes").write_text(str(limit))
                if (cg / "memory.memsw.limit_in_bytes").exists():
                    (cg / "memory.memsw.limit_in_bytes").write_text(str(limit))
                return cg
        raise OSError("no memory cgroup controller mounted")

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup (with all it starts)."""
        return ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", str(self.path), *argv]

    def mounted(self, argv: list[str]) -> list[str]:
        """``argv`` with this cgroup's hierarchy mounted at /sys/fs/cgroup, as a container runtime
        does: for a process in a fresh /sys (`ip netns exec` mounts one without cgroups)."""
        hierarchy = self.path.parent
        if self.v2:
            mount = 'mount -t cgroup2 cgroup2 /sys/fs/cgroup'
        else:
            mount = (f'mount -t tmpfs cgroup /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/{hierarchy.name} && '
                     f'mount -t cgroup -o memory cgroup /sys/fs/cgroup/{hierarchy.name}')
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
        self.path.rmdir()


@pytest.fixture
def memory_cgroup():
    """Makes memory-limited cgroups (bytes); skips where this process may not (not root, no controller)."""
    made: list[MemoryCgroup] = []

    def make(limit: int) -> MemoryCgroup:
        try:
            cg = MemoryCgroup(limit)
        except OSError as e:
            pytest.skip(f"cannot make a memory cgroup here: {e}")
        made.append(cg)
        moved = subprocess.run(cg.wrap(["true"]), capture_output=True, text=True)
        if moved.returncode != 0:
            pytest.skip(f"cannot move a process into a memory cgroup here: {moved.stderr.strip()}")
        return cg

    yield make
    for cg in made:
        cg.close()


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
