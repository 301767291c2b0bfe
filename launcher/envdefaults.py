"""Environment defaults for NCCL, UCX and each MPI, with where every value came from and why.

Precedence: set by the user > profile > topology rule > tier default. The tables hold
starting points from ../shared/reference/network-tier-and-env.md (section 5: per tier and
library; section 6: topology; section 7: algorithm profiles). NCCL_ALGO and NCCL_PROTO are
never set by default. Profiles beyond the built-in ``rl`` and ``debug`` come from a TOML file
(``MPIRT_PROFILES``): ``[profile.NAME]`` tables of ``VAR = "value"`` and an optional
``[profile.NAME.reasons]``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

LIBRARIES = ("nccl", "ucx", "openmpi4", "openmpi5", "mpich", "intel")
# The variables of those libraries: one set on a host counts as set by the user there.
LIBRARY_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "OMPI_MCA_", "PRTE_MCA_", "FI_", "HYDRA_", "I_MPI_", "MPIR_CVAR_",
                    "MPIRT_AUTO_", "MPIRT_RING_", "OMP_")


class EnvError(ValueError):
    pass


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    source: str  # user | profile:<name> | topology | tier:<tier>
    reason: str


@dataclass(frozen=True)
class Topology:
    gpus: int = 0
    p2p_ok: bool = True  # every visible GPU pair can read and write peer memory
    mig: bool = False
    shm_bytes: int = 1 << 40  # size of /dev/shm


@dataclass(frozen=True)
class CpuShare:
    """The CPUs of the host whose ranks get the fewest each, against its ranks."""

    host: str
    cpus: int
    ranks: int
    why: str  # where the count came from (launcher.detect.cpus)

    @property
    def threads(self) -> int:
        return max(1, self.cpus // self.ranks)


# A rank waiting in MPI polls: with more ranks than CPUs it holds the CPU the rank it waits for
# needs. Open MPI yields only when its own slot count says a node is oversubscribed, which a
# cgroup quota never does; Intel MPI waits without polling in its wait mode. MPICH's ch4 device
# has no such setting (MPIR_CVAR_POLLS_BEFORE_YIELD is ch3's): its ranks keep polling.
YIELD = [("openmpi4", "OMPI_MCA_mpi_yield_when_idle", "1"), ("openmpi5", "OMPI_MCA_mpi_yield_when_idle", "1"),
         ("intel", "I_MPI_WAIT_MODE", "1")]

# (library, tiers) -> [(name, value, reason)]; {iface} and {hcas} are filled in, entries
# needing an unknown value are left out.
_RDMA = ("ib", "roce")
TIER: list[tuple[str, tuple[str, ...], str, str, str]] = [
    ("nccl", ("ib", "roce", "tcp"), "NCCL_SOCKET_IFNAME", "={iface}", "bootstrap traffic on the interface that routes to the other hosts"),
    ("nccl", ("ib", "roce", "tcp"), "GLOO_SOCKET_IFNAME", "{iface}", "Gloo (torch.distributed CPU) on the same interface"),
    ("nccl", ("ib", "roce", "tcp"), "NCCL_DEBUG", "WARN", "warnings only, so a failure says why without flooding the log"),
    ("nccl", _RDMA, "NCCL_IB_DISABLE", "0", "usable RDMA ports were found"),
    ("nccl", _RDMA, "NCCL_IB_HCA", "={hcas}", "exactly the active, injected ports of one link type"),
    ("nccl", ("tcp",), "NCCL_IB_DISABLE", "1", "no usable RDMA port: sockets, and no phantom or unroutable HCA is tried"),
    ("ucx", _RDMA, "UCX_NET_DEVICES", "{hcas}", "the usable RDMA ports"),
    ("ucx", ("tcp",), "UCX_TLS", "tcp,sm,self", "no usable RDMA port: TCP between hosts, shared memory within"),
    ("ucx", ("tcp",), "UCX_NET_DEVICES", "{iface}", "the interface that routes to the other hosts"),
    ("openmpi4", _RDMA, "OMPI_MCA_pml", "ucx", "UCX drives InfiniBand/RoCE"),
    ("openmpi4", _RDMA, "OMPI_MCA_osc", "ucx", "one-sided operations over UCX too"),
    ("openmpi4", _RDMA, "OMPI_MCA_btl", "^openib", "the legacy openib BTL must not compete with UCX"),
    ("openmpi4", ("tcp",), "OMPI_MCA_pml", "ob1", "no RDMA: the ob1 PML over BTLs"),
    ("openmpi4", ("tcp",), "OMPI_MCA_btl", "self,vader,tcp", "shared memory within a host, TCP between hosts"),
    ("openmpi4", ("ib", "roce", "tcp"), "OMPI_MCA_btl_tcp_if_include", "{iface}", "MPI TCP traffic on the routed interface"),
    ("openmpi4", ("ib", "roce", "tcp"), "OMPI_MCA_oob_tcp_if_include", "{iface}", "mpirun's own traffic on the routed interface"),
    ("openmpi5", _RDMA, "OMPI_MCA_pml", "ucx", "UCX drives InfiniBand/RoCE (openib is gone in 5.0)"),
    ("openmpi5", _RDMA, "OMPI_MCA_osc", "ucx", "one-sided operations over UCX too"),
    ("openmpi5", ("tcp",), "OMPI_MCA_pml", "ob1", "no RDMA: the ob1 PML over BTLs"),
    ("openmpi5", ("tcp",), "OMPI_MCA_btl", "self,sm,tcp", "shared memory within a host, TCP between hosts"),
    ("openmpi5", ("tcp",), "OMPI_MCA_osc", "^ucx", "no RDMA: shared windows (mpirt's shm) without the UCX component, "
                                                   "which prints an error for every window it declines"),
    ("openmpi5", ("ib", "roce", "tcp"), "OMPI_MCA_btl_tcp_if_include", "{iface}", "MPI TCP traffic on the routed interface"),
    ("openmpi5", ("ib", "roce", "tcp"), "PRTE_MCA_prte_if_include", "{iface}", "PRRTE's own traffic on the routed interface"),
    ("mpich", _RDMA, "FI_PROVIDER", "verbs", "libfabric over verbs for InfiniBand/RoCE"),
    ("mpich", ("tcp",), "FI_PROVIDER", "tcp", "no RDMA: libfabric over TCP"),
    ("mpich", ("tcp",), "FI_TCP_IFACE", "{iface}", "libfabric TCP on the routed interface"),
    ("mpich", ("ib", "roce", "tcp"), "HYDRA_IFACE", "{iface}", "Hydra's own traffic on the routed interface"),
    ("intel", ("ib", "roce", "tcp"), "I_MPI_FABRICS", "shm:ofi", "shared memory within a host, OFI between hosts"),
    ("intel", _RDMA, "I_MPI_OFI_PROVIDER", "mlx", "the mlx provider (UCX) for InfiniBand/RoCE"),
    ("intel", ("tcp",), "I_MPI_OFI_PROVIDER", "tcp", "no RDMA: OFI over TCP"),
    ("intel", ("tcp",), "FI_TCP_IFACE", "{iface}", "OFI TCP on the routed interface"),
    ("intel", ("ib", "roce", "tcp"), "I_MPI_HYDRA_IFACE", "{iface}", "Hydra's own traffic on the routed interface"),
]
# mpirt's own ring on the TCP tier, where measured (docs/allreduce.md, across hosts over TCP): Open
# MPI 4.1 and 5.0, whose ob1 PML and TCP BTL behave alike there; for MPICH 5 (ch4:ucx), whose
# transport kept the link busy between two hosts, only the threshold.
RING_TCP = [
    ("MPIRT_AUTO_RING_MIN_BYTES", "1048576",
     "mpirt's algo auto runs its ring (hier with several ranks a host) across hosts from 1 MiB: Open MPI's own choice "
     "(4.1 and 5.0) was 2.0-3.0x slower there on 3 hosts, 1.3-1.9x on 4 (docs/allreduce.md)"),
    ("MPIRT_RING_SEGMENT_BYTES", "61440",
     "mpirt's ring sends 60 KiB segments, eager under the TCP BTL's 64 KiB limit: larger ones wait for a rendezvous "
     "reply queued behind the peer's data on the same socket, which halved the rate between 2 hosts "
     "(docs/allreduce.md)"),
    ("MPIRT_RING_WAIT_US", "50",
     "mpirt's ring waits for the network by testing every 50 us instead of polling, leaving the cores to training: "
     "3 namespace hosts trained 0.89x -> 0.98x DDP's speed (docs/allreduce.md)"),
]
TIER += [(lib, ("tcp",), name, value, reason) for lib in ("openmpi4", "openmpi5") for name, value, reason in RING_TCP]
# Only a job across hosts runs the ring over TCP; on one host the sleeping wait only slowed an
# explicit `ring` over shared memory (0.002 GB/s at 1 KiB on 2 local ranks).
ACROSS_HOSTS = frozenset(name for name, _, _ in RING_TCP)
TIER.append(("mpich", ("tcp",), *RING_TCP[0][:2],  # the threshold alone
             "mpirt's algo auto runs its ring across hosts from 1 MiB: MPICH 5.0's own allreduce was 1.9-2.5x slower "
             "there on 3 hosts (docs/allreduce.md)"))

PROFILES: dict[str, dict[str, tuple[str, str]]] = {
    "rl": {
        "NCCL_IB_DISABLE": ("1", "RL weight sync between trainer and rollout processes hangs over IB/RoCE "
                                 "groups created inside inference engines; sockets are reliable"),
        "NCCL_P2P_DISABLE": ("1", "the weight-sync group and the engines must agree; P2P mismatches hang "
                                  "(transport/p2p.cc 'invalid argument')"),
        "NCCL_CUMEM_ENABLE": ("0", "kept identical in trainer and inference engine (vLLM/SGLang set 0); a mismatch "
                                   "hangs weight sync"),
        "NCCL_NVLS_ENABLE": ("0", "NVLink SHARP buffers cost memory colocated inference needs"),
    },
    "debug": {
        "NCCL_DEBUG": ("INFO", "NCCL reports its choices"),
        "NCCL_DEBUG_SUBSYS": ("INIT,NET,GRAPH,ENV", "init, network, topology and environment decisions"),
        "UCX_LOG_LEVEL": ("info", "UCX reports transports and devices"),
        "OMPI_MCA_pml_base_verbose": ("10", "Open MPI says which PML it selected"),
        "OMPI_MCA_btl_base_verbose": ("30", "Open MPI says which BTLs it selected and why others failed"),
        "MPIR_CVAR_DEBUG_SUMMARY": ("1", "MPICH prints its provider choice"),
        "I_MPI_DEBUG": ("5", "Intel MPI prints fabric and pinning"),
    },
}


def cpu_rules(cpus: CpuShare, libraries: list[str]) -> dict[str, EnvVar]:
    """OpenMP threads a rank: its share of the CPUs. Left alone, torch's MKL builds start one
    thread in a process that has MPI's rank variables (measured: a 2048 x 2048 matmul under
    mpirun at 1.9x the time of 2 threads on 2 cores), others one per core they see, however many
    ranks share those cores or however small the pod's CPU quota. And MPI's waiting, with more
    ranks than CPUs."""
    where = f"{cpus.host}: {cpus.ranks} rank{'s' if cpus.ranks > 1 else ''} on {cpus.cpus} CPUs ({cpus.why})"
    out = {"OMP_NUM_THREADS": EnvVar("OMP_NUM_THREADS", str(cpus.threads), "topology",
                                     f"{where}: left alone, torch's MKL builds start 1 thread a rank under MPI, "
                                     "others 1 per core they see")}
    if cpus.ranks > cpus.cpus:
        for lib, name, value in YIELD:
            if lib in libraries:
                out[name] = EnvVar(name, value, "topology", f"{where}: a rank waiting in MPI gives up its CPU to "
                                   "the rank it waits for, instead of polling")
    return out


def load_profiles(path: str | None) -> dict[str, dict[str, tuple[str, str]]]:
    """Built-in profiles plus those in the TOML file at ``path``."""
    profiles = {k: dict(v) for k, v in PROFILES.items()}
    if not path:
        return profiles
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise EnvError(f"profile file {path}: {e.strerror}; fix MPIRT_PROFILES") from e
    except tomllib.TOMLDecodeError as e:
        raise EnvError(f"profile file {path} is not valid TOML: {e}") from e
    for name, table in doc.get("profile", {}).items():
        if not isinstance(table, dict):
            raise EnvError(f"{path}: [profile.{name}] must be a table of VAR = \"value\"")
        reasons = table.get("reasons", {})
        entries = {}
        for var, value in table.items():
            if var == "reasons":
                continue
            if not isinstance(value, str) or not var.replace("_", "").isalnum():
                raise EnvError(f"{path}: in [profile.{name}], {var} = {value!r}: write VAR = \"value\" (a string)")
            entries[var] = (value, str(reasons.get(var, f"from profile {name} in {path}")))
        profiles[name] = entries
    return profiles


def resolve(tier: str, libraries: list[str], user_env: Mapping[str, str], *, iface: str | None = None,
            hcas: tuple[str, ...] = (), topology: Topology = Topology(), profile: str | None = None,
            profiles: Mapping[str, Mapping[str, tuple[str, str]]] = PROFILES, hosts: int | None = None,
            cpus: CpuShare | None = None) -> list[EnvVar]:
    """The variables to set, each with its source and reason, in a stable order. ``hosts``: the
    job's host count where known (one host gets none of the across-hosts settings); ``cpus``:
    the most crowded host's CPUs and ranks, where known."""
    if profile and profile not in profiles:
        raise EnvError(f"unknown profile {profile!r}; known: {', '.join(sorted(profiles))} (add your own in the file "
                       "named by MPIRT_PROFILES)")
    chosen: dict[str, EnvVar] = {}
    fill = {"iface": iface, "hcas": ",".join(hcas)}
    for lib, tiers, name, template, reason in TIER:
        if lib in libraries and tier in tiers and not (hosts == 1 and name in ACROSS_HOSTS):
            needs = [k for k in fill if "{" + k + "}" in template]
            if all(fill[k] for k in needs):
                chosen[name] = EnvVar(name, template.format(**fill), f"tier:{tier}", reason)
    if "nccl" in libraries:
        if topology.gpus >= 2 and not topology.p2p_ok:
            why = f"{topology.gpus} GPUs without peer-to-peer access between them (PCIe-only, VM or consumer GPUs)"
            chosen["NCCL_P2P_DISABLE"] = EnvVar("NCCL_P2P_DISABLE", "1", "topology", why)
            chosen["NCCL_SHM_DISABLE"] = EnvVar("NCCL_SHM_DISABLE", "1", "topology", why + ", on every process")
        if topology.shm_bytes < 1 << 30:
            chosen["NCCL_SHM_DISABLE"] = EnvVar("NCCL_SHM_DISABLE", "1", "topology",
                                                f"/dev/shm is {topology.shm_bytes >> 20} MiB (< 1 GiB); better: "
                                                "give the pod a larger /dev/shm")
        if topology.mig:
            chosen["NCCL_NVLS_ENABLE"] = EnvVar("NCCL_NVLS_ENABLE", "0", "topology",
                                                "MIG instances have no NVLink between them")
    if cpus:
        chosen.update(cpu_rules(cpus, libraries))
    if profile:
        for name, (value, reason) in profiles[profile].items():
            chosen[name] = EnvVar(name, value, f"profile:{profile}", reason)
    for name in list(chosen):
        if name in user_env:
            chosen[name] = EnvVar(name, user_env[name], "user", f"set by you (mpirt would use {chosen[name].value!r}: "
                                  f"{chosen[name].reason})")
    return sorted(chosen.values(), key=lambda v: v.name)
