"""Env defaults: golden tables per tier and library, topology rules, profiles, precedence,
bad profile input; the bootstrap interface from a routing table."""

import pytest

from launcher.detect.netif import bootstrap_interface
from launcher.envdefaults import LIBRARY_PREFIXES, PROFILES, TIER, YIELD, EnvError, Topology, load_profiles, resolve


def as_dict(env):
    return {v.name: (v.value, v.source) for v in env}


def test_ib_with_open_mpi_4_golden():
    env = resolve("ib", ["nccl", "ucx", "openmpi4"], {}, iface="eth0", hcas=("mlx5_0:1", "mlx5_1:1"))
    assert {k: v for k, (v, _) in as_dict(env).items()} == {
        "GLOO_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "WARN", "NCCL_IB_DISABLE": "0",
        "NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1", "NCCL_SOCKET_IFNAME": "=eth0", "UCX_NET_DEVICES": "mlx5_0:1,mlx5_1:1",
        "OMPI_MCA_pml": "ucx", "OMPI_MCA_osc": "ucx", "OMPI_MCA_btl": "^openib",
        "OMPI_MCA_btl_tcp_if_include": "eth0", "OMPI_MCA_oob_tcp_if_include": "eth0"}
    assert all(src == "tier:ib" for _, src in as_dict(env).values())
    assert "NCCL_ALGO" not in as_dict(env) and "NCCL_PROTO" not in as_dict(env)


