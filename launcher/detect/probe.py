"""One host's detection result (``mpirt env`` shows it; the launcher gathers it from every
host over ssh): tier, HCAs, bootstrap interface, memlock, /dev/shm, GPUs seen as device nodes,
the CPUs its ranks may use."""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.detect.cpus import budget, machine
from launcher.detect.gpu import device_nodes
from launcher.detect.netif import bootstrap_interface
from launcher.detect.rdma import classify, ports


@dataclass(frozen=True)
class Probe:
    tier: str
    hcas: tuple[str, ...]
    iface: str | None
    memlock: int
    shm_bytes: int
    gpus: int
    notes: tuple[str, ...]
    ports: tuple[dict, ...]
    cpus: int | None = None  # what this host's ranks may use (launcher.detect.cpus); None: an older probe
    cpus_why: str = ""
    cores: int = 0  # the machine's, as os.cpu_count() counts them
    machine: str = ""  # its kernel's boot id: hosts on one machine share its cores

    def to_json(self) -> dict:
        return asdict(self)


def memlock_limit(root: Path) -> int:
    """The soft locked-memory limit in bytes (-1: unlimited), from ``proc/self/limits`` under root."""
    try:
        for line in (root / "proc/self/limits").read_text().splitlines():
            if line.startswith("Max locked memory"):
                soft = line[len("Max locked memory"):].split()[0]
                return -1 if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def probe(root: Path, peer: str | None = None) -> Probe:
    if not (root / "sys").is_dir():
        raise ValueError(f"{root / 'sys'} is not a readable sysfs; mount /sys in the container or fix --root "
                         "(MPIRT_SYSFS_ROOT)")
    memlock = memlock_limit(root)
    found = ports(root)
    tier = classify(found, memlock)
    try:
        route_text = (root / "proc/net/route").read_text()
    except OSError:
        route_text = ""
    try:
        st = os.statvfs(root / "dev/shm")
        shm = st.f_frsize * st.f_blocks
    except OSError:
        shm = 0
    cpus = budget(root)
    return Probe(tier.tier, tier.hcas, bootstrap_interface(route_text, peer), memlock, shm,
                 device_nodes(root), tier.notes,
                 tuple({"port": p.name, "link_layer": p.link_layer, "state": p.state, "rate": p.rate, "kind": p.kind,
                        "why": p.why} for p in found), cpus.count, cpus.why, os.cpu_count() or 1, machine(root))
