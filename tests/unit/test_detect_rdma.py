"""Tier detection over fixture sysfs/dev trees: IB, RoCE v2, phantom VF, TCP only, an HCA
without its uverbs device, mixed IB+RoCE, a small memlock limit."""

from pathlib import Path

from launcher.detect.rdma import classify, ports

UNLIMITED = -1
V1_LL = ("fe80:0000:0000:0000:0202:c9ff:fe00:0001", "IB/RoCE v1")
V2_LL = ("fe80:0000:0000:0000:0202:c9ff:fe00:0001", "RoCE v2")
V1_IP = ("0000:0000:0000:0000:0000:ffff:0a00:3c03", "IB/RoCE v1")
V2_IP = ("0000:0000:0000:0000:0000:ffff:0a00:3c03", "RoCE v2")


def put(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def hca(root: Path, dev: str, link: str, state="4: ACTIVE", gids=(), ndev="", uverbs=True, rate="200 Gb/sec (4X HDR)"):
    d = f"sys/class/infiniband/{dev}/ports/1"
    put(root, f"{d}/link_layer", link)
    put(root, f"{d}/state", state)
    put(root, f"{d}/rate", rate)
    put(root, f"{d}/gids/0", "fe80:0000:0000:0000:0202:c9ff:fe00:0000" if link == "InfiniBand" else
        "0000:0000:0000:0000:0000:0000:0000:0000")
    for i, (gid, kind) in enumerate(gids):
        put(root, f"{d}/gids/{i}", gid)
        put(root, f"{d}/gid_attrs/types/{i}", kind)
        if ndev:
            put(root, f"{d}/gid_attrs/ndevs/{i}", ndev)
    if ndev:
        put(root, f"sys/class/net/{ndev}/operstate", "up")
    if uverbs:
        n = len(list((root / "sys/class/infiniband_verbs").glob("uverbs*"))) if (
            root / "sys/class/infiniband_verbs").exists() else 0
        put(root, f"sys/class/infiniband_verbs/uverbs{n}/ibdev", dev)
        put(root, f"dev/infiniband/uverbs{n}", "")


def test_infiniband_node_with_8_hcas(tmp_path):
    for i in range(8):
        hca(tmp_path, f"mlx5_{i}", "InfiniBand")
    t = classify(ports(tmp_path), UNLIMITED)
    assert t.tier == "ib" and t.hcas == tuple(f"mlx5_{i}:1" for i in range(8))


def test_roce_v2_node_picks_the_v2_gid(tmp_path):
    hca(tmp_path, "mlx5_0", "Ethernet", gids=[V1_LL, V2_LL, V1_IP, V2_IP], ndev="eth1")
    found = ports(tmp_path)
    t = classify(found, UNLIMITED)
    assert t.tier == "roce" and t.hcas == ("mlx5_0:1",)
    assert found[0].why == "RoCE v2 GID 3 on eth1"  # link-local v2 (index 1) is skipped


def test_phantom_vf_is_not_roce(tmp_path):
    hca(tmp_path, "mlx5_0", "Ethernet", gids=[V2_IP], ndev="")
    found = ports(tmp_path)
    assert classify(found, UNLIMITED).tier == "tcp"
    assert "phantom VF" in found[0].why


def test_tcp_only_node(tmp_path):
    put(tmp_path, "sys/class/net/eth0/operstate", "up")
    t = classify(ports(tmp_path), UNLIMITED)
    assert t.tier == "tcp" and t.hcas == () and t.ports == ()


def test_hca_in_sysfs_without_uverbs_device(tmp_path):
    hca(tmp_path, "mlx5_0", "InfiniBand", uverbs=False)
    found = ports(tmp_path)
    assert classify(found, UNLIMITED).tier == "tcp"
    assert "not injected" in found[0].why


def test_mixed_ib_and_roce_keeps_one_kind(tmp_path):
    hca(tmp_path, "mlx5_0", "InfiniBand")
    hca(tmp_path, "mlx5_1", "Ethernet", gids=[V2_IP], ndev="eth1")
    t = classify(ports(tmp_path), UNLIMITED)
    assert t.tier == "ib" and t.hcas == ("mlx5_0:1",)
    assert "using InfiniBand only" in t.notes[0]


def test_down_port_and_small_memlock(tmp_path):
    hca(tmp_path, "mlx5_0", "InfiniBand", state="1: DOWN")
    hca(tmp_path, "mlx5_1", "InfiniBand")
    found = ports(tmp_path)
    assert found[0].why == "port state 1: DOWN"
    t = classify(found, 64 * 1024)
    assert t.tier == "tcp" and "ulimit -l unlimited" in t.notes[0]
    assert classify(found, UNLIMITED).hcas == ("mlx5_1:1",)
