"""`mpirt doctor`: its JSON schema on this machine, and failures that name the fix."""

import json
import subprocess

STATUSES = {"pass", "warn", "fail"}


def doctor(*args):
    return subprocess.run(["mpirt", "doctor", *args], capture_output=True, text=True, timeout=180)


def test_json_schema_on_this_machine():
    proc = doctor("--json")
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "mpirt.doctor/1" and set(doc) == {"schema", "ok", "checks"}
    names = [c["name"] for c in doc["checks"]]
    for name in ("mpi", "mpi4py", "core", "build", "ucx", "gpus", "network", "memlock", "/dev/shm", "ssh key"):
        assert name in names
    for c in doc["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"} and c["status"] in STATUSES and c["detail"]
        if c["status"] == "fail":
            assert c["fix"], c
    assert doc["ok"] == all(c["status"] != "fail" for c in doc["checks"])
    assert proc.returncode == (0 if doc["ok"] else 1)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["mpi4py"]["status"] == "pass" and by_name["core"]["status"] == "pass"
    # the installed core's build options, as CMake recorded them
    assert "compiler unknown" not in by_name["build"]["detail"] and "MPI from system" in by_name["build"]["detail"]


def test_missing_mpirun_fails_with_the_fix():
    proc = doctor("--mpirun", "/nonexistent/mpirun")
    assert proc.returncode == 1
    assert "FAIL  mpi: mpirun '/nonexistent/mpirun' not found" in proc.stdout
    assert "fix: install an MPI" in proc.stdout


def test_hostfile_without_a_key_fails(tmp_path):
    hf = tmp_path / "hf"
    hf.write_text("w0 slots=1\n")
    proc = doctor("--hostfile", str(hf), "--ssh-dir", str(tmp_path / "no-secret"))
    assert proc.returncode == 1 and "FAIL  ssh key: no private key in" in proc.stdout
