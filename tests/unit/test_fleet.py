"""The job's hosts as one network: lowest common tier with the hosts that cause it named,
interfaces and HCAs only where every host agrees, the weakest GPU topology; and the launcher's
use of it (defaults set, the user's values kept, the summary line)."""

import json
import subprocess
import sys

import pytest

from launcher import fleet
from launcher.detect.memcg import OomCounter
from launcher.detect.probe import Probe
from launcher.envdefaults import Topology


def host(name, tier, iface="eth0", hcas=(), gpus=0, p2p=True, mig=False, runs_ranks=True, env=None):
    probe = Probe(tier, tuple(hcas), iface, 1 << 40, 1 << 34, gpus, (), ())
    return fleet.HostProbe(name, probe, Topology(gpus=gpus, p2p_ok=p2p, mig=mig, shm_bytes=1 << 34),
                           runs_ranks=runs_ranks, env=env or {})


def test_same_hosts_share_everything():
    plan = fleet.combine([host(f"w{i}", "ib", hcas=("mlx5_0", "mlx5_1"), gpus=8) for i in range(4)])
    assert (plan.tier, plan.iface, plan.hcas, plan.notes) == ("ib", "eth0", ("mlx5_0", "mlx5_1"), ())
    assert plan.topology.gpus == 8 and plan.topology.p2p_ok


def test_lowest_tier_names_the_host_that_causes_it():
    plan = fleet.combine([host("w0", "roce", hcas=("mlx5_0",)), host("w1", "tcp"), host("w2", "roce", hcas=("mlx5_0",))])
    assert plan.tier == "tcp" and plan.hcas == ()
    assert plan.notes == ("tier tcp because w1 has no better; the other hosts have roce",)


def test_launcher_pod_without_ranks_does_not_lower_the_tier():
    plan = fleet.combine([host("launcher", "tcp", runs_ranks=False), host("w0", "ib", hcas=("mlx5_0",)),
                          host("w1", "ib", hcas=("mlx5_0",))])
    assert plan.tier == "ib" and plan.hcas == ("mlx5_0",)


def test_disagreements_leave_values_to_the_libraries():
    plan = fleet.combine([host("w0", "ib", iface="eth0", hcas=("mlx5_0",)), host("w1", "ib", iface="net1",
                                                                                   hcas=("mlx5_2",))])
    assert plan.iface is None and plan.hcas == ()
    assert any("interfaces differ (w0: eth0, w1: net1)" in n for n in plan.notes)
    assert any("HCA names differ" in n for n in plan.notes)


def test_failed_probe_counts_as_tcp_and_is_named():
    plan = fleet.combine([host("launcher", "tcp", iface="eth0", runs_ranks=False),
                          host("w0", "ib", hcas=("mlx5_0",)), fleet.HostProbe("w1", None, None, "mpirt: not found")])
    assert plan.tier == "tcp" and plan.iface is None  # w1 may call its interface otherwise
    assert plan.notes[0] == "w1: no probe (mpirt: not found); counted as tcp"


def test_variables_a_host_sets_count_as_the_users():
    """A worker's own NCCL_DEBUG reaches its ranks through its sshd; a default forwarded from
    the launcher would replace it, so none is set, and the summary says so."""
    probes = [host("launcher", "tcp", runs_ranks=False, env={"UCX_TLS": "all"}),
              host("w0", "tcp", env={"NCCL_DEBUG": "INFO"}), host("w1", "tcp"),
              host("w2", "tcp", env={"NCCL_DEBUG": "INFO", "OMPI_MCA_btl": "self,tcp"})]
    plan = fleet.combine(probes)
    assert plan.host_env == {"NCCL_DEBUG": "INFO", "OMPI_MCA_btl": "self,tcp"} and plan.notes == ()
    assert fleet.summary(plan, probes, None, 5, ("OMPI_MCA_btl", "NCCL_DEBUG")).splitlines()[1:] == [
        "mpirt:   set on the hosts, so not by mpirt: NCCL_DEBUG (w0, w2); OMPI_MCA_btl (w2)"]
    back = fleet.from_json("w0", json.loads(json.dumps(fleet.to_json(host("w0", "tcp", env={"NCCL_DEBUG": "INFO"})))))
    assert back.env == {"NCCL_DEBUG": "INFO"}


def test_variables_set_on_the_launcher_only_are_named():
    """What no rank will see: not sent by mpirun, set on no host that runs ranks; never what
    mpirun and its daemons read themselves or what a login sets."""
    workers = [fleet.HostProbe("w0", None, None, env_names=frozenset({"PATH", "SHARED", "W0_ONLY"})),
               fleet.HostProbe("w1", None, None, env_names=frozenset({"PATH", "SHARED"})),
               fleet.HostProbe("launcher", None, None, runs_ranks=False, env_names=frozenset({"DATA_DIR"}))]
    here = {"PATH": "/bin", "SHARED": "1", "W0_ONLY": "1", "DATA_DIR": "/d", "WANDB_PROJECT": "p", "SENT": "1",
            "OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile", "HOSTNAME": "launcher", "SSH_AUTH_SOCK": "/s"}
    assert fleet.launcher_only(here, {"SENT", "PATH"}, workers, frozenset({"HOSTNAME"})) == ["DATA_DIR", "WANDB_PROJECT"]
    older = [fleet.HostProbe("w0", None, None)]  # a probe that does not list its variables: say nothing
    assert fleet.launcher_only(here, set(), older, frozenset()) == []
    back = fleet.from_json("w0", json.loads(json.dumps(fleet.to_json(fleet.local("w0", env={"A": "1"})))))
    assert back.env_names == {"A"}


