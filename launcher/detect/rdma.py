"""RDMA ports and the network tier, read from a sysfs/dev tree (a fixture in tests).

A port counts only when it is ACTIVE, its uverbs device is in this container's /dev and
openable, and (for Ethernet) it carries a RoCE v2 GID bound to a network device; phantom
VFs (verbs but no netdev) are not RoCE. Tier: InfiniBand > RoCE > TCP; a node with both
kinds keeps the HCA list to one kind, since NCCL refuses to merge mixed link types.
Facts: ../shared/reference/network-tier-and-env.md sections 0 and 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Gid:
    index: int
    gid: str
    kind: str  # "RoCE v2", "IB/RoCE v1", or "" when unreadable
    ndev: str  # bound network device, "" when none


@dataclass(frozen=True)
class Port:
    dev: str
    port: int
    link_layer: str  # InfiniBand | Ethernet | Unknown
    state: str
    rate: str
    gids: tuple[Gid, ...]
    uverbs: str  # the /dev/infiniband/uverbsN serving dev, "" when none
    kind: str  # ib | roce | none
    why: str  # why it is unusable, or what it is

    @property
    def name(self) -> str:
        return f"{self.dev}:{self.port}"


@dataclass(frozen=True)
class Tier:
    tier: str  # ib | roce | tcp
    hcas: tuple[str, ...]  # dev:port of the chosen kind
    ports: tuple[Port, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # containers may map only part of the GID table (EINVAL)
        return None


def _uverbs(root: Path) -> dict[str, str]:
    """ibdev -> uverbs device name, for those whose /dev node exists and opens."""
    out = {}
    verbs = root / "sys/class/infiniband_verbs"
    for entry in sorted(verbs.glob("uverbs*")) if verbs.is_dir() else []:
        ibdev = _read(entry / "ibdev")
        node = root / "dev/infiniband" / entry.name
        if ibdev and node.exists() and os.access(node, os.R_OK | os.W_OK):
            out[ibdev] = entry.name
    return out


def _netdev_up(root: Path, name: str) -> bool:
    return _read(root / "sys/class/net" / name / "operstate") in ("up", "unknown")


def _gids(port_dir: Path) -> tuple[Gid, ...]:
    out = []
    gdir = port_dir / "gids"
    for g in sorted(gdir.iterdir(), key=lambda p: int(p.name)) if gdir.is_dir() else []:
        value = _read(g)
        if not value or not value.replace("0", "").replace(":", "") or value.startswith("fe80:"):
            continue  # empty, all-zero or link-local
        out.append(Gid(int(g.name), value, _read(port_dir / "gid_attrs/types" / g.name) or "",
                       _read(port_dir / "gid_attrs/ndevs" / g.name) or ""))
    return tuple(out)


def ports(root: Path) -> list[Port]:
    base = root / "sys/class/infiniband"
    if not base.is_dir():
        return []
    verbs = _uverbs(root)
    out = []
    for dev in sorted(p.name for p in base.iterdir()):
        pdir = base / dev / "ports"
        for pd in sorted(pdir.iterdir(), key=lambda p: int(p.name)) if pdir.is_dir() else []:
            ll = _read(pd / "link_layer") or "Unknown"
            state = _read(pd / "state") or ""
            gids = _gids(pd)
            kind, why = "none", ""
            if not state.endswith("ACTIVE"):
                why = f"port state {state or 'unknown'}"
            elif dev not in verbs:
                why = "no usable /dev/infiniband/uverbs* for it in this container (RDMA device not injected)"
            elif ll == "InfiniBand":
                kind, why = "ib", "InfiniBand"
            elif ll == "Ethernet":
                v2 = [g for g in gids if g.kind == "RoCE v2" and g.ndev and _netdev_up(root, g.ndev)]
                if v2:
                    kind, why = "roce", f"RoCE v2 GID {v2[0].index} on {v2[0].ndev}"
                elif not any(g.ndev for g in gids):
                    why = "no network device behind its GIDs (a phantom VF)"
                else:
                    why = "no RoCE v2 GID on an up network device"
            else:
                why = f"link layer {ll} (needs a NCCL net plugin)"
            out.append(Port(dev, int(pd.name), ll, state, _read(pd / "rate") or "", gids, verbs.get(dev, ""), kind,
                            why))
    return out


def memlock_ok(limit: int) -> bool:
    """RDMA registers memory: the locked-memory limit must be unlimited or large (>= 1 GiB)."""
    return limit < 0 or limit >= 1 << 30


def classify(found: list[Port], memlock: int) -> Tier:
    ib = tuple(p.name for p in found if p.kind == "ib")
    roce = tuple(p.name for p in found if p.kind == "roce")
    notes = []
    if (ib or roce) and not memlock_ok(memlock):
        notes.append(f"locked-memory limit {memlock} bytes is too small for RDMA; run the pod with "
                     "`ulimit -l unlimited` (IPC_LOCK / memlock) — using TCP")
        return Tier("tcp", (), tuple(found), tuple(notes))
    if ib and roce:
        notes.append(f"both InfiniBand ({', '.join(ib)}) and RoCE ({', '.join(roce)}) ports: using InfiniBand only "
                     "(NCCL cannot merge mixed link types)")
    if ib:
        return Tier("ib", ib, tuple(found), tuple(notes))
    if roce:
        return Tier("roce", roce, tuple(found), tuple(notes))
    return Tier("tcp", (), tuple(found), tuple(notes))
