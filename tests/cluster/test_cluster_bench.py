"""`mpirt bench scaling` across three network-namespace hosts, every job through `mpirt launch`."""

import os
import subprocess

import pytest

from netns import cluster  # noqa: F401  (the fixture)

from mpirt.bench import schema

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]


def test_three_host_sweep(cluster):
    c = cluster(3)
    for w in ("w0", "w1", "w2"):
        c.start_worker(w)
    hostfile = c.tmp / "hostfile"
    hostfile.write_text("w0 slots=1\nw1 slots=1\nw2 slots=1\n")
    out = c.tmp / "scaling.json"
    proc = c.run_in("launcher", ["mpirt", "bench", "scaling", "--out", str(out), "--hostfile", str(hostfile),
                                 "--repeats", "2", "-b", "1K", "-e", "4K", "-n", "10", "--model", "compute",
                                 "--batch", "8", "--steps", "2"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "MPIRT_SSH_DIR": str(c.secret), "MPIRT_STATE_DIR": str(c.tmp / "launch")})
    try:
        stdout, stderr = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the sweep hung:\n" + "".join(proc.communicate()))
    assert proc.returncode == 0, stderr[-3000:]
    d = schema.load(out)
    hosts = d["env"]["hosts"]
    assert (hosts["count"], hosts["slots"], hosts["names"], hosts["nodes_seen"]) == (3, 3, ["w0", "w1", "w2"], 3)
    assert hosts["oversubscribed"] is False
    assert {r["key"]["np"] for r in d["rows"] if r["kind"] == "train"} == {1, 2, 3}
    assert {r["key"]["np"] for r in d["rows"] if r["kind"] == "collective"} == {2, 3}
    assert "| weak | 3 | ddp |" in stdout