def test_probe_takes_only_library_variables_from_the_environment():
    found = fleet.local("here", env={"NCCL_DEBUG": "INFO", "HF_TOKEN": "t", "UCX_TLS": "tcp", "PATH": "/bin"})
    assert found.env == {"NCCL_DEBUG": "INFO", "UCX_TLS": "tcp"}


def test_weakest_gpu_topology():
    plan = fleet.combine([host("w0", "tcp", gpus=8), host("w1", "tcp", gpus=4, p2p=False, mig=True)])
    assert (plan.topology.gpus, plan.topology.p2p_ok, plan.topology.mig) == (4, False, True)


def test_probe_command_round_trips():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "probe", "--peer", "127.0.0.1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    back = fleet.from_json("here", json.loads(proc.stdout))
    assert back.probe.tier in fleet.TIER_ORDER and back.topology.gpus >= 0


def launch(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--dry-run", *args, "--",
                           "true"], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_launch_sets_tier_defaults_keeps_the_users_and_says_so():
    proc = launch(env={"NCCL_DEBUG": "TRACE"})
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["env"]
    assert env["NCCL_IB_DISABLE"] == "1" and env["OMPI_MCA_btl"] == "self,vader,tcp"  # this machine: tcp
    assert "NCCL_DEBUG" not in env  # the user's TRACE stands
    assert not any(k.startswith(("MPIRT_RING_", "MPIRT_AUTO_RING")) for k in env)  # one host: no ring across hosts
    line = proc.stderr.splitlines()[0]
    assert line.startswith("mpirt: tier tcp (1 host), interface ") and line.endswith("(mpirt env --explain says why)")
    assert f"{len(env) - 4} variables set" in line  # all but MPIRT_ERROR_DIR, MPIRT_JOB_ID, MASTER_ADDR/PORT


def test_launch_profile_and_opt_out():
    env = json.loads(launch("--profile", "debug").stdout)["env"]
    assert env["NCCL_DEBUG"] == "INFO" and env["OMPI_MCA_btl_base_verbose"] == "30"
    env = json.loads(launch("--no-env-defaults").stdout)["env"]
    assert not any(k.startswith(("NCCL_", "UCX_", "OMPI_MCA_b")) for k in env)
    proc = launch("--profile", "fast")
    assert proc.returncode == 2 and "unknown profile 'fast'" in proc.stderr


def test_probe_command_prefers_the_workers_saved_probe(tmp_path):
    import os

    saved = tmp_path / "probe.json"
    saved.write_text(json.dumps({"probe": {"tier": "ib", "hcas": ["mlx5_0"], "iface": "eth0", "memlock": -1,
                                           "shm_bytes": 1 << 34, "gpus": 8, "notes": [], "ports": []},
                                 "gpus": {"count": 8, "p2p_ok": True, "mig": False}}))
    cmd = fleet.probe_command("10.0.0.1")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env={**os.environ, "MPIRT_PROBE": str(saved)})
    hp = fleet.from_output("w0", out.stdout)
    assert (hp.probe.tier, hp.probe.hcas, hp.topology.gpus) == ("ib", ("mlx5_0",), 8)
    fresh = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "MPIRT_PROBE"})
    assert fleet.from_output("here", fresh.stdout).probe is not None  # `mpirt probe --peer 10.0.0.1` ran
    assert fleet.from_output("w1", "").error.startswith("no probe output")
    with pytest.raises(ValueError):
        fleet.probe_command("10.0.0.1; rm -rf /")


def test_probe_output_carries_the_oom_counter_read_now(tmp_path):
    """The worker's saved probe dates from its start; the counter read at launch is the baseline."""
    import os

    doc = {"probe": {"tier": "tcp", "hcas": [], "iface": "eth0", "memlock": -1, "shm_bytes": 1 << 30, "gpus": 0,
                     "notes": [], "ports": []}, "gpus": {"count": 0, "p2p_ok": True, "mig": False}}
    counter = tmp_path / "memory.events"
    counter.write_text("oom 4\noom_kill 4\n")
    saved = tmp_path / "probe.json"
    saved.write_text(json.dumps({**doc, "oom": {"path": str(counter), "kills": 1}}))
    out = subprocess.run(["sh", "-c", fleet.probe_command(None)], capture_output=True, text=True,
                         env={**os.environ, "MPIRT_PROBE": str(saved), "MPIRT_OOM_FILE": str(counter)}).stdout
    hp = fleet.from_output("w0", out)
    assert hp.oom == OomCounter(str(counter), 4) and hp.probe.tier == "tcp"
    assert fleet.from_output("w0", json.dumps({**doc, "oom": {"path": str(counter), "kills": 1}})).oom.kills == 1
    assert fleet.from_output("w0", json.dumps(doc)).oom is None  # an older mpirt's probe
    assert fleet.to_json(fleet.from_json("w0", {**doc, "oom": None}))["oom"] is None
