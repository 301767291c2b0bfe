"""The `mpirt` command line, without MPI: version, help, and the launcher's import boundary."""

import subprocess
import sys

from mpirt import __version__


def run(*args):
    return subprocess.run(["mpirt", *args], capture_output=True, text=True, timeout=60)


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"mpirt, version {__version__}"


def test_bench_allreduce_help_comes_from_the_executable():
    proc = run("bench", "allreduce", "--help")
    assert proc.returncode == 0
    for option in ("--minbytes", "--maxbytes", "--stepfactor", "--check", "--min-busbw", "--json", "--csv",
                   "--device", "--algo"):
        assert option in proc.stdout


def test_cli_never_loads_mpi():
    code = ("import sys; from launcher.cli import main; import mpirt.bench.allreduce, launcher.mpi, launcher.launch, launcher.run; "
            "print('mpi4py.MPI' in sys.modules, 'mpirt._core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False"


def test_the_test_process_never_initialises_mpi():
    """Every test module is imported by now: one that loaded mpi4py.MPI would make this process
    an MPI singleton whose variables every mpirun a later test starts inherits, and fails on."""
    assert "mpi4py.MPI" not in sys.modules


def test_entrypoint_form_routes_by_role():
    import os

    env = {**os.environ, "K_MPI_JOB_ROLE": "worker", "MPIRT_SSH_DIR": "/nonexistent-secret"}
    proc = subprocess.run(["mpirt", "python", "train.py"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "role worker (K_MPI_JOB_ROLE=worker)" in proc.stderr
    assert "/nonexistent-secret/authorized_keys not found" in proc.stderr
    env["K_MPI_JOB_ROLE"] = "launcher"
    proc = subprocess.run(["mpirt", "pod"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "there is no command to run" in proc.stderr


def test_launch_path_imports_stay_light():
    """Every launch pays for its imports: no ssh modules for a local launch, no metadata scan, no MPI."""
    code = ("import sys; before = set(sys.modules); import launcher.cli, launcher.launch; "
            "print([m for m in ('launcher.ready', 'launcher.ssh', 'importlib.metadata', 'mpi4py') "
            "if m in set(sys.modules) - before])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