@pytest.mark.parametrize("lib,expect", [
    ("openmpi5", {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,sm,tcp", "OMPI_MCA_osc": "^ucx",
                  "OMPI_MCA_btl_tcp_if_include": "net1",
                  "PRTE_MCA_prte_if_include": "net1", "MPIRT_AUTO_RING_MIN_BYTES": "1048576",
                  "MPIRT_RING_SEGMENT_BYTES": "61440", "MPIRT_RING_WAIT_US": "50"}),
    ("openmpi4", {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_btl_tcp_if_include": "net1",
                  "OMPI_MCA_oob_tcp_if_include": "net1", "MPIRT_AUTO_RING_MIN_BYTES": "1048576",
                  "MPIRT_RING_SEGMENT_BYTES": "61440", "MPIRT_RING_WAIT_US": "50"}),
    ("mpich", {"FI_PROVIDER": "tcp", "FI_TCP_IFACE": "net1", "HYDRA_IFACE": "net1",
               "MPIRT_AUTO_RING_MIN_BYTES": "1048576"}),
    ("intel", {"I_MPI_FABRICS": "shm:ofi", "I_MPI_OFI_PROVIDER": "tcp", "FI_TCP_IFACE": "net1",
               "I_MPI_HYDRA_IFACE": "net1"}),
])
def test_tcp_tier_per_mpi_golden(lib, expect):
    env = as_dict(resolve("tcp", ["nccl", lib], {}, iface="net1"))
    assert {k: env[k][0] for k in expect} == expect
    assert env["NCCL_IB_DISABLE"] == ("1", "tier:tcp")
    assert set(env) == set(expect) | {"NCCL_IB_DISABLE", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_DEBUG"}


@pytest.mark.parametrize("name,value", [("MPIRT_AUTO_RING_MIN_BYTES", "1048576"),
                                        ("MPIRT_RING_SEGMENT_BYTES", "61440"), ("MPIRT_RING_WAIT_US", "50")])
def test_ring_settings_only_where_measured(name, value):
    """Open MPI 4.1 and 5.0 on the TCP tier: their own choice was the slow one, 256 KiB ring
    segments ran at half the link between 2 hosts, and a polling ring took cores from training.
    MPICH 5: its own choice was slow on 3 hosts. Elsewhere unmeasured: unset. The user's value wins."""
    measured = ("openmpi4", "openmpi5") + (("mpich",) if name == "MPIRT_AUTO_RING_MIN_BYTES" else ())
    for lib in measured:
        assert as_dict(resolve("tcp", [lib], {}))[name] == (value, "tier:tcp")
    unset = [("ib", "openmpi4"), ("roce", "openmpi5"), ("tcp", "intel")] + ([] if "mpich" in measured else
                                                                            [("tcp", "mpich")])
    for tier, lib in unset:
        assert name not in as_dict(resolve(tier, [lib], {}, hcas=("mlx5_0:1",)))
    assert as_dict(resolve("tcp", ["openmpi4"], {name: "8192"}))[name] == ("8192", "user")
    assert name not in as_dict(resolve("tcp", ["openmpi4", "mpich"], {}, hosts=1))  # no ring across hosts
    assert as_dict(resolve("tcp", ["openmpi4"], {}, hosts=2))[name] == (value, "tier:tcp")


def test_unknown_interface_leaves_interface_variables_out():
    env = as_dict(resolve("roce", ["nccl", "mpich"], {}, hcas=("mlx5_2:1",)))
    assert "NCCL_SOCKET_IFNAME" not in env and "HYDRA_IFACE" not in env and env["FI_PROVIDER"][0] == "verbs"


def test_topology_rules():
    env = as_dict(resolve("tcp", ["nccl"], {}, topology=Topology(gpus=4, p2p_ok=False)))
    assert env["NCCL_P2P_DISABLE"] == ("1", "topology") and env["NCCL_SHM_DISABLE"] == ("1", "topology")
    assert "NCCL_P2P_DISABLE" not in as_dict(resolve("tcp", ["nccl"], {}, topology=Topology(gpus=8)))
    small = as_dict(resolve("tcp", ["nccl"], {}, topology=Topology(shm_bytes=64 << 20)))
    assert small["NCCL_SHM_DISABLE"] == ("1", "topology")


def test_precedence_user_over_profile_over_topology_over_tier():
    env = resolve("ib", ["nccl"], {"NCCL_P2P_DISABLE": "0", "NCCL_DEBUG": "TRACE"}, hcas=("mlx5_0:1",),
                  topology=Topology(gpus=2, p2p_ok=False), profile="rl")
    d = as_dict(env)
    assert d["NCCL_P2P_DISABLE"] == ("0", "user")  # user over profile and topology
    assert d["NCCL_DEBUG"] == ("TRACE", "user")  # user over tier
    assert d["NCCL_IB_DISABLE"] == ("1", "profile:rl")  # profile over tier
    assert d["NCCL_SHM_DISABLE"] == ("1", "topology")
    assert d["NCCL_IB_HCA"] == ("=mlx5_0:1", "tier:ib")
    assert all(v.reason for v in env)
    user = next(v for v in env if v.name == "NCCL_P2P_DISABLE")
    assert user.reason.startswith("set by you (mpirt would use '1'")


def test_debug_profile_and_user_profiles(tmp_path):
    assert as_dict(resolve("tcp", ["nccl"], {}, profile="debug"))["NCCL_DEBUG"] == ("INFO", "profile:debug")
    f = tmp_path / "profiles.toml"
    f.write_text('[profile.site]\nNCCL_IB_TC = "106"\n[profile.site.reasons]\nNCCL_IB_TC = "our fabric\'s class"\n')
    profiles = load_profiles(str(f))
    env = resolve("roce", ["nccl"], {}, hcas=("mlx5_0:1",), profile="site", profiles=profiles)
    tc = next(v for v in env if v.name == "NCCL_IB_TC")
    assert (tc.value, tc.source, tc.reason) == ("106", "profile:site", "our fabric's class")


def test_bad_profile_input(tmp_path):
    with pytest.raises(EnvError, match="unknown profile 'fast'; known: debug, rl"):
        resolve("tcp", ["nccl"], {}, profile="fast")
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile.x\nA = 1\n")
    with pytest.raises(EnvError, match="is not valid TOML"):
        load_profiles(str(bad))
    bad.write_text("[profile.x]\nA = 1\n")
    with pytest.raises(EnvError, match=r"A = 1: write VAR = \"value\""):
        load_profiles(str(bad))
    with pytest.raises(EnvError, match="No such file"):
        load_profiles(str(tmp_path / "missing.toml"))


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
net1\t00000A0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_bootstrap_interface_follows_the_route_to_the_peers():
    assert bootstrap_interface(ROUTES) == "eth0"  # default route
    assert bootstrap_interface(ROUTES, "10.10.3.4") == "net1"  # a peer on the secondary network
    assert bootstrap_interface(ROUTES, "172.17.0.5") == "eth0"  # docker0 never, default route instead
    assert bootstrap_interface("Iface\tDestination\n") is None


def test_mpirt_env_over_a_fixture_tree(tmp_path):
    import json
    import os
    import subprocess

    from test_detect_rdma import hca, put  # the same fixture builder

    put(tmp_path, "proc/self/limits", "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max locked memory         unlimited            unlimited            bytes")
    for i in range(2):
        hca(tmp_path, f"mlx5_{i}", "InfiniBand")
    put(tmp_path, "proc/net/route", ROUTES.rstrip())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "UCX_", "OMPI_MCA_"))}
    proc = subprocess.run(["mpirt", "env", "--root", str(tmp_path), "--json", "--profile", "debug"],
                          capture_output=True, text=True, timeout=60, env={**env, "NCCL_DEBUG_SUBSYS": "ALL"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["probe"]["tier"] == "ib" and doc["probe"]["hcas"] == ["mlx5_0:1", "mlx5_1:1"]
    assert doc["probe"]["iface"] == "eth0"
    got = {v["name"]: (v["value"], v["source"]) for v in doc["variables"]}
    assert got["NCCL_IB_HCA"] == ("=mlx5_0:1,mlx5_1:1", "tier:ib")
    assert got["NCCL_DEBUG"] == ("INFO", "profile:debug") and got["NCCL_DEBUG_SUBSYS"] == ("ALL", "user")
    text = subprocess.run(["mpirt", "env", "--root", str(tmp_path), "--explain"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert "# tier ib, interface eth0" in text.stderr
    assert "NCCL_IB_DISABLE=0" in text.stdout and "# tier:ib: usable RDMA ports were found" in text.stdout


def test_small_memlock_falls_back_to_tcp_and_says_so(tmp_path):
    import json
    import subprocess

    from test_detect_rdma import hca, put

    hca(tmp_path, "mlx5_0", "InfiniBand")
    put(tmp_path, "proc/self/limits", "Max locked memory         65536                65536                bytes")
    proc = subprocess.run(["mpirt", "env", "--root", str(tmp_path), "--json"], capture_output=True, text=True,
                          timeout=60)
    doc = json.loads(proc.stdout)
    assert doc["probe"]["tier"] == "tcp" and "ulimit -l unlimited" in doc["probe"]["notes"][0]


def test_unreadable_sysfs_is_a_clear_error(tmp_path):
    import subprocess

    proc = subprocess.run(["mpirt", "env", "--root", str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "is not a readable sysfs; mount /sys" in proc.stderr


def test_every_variable_mpirt_sets_is_one_a_host_can_claim():
    """A host's own value of any variable the tables set counts as the user's (launcher.fleet)."""
    names = {row[2] for row in TIER} | {n for p in PROFILES.values() for n in p} | {n for _, n, _ in YIELD}
    names |= {"OMP_NUM_THREADS"}
    assert [n for n in sorted(names) if not n.startswith(LIBRARY_PREFIXES)] == []
