"""`mpirt launch`: start a command on MPI ranks and report how it ended.

This is the local role: N ranks on this machine, no ssh (the default outside a cluster).
Every rank gets ``MPIRT_ERROR_DIR`` so a failing rank's record reaches the root-cause report,
and mpirun is told to give ranks the grace period between SIGTERM and SIGKILL (so a stopped
`mpirt train` can checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from launcher import mpi
from launcher.run import report, supervise


@dataclass(frozen=True)
class LaunchConfig:
    np: int
    command: tuple[str, ...]
    mpirun: str | None = None
    dry_run: bool = False
    grace_s: float = 10.0
    tag_output: bool = True


def run(config: LaunchConfig) -> int:
    impl = mpi.detect(mpi.find_mpirun(config.mpirun))
    argv = mpi.launch_argv(impl, config.np, list(config.command), cores=os.cpu_count() or 1, uid=os.getuid(),
                           tag_output=config.tag_output)
    own_dir = "MPIRT_ERROR_DIR" not in os.environ
    error_dir = os.environ.get("MPIRT_ERROR_DIR") or tempfile.mkdtemp(prefix="mpirt-errors-")
    added = {"MPIRT_ERROR_DIR": error_dir}
    added.update({k: v for k, v in mpi.grace_env(impl, config.grace_s).items() if k not in os.environ})
    if config.dry_run:
        print(json.dumps({"mpi": impl.label, "argv": argv, "env": added}, indent=1))
        if own_dir:
            shutil.rmtree(error_dir, ignore_errors=True)
        return 0
    code, stopped_by = supervise(argv, {**os.environ, **added}, config.grace_s)
    code = report(code, error_dir, stopped_by)
    if own_dir and code == 0:
        shutil.rmtree(error_dir, ignore_errors=True)
    return code
