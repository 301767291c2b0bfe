"""GPUs and how they connect, through one small interface over NVML (nvidia-ml-py), so tests
give fixture machines instead of a driver. No GPU or no driver is a normal result (no GPUs).

Per pair the link is NVLink (``NV<n>``, n links) or the PCIe distance in nvidia-smi's words:
PIX (one switch), PXB (several switches), PHB (host bridge), NODE (same NUMA node), SYS (across
sockets). GPU-to-NIC distance compares PCI paths in sysfs the same way NCCL does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mpirt.console import ranges

# NVML common-ancestor levels -> nvidia-smi topo -m notation.
LEVELS = {0: "PIX", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    bus_id: str  # "0000:1b:00.0"
    numa_node: int  # -1 when unknown
    cpu_affinity: str  # "0-47,96-143"
    mig: bool
    nvlinks: dict = field(default_factory=dict)  # remote bus id (or "switch") -> number of links


@dataclass(frozen=True)
class Pair:
    level: int  # NVML common ancestor level
    p2p_read: bool
    p2p_write: bool


class GpuSource(Protocol):
    def gpus(self) -> list[Gpu]: ...

    def pair(self, a: int, b: int) -> Pair: ...


@dataclass(frozen=True)
class GpuTopology:
    gpus: tuple[Gpu, ...]
    matrix: tuple[tuple[str, ...], ...]  # [i][j]: "X", "NV4", "PIX", ...
    p2p_ok: bool  # every pair can read and write peer memory
    nvlink_any: bool
    mig: bool
    error: str = ""  # why there are no GPUs, when NVML could not answer


def link(a: Gpu, b: Gpu, pair: Pair) -> str:
    """NVLink to the peer directly, or through NVSwitches both reach; else the PCIe distance."""
    n = a.nvlinks.get(b.bus_id.lower(), 0) or min(a.nvlinks.get("switch", 0), b.nvlinks.get("switch", 0))
    return f"NV{n}" if n else LEVELS.get(pair.level, "SYS")


def topology(source: GpuSource | None, error: str = "") -> GpuTopology:
    gpus = tuple(source.gpus()) if source else ()
    rows, p2p_ok = [], True
    for a in gpus:
        row = []
        for b in gpus:
            if a.index == b.index:
                row.append("X")
                continue
            pr = source.pair(a.index, b.index)
            p2p_ok &= pr.p2p_read and pr.p2p_write
            row.append(link(a, b, pr))
        rows.append(tuple(row))
    return GpuTopology(gpus, tuple(rows), p2p_ok, any(g.nvlinks for g in gpus), any(g.mig for g in gpus), error)


class NvmlSource:
    """The real machine through nvidia-ml-py (imported only here)."""

    def __init__(self):
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def _try(self, fn, *args, default=None):
        try:
            return fn(*args)
        except self.nv.NVMLError:
            return default

    def gpus(self) -> list[Gpu]:
        nv, out = self.nv, []
        for i, h in enumerate(self.handles):
            links: dict[str, int] = {}
            for k in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
                if self._try(nv.nvmlDeviceGetNvLinkState, h, k) != nv.NVML_FEATURE_ENABLED:
                    continue
                kind = self._try(getattr(nv, "nvmlDeviceGetNvLinkRemoteDeviceType", lambda *_: None), h, k)
                remote = self._try(nv.nvmlDeviceGetNvLinkRemotePciInfo_v2, h, k)
                if kind == getattr(nv, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2):
                    links["switch"] = links.get("switch", 0) + 1
                elif remote is not None:
                    bus = _text(remote.busId).lower()[-12:]
                    links[bus] = links.get(bus, 0) + 1
            mig = self._try(nv.nvmlDeviceGetMigMode, h, default=(0, 0))
            bus = _text(nv.nvmlDeviceGetPciInfo(h).busId).lower()[-12:]
            out.append(Gpu(i, _text(nv.nvmlDeviceGetName(h)), _text(nv.nvmlDeviceGetUUID(h)),
                           int(nv.nvmlDeviceGetMemoryInfo(h).total), bus,
                           self._try(nv.nvmlDeviceGetNumaNodeId, h, default=-1),
                           _cpus(self._try(nv.nvmlDeviceGetCpuAffinity, h, 16, default=[])), bool(mig[0]), links))
        return out

    def pair(self, a: int, b: int) -> Pair:
        nv, ha, hb = self.nv, self.handles[a], self.handles[b]
        level = self._try(nv.nvmlDeviceGetTopologyCommonAncestor, ha, hb, default=50)
        ok = nv.NVML_P2P_STATUS_OK
        return Pair(int(level), self._try(nv.nvmlDeviceGetP2PStatus, ha, hb, nv.NVML_P2P_CAPS_INDEX_READ) == ok,
                    self._try(nv.nvmlDeviceGetP2PStatus, ha, hb, nv.NVML_P2P_CAPS_INDEX_WRITE) == ok)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _cpus(words: list[int]) -> str:
    """An NVML affinity bitmask (64-bit words) as a cpulist: "0-3,8"."""
    return ",".join(ranges([w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1]))


def device_nodes(root: Path) -> int:
    """GPUs this container can open, counted from /dev/nvidiaN under root (no driver call)."""
    return len(list((root / "dev").glob("nvidia[0-9]*")))


def local() -> GpuTopology:
    """This machine's GPUs; none (with the reason) when there is no driver or no GPU."""
    try:
        return topology(NvmlSource())
    except ImportError:
        return topology(None, "nvidia-ml-py is not installed")
    except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPUs here
        return topology(None, f"NVML: {e}")


def pci_level(root: Path, gpu_bus: str, nic_dev: str) -> str:
    """nvidia-smi distance between a GPU (PCI bus id) and an RDMA device, from sysfs paths."""
    g = Path(os.path.realpath(root / "sys/bus/pci/devices" / gpu_bus.lower()))
    n = Path(os.path.realpath(root / "sys/class/infiniband" / nic_dev / "device"))
    common = 0
    for x, y in zip(g.parts, n.parts):
        if x != y:
            break
        common += 1
    shared = g.parts[:common]
    below_root_port = sum(1 for p in shared if _is_bdf(p))
    if g.parent == n.parent:
        return "PIX"
    if below_root_port:
        return "PXB"
    if any(p.startswith("pci") for p in shared):
        return "PHB"
    numa = [_read_int(p / "numa_node") for p in (g, n)]
    return "NODE" if numa[0] == numa[1] and numa[0] >= 0 else "SYS"


def _is_bdf(part: str) -> bool:
    return len(part) == 12 and part[4] == ":" and part[7] == ":" and part[10] == "."


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return -1
