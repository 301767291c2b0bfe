"""GPU topology from fixture NVML answers (behind the GpuSource interface) and GPU-NIC PCI
distance from fixture sysfs trees."""

import os
from dataclasses import dataclass

from launcher.detect.gpu import Gpu, Pair, pci_level, topology
from launcher.envdefaults import Topology, resolve


@dataclass
class Machine:
    """A fixture machine answering as NVML would."""

    gpu_list: list
    level: int
    p2p: bool

    def gpus(self):
        return self.gpu_list

    def pair(self, a, b):
        return Pair(self.level, self.p2p, self.p2p)


def gpu(i, nvlinks=None, mig=False, numa=0):
    return Gpu(i, "NVIDIA H100 80GB HBM3", f"GPU-{i:08x}", 80 << 30, f"0000:{0x18 + i:02x}:00.0", numa, "0-47", mig,
               nvlinks or {})


def test_eight_gpus_on_nvswitch():
    topo = topology(Machine([gpu(i, {"switch": 18}) for i in range(8)], level=50, p2p=True))
    assert topo.p2p_ok and topo.nvlink_any and not topo.mig
    assert topo.matrix[0] == ("X",) + ("NV18",) * 7 and topo.matrix[7][7] == "X"


def test_four_pcie_gpus_without_p2p_disable_nccl_p2p():
    topo = topology(Machine([gpu(i) for i in range(4)], level=30, p2p=False))
    assert not topo.p2p_ok and not topo.nvlink_any and topo.matrix[1] == ("PHB", "X", "PHB", "PHB")
    env = {v.name: v.source for v in resolve("tcp", ["nccl"], {}, topology=Topology(gpus=4, p2p_ok=topo.p2p_ok))}
    assert env["NCCL_P2P_DISABLE"] == env["NCCL_SHM_DISABLE"] == "topology"


def test_direct_nvlink_pairs_and_mig():
    a = gpu(0, {"0000:19:00.0": 4}, mig=True)
    b = gpu(1, {"0000:18:00.0": 4}, mig=True)
    topo = topology(Machine([a, b], level=20, p2p=True))
    assert topo.matrix == (("X", "NV4"), ("NV4", "X")) and topo.mig
    env = {v.name: v.value for v in resolve("tcp", ["nccl"], {}, topology=Topology(gpus=2, mig=True))}
    assert env["NCCL_NVLS_ENABLE"] == "0"


def test_no_gpu_is_a_normal_result():
    topo = topology(None, "NVML: Driver Not Loaded")
    assert topo.gpus == () and topo.matrix == () and topo.p2p_ok and topo.error == "NVML: Driver Not Loaded"


def pci_tree(root, gpu_path, nic_path, numa=(0, 0)):
    for rel, bus, node in ((gpu_path, gpu_path.rsplit("/", 1)[1], numa[0]), (nic_path, None, numa[1])):
        d = root / "sys/devices" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "numa_node").write_text(f"{node}\n")
        if bus:
            link = root / "sys/bus/pci/devices" / bus
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(d, link)
        else:
            ib = root / "sys/class/infiniband/mlx5_0"
            ib.mkdir(parents=True, exist_ok=True)
            os.symlink(d, ib / "device")


SW = "pci0000:00/0000:00:01.0/0000:01:00.0"


def test_gpu_nic_distance_levels(tmp_path):
    cases = {
        "PIX": (f"{SW}/0000:02:00.0/0000:03:00.0", f"{SW}/0000:02:00.0/0000:04:00.0", (0, 0)),
        "PXB": (f"{SW}/0000:02:00.0/0000:03:00.0", f"{SW}/0000:02:01.0/0000:04:00.0", (0, 0)),
        "PHB": ("pci0000:00/0000:00:01.0/0000:03:00.0", "pci0000:00/0000:00:02.0/0000:04:00.0", (0, 0)),
        "NODE": ("pci0000:00/0000:00:01.0/0000:03:00.0", "pci0000:40/0000:40:01.0/0000:41:00.0", (0, 0)),
        "SYS": ("pci0000:00/0000:00:01.0/0000:03:00.0", "pci0000:80/0000:80:01.0/0000:81:00.0", (0, 1)),
    }
    for level, (g, n, numa) in cases.items():
        root = tmp_path / level
        pci_tree(root, g, n, numa)
        assert pci_level(root, "0000:03:00.0", "mlx5_0") == level, level


def test_mpirt_topo_without_a_driver_is_a_normal_answer(tmp_path):
    import json
    import subprocess

    from test_detect_rdma import hca

    hca(tmp_path, "mlx5_0", "InfiniBand")
    proc = subprocess.run(["mpirt", "topo", "--json", "--root", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["nics"] == ["mlx5_0"]
    if not doc["gpus"]:  # this machine: no driver
        assert doc["error"] and doc["matrix"] == [] and doc["p2p_ok"]
    text = subprocess.run(["mpirt", "topo", "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "NIC0: mlx5_0" in text.stdout
