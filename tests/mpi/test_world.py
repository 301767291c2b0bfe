"""World facts from MPI and the torchrun-style variables, at 1, 2 and 4 ranks; and
`python -m mpirt` passing a rank's SystemExit status on as the job's."""

import json
import socket
import subprocess
import sys

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
