"""Role detection over fixture environments and mount trees."""

import pytest

from launcher.hosts import HostError
from launcher.roles import detect


def tree(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_mpi_operator_launcher_and_worker(tmp_path):
    root = tree(tmp_path, {"etc/mpi/hostfile": "w-0.j.ns.svc slots=1\n"})
    role = detect({"K_MPI_JOB_ROLE": "launcher"}, root, "j-launcher")
    assert (role.kind, role.system, role.hostfile) == ("launcher", "mpi-operator", str(root / "etc/mpi/hostfile"))
    assert detect({"K_MPI_JOB_ROLE": "worker"}, tmp_path, "j-worker-0").kind == "worker"
    with pytest.raises(HostError, match="K_MPI_JOB_ROLE='boss'"):
        detect({"K_MPI_JOB_ROLE": "boss"}, tmp_path, "x")


def test_operator_hostfile_variable_wins_over_the_default_path(tmp_path):
    role = detect({"K_MPI_JOB_ROLE": "launcher", "OMPI_MCA_orte_default_hostfile": "/custom/hf"}, tmp_path, "l")
    assert role.hostfile == "/custom/hf"


def test_trainer_v2_is_a_hostfile_without_role(tmp_path):
    root = tree(tmp_path, {"etc/mpi/hostfile": "job-node-0-0.job slots=4\n"})
    role = detect({}, root, "job-launcher-0-0")
    assert (role.kind, role.system) == ("launcher", "trainer")


def test_volcano_master_worker_and_mpi_host(tmp_path):
    env = {"VC_MPIMASTER_HOSTS": "job-mpimaster-0.job", "VC_MPIWORKER_HOSTS": "job-mpiworker-0.job,job-mpiworker-1.job",
           "VC_MPIWORKER_NUM": "2"}
    master = detect(env, tmp_path, "job-mpimaster-0")
    assert (master.kind, master.system) == ("launcher", "volcano")
    assert [h.name for h in master.hosts] == ["job-mpiworker-0.job", "job-mpiworker-1.job"]
    assert detect(env, tmp_path, "job-mpiworker-1").kind == "worker"
    role = detect({"MPI_HOST": "a.job,b.job"}, tmp_path, "m")
    assert role.kind == "launcher" and [h.name for h in role.hosts] == ["a.job", "b.job"]


def test_volcano_host_files(tmp_path):
    root = tree(tmp_path, {"etc/volcano/master.host": "job-master-0.job\n",
                           "etc/volcano/worker.host": "job-worker-0.job\njob-worker-1.job\n"})
    role = detect({}, root, "job-master-0")
    assert role.kind == "launcher" and len(role.hosts) == 2
    assert detect({}, root, "job-worker-0").kind == "worker"


def test_nothing_means_local(tmp_path):
    assert detect({"HOME": "/root"}, tmp_path, "laptop").kind == "local"


def test_launch_resolves_hosts_from_each_source(tmp_path):
    from launcher.launch import LaunchConfig, resolve_hosts

    hf = tmp_path / "hf"
    hf.write_text("a slots=2\nb\n")
    hosts, source = resolve_hosts(LaunchConfig(command=("x",), hostfile=str(hf), slots="3"), {}, tmp_path)
    assert [(h.name, h.slots) for h in hosts] == [("a", 2), ("b", 3)] and source == f"--hostfile {hf}"
    hosts, _ = resolve_hosts(LaunchConfig(command=("x",), hosts="c:4,d"), {}, tmp_path)
    assert [(h.name, h.slots) for h in hosts] == [("c", 4), ("d", 1)]
    root = tree(tmp_path / "pod", {"etc/mpi/hostfile": "w0.job slots=2\n"})
    hosts, source = resolve_hosts(LaunchConfig(command=("x",)), {"K_MPI_JOB_ROLE": "launcher"}, root)
    assert [h.name for h in hosts] == ["w0.job"] and source == "mpi-operator: K_MPI_JOB_ROLE=launcher"
    assert resolve_hosts(LaunchConfig(command=("x",)), {}, tmp_path / "empty") == ([], "local")
    with pytest.raises(HostError, match="this pod is a worker"):
        resolve_hosts(LaunchConfig(command=("x",)), {"K_MPI_JOB_ROLE": "worker"}, tmp_path)
    with pytest.raises(HostError, match="missing .--hostfile.: No such file"):
        resolve_hosts(LaunchConfig(command=("x",), hostfile=str(tmp_path / "missing")), {}, tmp_path)
