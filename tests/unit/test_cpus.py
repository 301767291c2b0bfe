"""The CPUs a host's ranks may use (affinity capped by the cgroup quota, v1 and v2, a pod's
quota above the container's), and what the launcher sets from them: OpenMP threads a rank
where the default is wrong, MPI's waiting where ranks outnumber CPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import fleet
from launcher.detect import cpus
from launcher.detect.probe import Probe
from launcher.envdefaults import YIELD, CpuShare, resolve
from launcher.hosts import Host, placement
from launcher.mpi import detect, find_mpirun


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_v2_container_quota_caps_the_cores_it_sees(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "800000 100000\n"})
    assert cpus.budget(root, affinity=128) == cpus.Cpus(8, "affinity 128, cgroup quota 8 (cpu.max 800000 100000)")
    assert cpus.budget(root, affinity=4).count == 4  # a narrower mask is the cap


def test_no_quota_is_the_affinity(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpus.budget(root, affinity=16) == cpus.Cpus(16, "affinity 16")
    assert cpus.budget(tmp_path / "nothing", affinity=3) == cpus.Cpus(3, "affinity 3")


def test_a_pods_quota_above_the_container_counts(tmp_path):
    """Without a cgroup namespace the path is the host's: every level up to the root is read."""
    root = tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1/c1\n",
                           "sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n",
                           "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n"})
    assert cpus.budget(root, affinity=64).count == 3


def test_fractions_round_down_but_never_to_zero(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert cpus.budget(root, affinity=8) == cpus.Cpus(1, "affinity 8, cgroup quota 1.5 (cpu.max 150000 100000)")
    (root / "sys/fs/cgroup/cpu.max").write_text("50000 100000\n")
    assert cpus.budget(root, affinity=8).count == 1


def test_v1_cpu_controller_on_a_hybrid_host(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "4:memory:/x\n3:cpu,cpuacct:/kubepods/c2\n0::/\n",
                           "sys/fs/cgroup/cpu,cpuacct/kubepods/c2/cpu.cfs_quota_us": "200000\n",
                           "sys/fs/cgroup/cpu,cpuacct/kubepods/c2/cpu.cfs_period_us": "100000\n",
                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                           "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                           "sys/fs/cgroup/unified/cpu.max": "100000 100000\n"})
    assert cpus.budget(root, affinity=32) == cpus.Cpus(
        2, "affinity 32, cgroup quota 2 (cpu.cfs_quota_us 200000, cpu.cfs_period_us 100000)")


def test_unreadable_or_garbled_files_are_no_quota(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "garbage\n0::/\n", "sys/fs/cgroup/cpu.max": "lots\n"})
    assert cpus.budget(root, affinity=2) == cpus.Cpus(2, "affinity 2")


def test_this_machine():
    here = cpus.budget()
    assert 1 <= here.count <= len(os.sched_getaffinity(0)) and here.why.startswith("affinity ")


def test_ranks_fill_the_hosts_in_order():
    hosts = [Host("w0", 4, "x"), Host("w1", 4, "x"), Host("w2", 4, "x")]
    assert placement(hosts, 6) == {"w0": 4, "w1": 2, "w2": 0}
    assert placement(hosts, 12) == {"w0": 4, "w1": 4, "w2": 4}


def as_dict(env):
    return {v.name: (v.value, v.source) for v in env}


def test_threads_a_rank_are_its_share_of_the_cpus():
    env = as_dict(resolve("tcp", ["openmpi4"], {}, cpus=CpuShare("w1", 16, 4, "affinity 16")))
    assert env["OMP_NUM_THREADS"] == ("4", "topology") and "OMPI_MCA_mpi_yield_when_idle" not in env
    # alone: under MPI torch's MKL builds would start 1 thread
    assert as_dict(resolve("tcp", ["openmpi4"], {}, cpus=CpuShare("w1", 16, 1, "affinity 16")))[
        "OMP_NUM_THREADS"] == ("16", "topology")
    capped = as_dict(resolve("tcp", ["openmpi4"], {}, cpus=CpuShare("w1", 6, 1, "affinity 64, cgroup quota 6")))
    assert capped["OMP_NUM_THREADS"] == ("6", "topology")
    assert "OMP_NUM_THREADS" not in as_dict(resolve("tcp", ["openmpi4"], {}))  # ranks unknown: nothing


@pytest.mark.parametrize("lib", ["openmpi4", "openmpi5", "intel", "mpich"])
def test_more_ranks_than_cpus_makes_mpi_give_up_the_cpu_while_it_waits(lib):
    share = CpuShare("w0", 2, 4, "affinity 64, cgroup quota 2")
    env = resolve("tcp", [lib], {}, cpus=share)
    d = as_dict(env)
    assert d["OMP_NUM_THREADS"] == ("1", "topology")
    expect = {name: value for l, name, value in YIELD if l == lib}  # MPICH (ch4) has no such setting
    assert {n: d[n][0] for n in ("OMPI_MCA_mpi_yield_when_idle", "I_MPI_WAIT_MODE") if n in d} == expect
    why = next(v.reason for v in env if v.name == "OMP_NUM_THREADS")
    assert why.startswith("w0: 4 ranks on 2 CPUs (affinity 64, cgroup quota 2): ")
    mine = as_dict(resolve("tcp", [lib], {"OMP_NUM_THREADS": "3"}, cpus=share))
    assert mine["OMP_NUM_THREADS"] == ("3", "user")


def probe(name, n, why="affinity", cores=64, machine=""):
    return fleet.HostProbe(name, Probe("tcp", (), "eth0", -1, 1 << 34, 0, (), (), n, f"{why} {n}", cores, machine),
                           None)


def test_the_most_crowded_host_decides_and_is_named():
    probes = [probe("w0", 32), probe("w1", 8, "affinity 64, cgroup quota"), probe("w2", 2)]
    plan = fleet.combine(probes, {"w0": 8, "w1": 8, "w2": 0})  # w2 runs no rank
    assert (plan.cpus.host, plan.cpus.cpus, plan.cpus.ranks, plan.cpus.threads) == ("w1", 8, 8, 1)
    assert plan.notes == ()
    over = fleet.combine(probes, {"w0": 8, "w1": 8, "w2": 4})
    assert over.cpus.host == "w2" and over.notes == (
        "w2 runs 4 ranks on 2 CPUs (affinity 2): they take turns; give it more CPUs or run fewer ranks there",)
    old = fleet.HostProbe("w3", Probe("tcp", (), "eth0", -1, 1 << 34, 0, (), ()), None)  # an older mpirt's probe
    assert fleet.combine([old], {"w3": 4}).cpus is None and fleet.combine(probes).cpus is None


def test_launch_sets_them_from_this_machines_cpus():
    n = cpus.budget().count
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", str(n + 1), "--dry-run", "--",
                           "true"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["env"]
    assert env["OMP_NUM_THREADS"] == "1"
    key = detect(find_mpirun()).key
    assert {n: env[n] for _, n, _ in YIELD if n in env} == {n: v for lib, n, v in YIELD if lib == key}
    assert f"localhost runs {n + 1} ranks on {n} CPUs" in proc.stderr


def test_doctor_warns_when_a_rank_per_gpu_outnumbers_the_cpus(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "100000 100000\n",
                           **{f"dev/nvidia{i}": "" for i in range(8)}})
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "doctor", "--root", str(root), "--json"],
                          capture_output=True, text=True, timeout=120)
    check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "cpus")
    assert check["status"] == "warn" and check["detail"].startswith("1 for the ranks here (affinity ")
    assert "cgroup quota 1 (cpu.max 100000 100000)), fewer than the 8 GPUs" in check["detail"]
    assert "resources.limits.cpu" in check["fix"]


