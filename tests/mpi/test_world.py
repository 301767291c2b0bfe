"""World facts from MPI and the torchrun-style variables, at 1, 2 and 4 ranks; a script
written for torchrun run unchanged by `mpirt launch -- python -m mpirt`; and `python -m mpirt`
passing a rank's SystemExit status on as the job's."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_world_and_torch_env(mpiexec, np_):
    proc = mpiexec.python(np_, "world_env.py")
    ranks = json.loads([line for line in proc.stdout.splitlines() if line.startswith("[")][-1])
    host = socket.gethostname()
    for r, info in enumerate(ranks):
        w = info["world"]
        assert (w["rank"], w["size"], w["local_rank"], w["local_size"], w["node"], w["nodes"]) == (r, np_, r, np_, 0, 1)
        assert w["host"] == w["master_addr"] == host
        assert info["env"] == {"RANK": str(r), "WORLD_SIZE": str(np_), "LOCAL_RANK": str(r),
                               "LOCAL_WORLD_SIZE": str(np_), "MASTER_ADDR": host, "MASTER_PORT": "31337"}
        assert "MASTER_PORT" not in info["set"]


def test_python_m_mpirt_passes_exit_status_on():
    ok = subprocess.run([sys.executable, "-m", "mpirt", "-c", "import sys; sys.exit(0)"], timeout=60)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "mpirt", "-c", "import sys; sys.exit(3)"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 3
    usage = subprocess.run([sys.executable, "-m", "mpirt"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage: python -m mpirt" in usage.stderr


@pytest.mark.parametrize("code, exit_code", [("raise SystemExit(143)", 143), ("raise SystemExit(130)", 130),
                                             ("raise KeyboardInterrupt", 130), ("raise SystemExit(3)", 3)])
def test_a_rank_told_to_stop_leaves_no_failure_record(tmp_path, code, exit_code):
    """128 + SIGTERM, 128 + SIGINT, a KeyboardInterrupt: a rank that was told to stop, which must
    not abort the others (they may still be writing their part of a checkpoint)."""
    proc = subprocess.run([sys.executable, "-m", "mpirt", "-c", f"from mpi4py import MPI\n{code}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MPIRT_ERROR_DIR": str(tmp_path), "OMPI_COMM_WORLD_RANK": "0"})
    assert proc.returncode == exit_code
    failed = exit_code == 3
    assert [p.name for p in tmp_path.glob("rank-*.json")] == (["rank-0.json"] if failed else [])
    assert "mpirt: rank 0 on " not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr  # as Python says


def test_a_rank_that_raised_says_so_and_sys_exit_with_text_prints_it(tmp_path):
    env = {**os.environ, "MPIRT_ERROR_DIR": str(tmp_path), "OMPI_COMM_WORLD_RANK": "0"}
    raised = subprocess.run([sys.executable, "-m", "mpirt", "-c", "raise ValueError('bad shard')"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert raised.returncode == 1 and raised.stderr.startswith("mpirt: rank 0 on ")
    assert raised.stderr.rstrip().endswith("ValueError: bad shard"), raised.stderr
    (tmp_path / "rank-0.json").unlink()
    text = subprocess.run([sys.executable, "-m", "mpirt", "-c", "import sys; sys.exit('no data in /data')"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (text.returncode, text.stderr) == (1, "no data in /data\n")


TORCHRUN_SCRIPT = str(Path(__file__).parent / "ranks" / "torchrun_script.py")


def launch(np_: int, *command: str, env: dict | None = None, options=()) -> subprocess.CompletedProcess:
    return subprocess.run(["mpirt", "launch", "-np", str(np_), *options, "--", sys.executable, *command],
                          capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_a_torchrun_script_runs_unchanged(np_):
    """`mpirt launch -- python SCRIPT` runs it under python -m mpirt (launcher.guard):
    init_process_group() from the environment, DDP and torch's DistributedSampler reach the
    weights of one process on the global batch, every rank the same; MPI never starts."""
    proc = launch(np_, TORCHRUN_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if '{"ranks"' in x)
    report = json.JSONDecoder().raw_decode(line[line.index("{"):])[0]
    assert [r["env"] for r in report["ranks"]] == [
        {"RANK": str(r), "WORLD_SIZE": str(np_), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(np_)}
        for r in range(np_)]
    assert [r["steps"] for r in report["ranks"]] == [4] * np_  # 48 samples, a global batch of 12
    assert report["spread"] == 0.0 and all(r["from_reference"] < 1e-12 for r in report["ranks"])
    assert not any(r["mpi_started"] for r in report["ranks"])


def test_a_torchrun_script_without_python_m_mpirt_is_told_how():
    dry = launch(2, TORCHRUN_SCRIPT, options=["--dry-run"])
    assert json.loads(dry.stdout)["argv"][-4:] == [sys.executable, "-m", "mpirt", TORCHRUN_SCRIPT]
    proc = launch(2, TORCHRUN_SCRIPT, options=["--no-guard"])
    assert proc.returncode != 0
    assert "environment variable RANK expected" in proc.stderr
    assert "fix: torch.distributed found no RANK: run the script as `python -m mpirt SCRIPT`" in proc.stderr


def test_a_stale_rank_variable_is_warned_about_and_kept():
    """What the user set wins, but a RANK that contradicts MPI would pair the wrong ranks: said."""
    code = "import os; print('RANK', os.environ['RANK'], 'SIZE', os.environ['WORLD_SIZE'], flush=True)"
    proc = launch(2, "-m", "mpirt", "-c", code, env={"RANK": "0"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(x.split("] ", 1)[1] for x in proc.stdout.splitlines() if "] RANK " in x) == [
        "RANK 0 SIZE 2", "RANK 0 SIZE 2"]
    assert proc.stderr.count("warning: RANK=0 is set, but the MPI launcher says 1") == 1, proc.stderr


def test_a_torchrun_script_failing_on_one_rank_ends_the_job_naming_it(tmp_path):
    """No MPI in the ranks, so no MPI_Abort: the failing rank's record and exit end the job."""
    script = tmp_path / "fails.py"
    script.write_text("import time, torch, torch.distributed as dist\n"
                      "dist.init_process_group('gloo')\n"
                      "if dist.get_rank() == 1:\n"
                      "    time.sleep(0.5)\n"
                      "    raise RuntimeError('injected on rank 1')\n"
                      "dist.all_reduce(torch.ones(1))\n")
    proc = launch(2, "-m", "mpirt", str(script))
    assert proc.returncode == 1, proc.stderr
    assert "Root cause (first failure): rank 1 on " in proc.stderr
    assert "RuntimeError: injected on rank 1" in proc.stderr
