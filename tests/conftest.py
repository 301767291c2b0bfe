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


class MpiRun:
    def __init__(self):
        self.impl = detect(find_mpirun())

    def __call__(self, np: int, argv: list[str], timeout: float = 180, env: dict | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
        cmd = local_argv_here(self.impl, np) + argv
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{e.stdout}\n{e.stderr}")
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

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