def test_mpirt_env_shows_them_for_a_number_of_ranks():
    def variables(*args):
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "env", "--json", *args], capture_output=True,
                              text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
        assert proc.returncode == 0, proc.stderr
        return {v["name"]: v for v in json.loads(proc.stdout)["variables"]}

    n = cpus.budget().count
    assert "OMP_NUM_THREADS" not in variables()
    omp = variables("--ranks", str(2 * n))["OMP_NUM_THREADS"]
    assert (omp["value"], omp["source"]) == ("1", "topology") and f"{2 * n} ranks on {n} CPUs" in omp["reason"]


def test_hosts_on_one_machine_share_its_cores():
    """Pods packed on one node (or this machine's namespace hosts) each see all its cores; the
    kernel's boot id says they share them."""
    here = [probe(f"w{i}", 2, cores=2, machine="boot-a") for i in range(4)]
    two = fleet.combine(here[:2], {"w0": 1, "w1": 1})
    assert (two.cpus.host, two.cpus.cpus, two.cpus.ranks, two.cpus.threads) == ("w0, w1 (one machine)", 2, 2, 1)
    assert two.notes == ()
    env = {v.name: v.value for v in resolve("tcp", ["openmpi4"], {}, cpus=two.cpus)}
    assert env["OMP_NUM_THREADS"] == "1" and "OMPI_MCA_mpi_yield_when_idle" not in env
    four = fleet.combine(here, {f"w{i}": 1 for i in range(4)})
    assert four.notes == ("w0, w1, w2, w3 (one machine) runs 4 ranks on 2 CPUs (4 hosts on one machine of 2 cores, by "
                          "their kernel's boot id): they take turns; give it more CPUs or run fewer ranks there",)
    assert {v.name: v.value for v in resolve("tcp", ["openmpi4"], {}, cpus=four.cpus)}[
        "OMPI_MCA_mpi_yield_when_idle"] == "1"
    # pods with quotas of 8 on a 64-core node: their quotas add up; other machines count alone
    packed = [probe("a", 8, "affinity 64, cgroup quota", machine="n1"), probe("b", 8, "affinity 64, cgroup quota",
                                                                           machine="n1"), probe("c", 64, machine="n2")]
    share = fleet.combine(packed, {"a": 8, "b": 8, "c": 8}).cpus
    assert (share.host, share.cpus, share.ranks) == ("a, b (one machine)", 16, 16)


def test_the_probe_names_its_machine_and_cores():
    doc = json.loads(subprocess.run([sys.executable, "-m", "launcher.cli", "probe"], capture_output=True, text=True,
                                    timeout=60, check=True).stdout)["probe"]
    assert doc["machine"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert doc["cores"] == os.cpu_count() and doc["cpus"] == cpus.budget().count
