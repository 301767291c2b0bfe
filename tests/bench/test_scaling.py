"""`mpirt bench scaling`: its checks before any rank starts, the arithmetic that turns rank
output into rows, and a real sweep at 1, 2 and 4 ranks through `mpirt launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import killed_outright
from mpirt.bench import schema
from mpirt.bench.scaling import (Placement, ScalingConfig, ScalingError, check, check_gpus, collective_rows,
                                 json_in, train_rows, world_sizes)

LOCAL = Placement(("localhost",), 2, "this machine", False)
REMOTE = Placement(("w0", "w1", "w2"), 3, "--hostfile h", True)


def test_world_sizes_double_up_to_the_maximum():
    assert world_sizes(1) == [1]
    assert world_sizes(4) == [1, 2, 4]
    assert world_sizes(6) == [1, 2, 4, 6]


def test_more_ranks_than_slots_is_refused_with_the_fix(tmp_path):
    out = str(tmp_path / "r.json")
    with pytest.raises(ScalingError, match=r"--max-np 4 is more than the 2 slots of this machine.*--oversubscribe"):
        check(ScalingConfig(out=out, max_np=4), LOCAL)
    assert check(ScalingConfig(out=out, max_np=4, oversubscribe=True), LOCAL) == (4, [1, 2, 4])
    with pytest.raises(ScalingError, match=r"--max-np 8 is more than the 3 slots on 3 hosts \(--hostfile h\)"):
        check(ScalingConfig(out=out, max_np=8, oversubscribe=True), REMOTE)
    assert check(ScalingConfig(out=out), REMOTE) == (3, [1, 2, 3])


def test_gpu_runs_need_a_gpu_per_local_rank():
    with pytest.raises(ScalingError,
                       match=r"up to 2 ranks on this machine, which has 1 GPU: .*use --max-np 1, or --device cpu"):
        check_gpus("cuda", LOCAL, 2, 1)
    with pytest.raises(ScalingError, match=r"--device cuda: this machine has no GPU .*use --device cpu"):
        check_gpus("cuda", LOCAL, 1, 0)
    check_gpus("cuda", LOCAL, 2, 2)
    check_gpus("cuda", REMOTE, 8, 0)  # the hosts' GPUs are not known here
    check_gpus("cpu", LOCAL, 4, 0)


def test_options_that_cannot_work_are_refused(tmp_path):
    out = str(tmp_path / "r.json")
    with pytest.raises(ScalingError, match=r"--global-batch 50 does not split evenly over 4 ranks; give a multiple of 4"):
        check(ScalingConfig(out=out, max_np=4, oversubscribe=True, global_batch=50), LOCAL)
    with pytest.raises(ScalingError, match="--parts nccl"):
        check(ScalingConfig(out=out, parts=("nccl",)), LOCAL)
    with pytest.raises(ScalingError, match="--algos mpi,tree"):
        check(ScalingConfig(out=out, algos="mpi,tree"), LOCAL)
    with pytest.raises(ScalingError, match="--scaling linear"):
        check(ScalingConfig(out=out, scalings=("linear",)), LOCAL)
    with pytest.raises(ScalingError, match=r"--out .*not a writable directory"):
        check(ScalingConfig(out=str(tmp_path / "no" / "r.json")), LOCAL)


def test_result_is_found_among_other_output():
    out = "# a table\n  1024 ...\n{not json\n" + json.dumps({"schema": "x", "v": 1}) + "\nafter\n"
    assert json_in(out, lambda d: d.get("schema") == "x") == {"schema": "x", "v": 1}
    with pytest.raises(ScalingError, match="no result"):
        json_in("nothing here", lambda d: True)


def harness(busbw: float, wrong: int = 0) -> dict:
    return {"config": {"dtype": "float32", "op": "sum"}, "device": "cpu",
            "results": [{"size": 1024, "algo": a, "algo_used": a, "mode": "out-of-place", "iters": 10,
                         "time_us": {"avg": 1.0}, "algbw_gbs": busbw * f, "busbw_gbs": busbw * f, "wrong": wrong}
                        for a, f in (("mpi", 1.0), ("ring", 2.0))]}


def test_collective_rows_repeat_and_relate():
    rows = {schema.row_id(r): r for r in collective_rows({2: [harness(1.0), harness(3.0)], 4: [harness(1.0)]})}
    ring2 = rows[("collective", 2, "ring", 1024, "out-of-place", "float32", "sum", "cpu")]
    assert ring2["metrics"]["busbw_gbs"]["samples"] == [2.0, 6.0] and ring2["metrics"]["busbw_gbs"]["median"] == 4.0
    assert ring2["derived"]["vs_mpi"] == pytest.approx(2.0)
    ring4 = rows[("collective", 4, "ring", 1024, "out-of-place", "float32", "sum", "cpu")]
    assert ring4["derived"]["efficiency"] == pytest.approx(0.5)  # busbw 2 at 4 ranks against 4 at 2
    with pytest.raises(ScalingError, match="wrong values"):
        collective_rows({2: [harness(1.0, wrong=3)]})


def test_train_rows_throughput_efficiency_and_comm_share():
    def job(n, steps):
        return {"model": "comm", "params": 10, "results": [
            {"scaling": "weak", "system": s, "per_rank_batch": 8, "global_batch": 8 * n, "step_s": t}
            for s, t in steps.items()]}
    runs = {1: job(1, {"compute-only": [0.1, 0.1], "mpirt": [0.1, 0.1], "ddp": [0.1, 0.1]}),
            2: job(2, {"compute-only": [0.1, 0.1], "mpirt": [0.125, 0.125], "ddp": [0.2, 0.2]})}
    rows = {(r["key"]["np"], r["key"]["system"]): r for r in train_rows(runs, "cpu")}
    mpirt2 = rows[(2, "mpirt")]
    assert mpirt2["metrics"]["samples_per_s"]["median"] == pytest.approx(128.0)
    assert mpirt2["derived"]["efficiency"] == pytest.approx(0.8)  # 128 / (2 x 80)
    assert mpirt2["metrics"]["comm_share"]["median"] == pytest.approx(0.2)
    assert mpirt2["derived"]["vs_ddp"] == pytest.approx(1.6)
    assert "comm_share" not in rows[(2, "compute-only")]["metrics"]


def test_bad_input_exits_2_before_any_rank(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(tmp_path / "r.json"),
                           "--max-np", str((os.cpu_count() or 1) + 1)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--oversubscribe" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(tmp_path / "r.json"),
                           "--hostfile", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "none (--hostfile)" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.mpi
@pytest.mark.e2e
def test_collective_sweep_on_shared_buffers(tmp_path):
    """--shared-buffers runs the harness with -R: its `shm` rows went direct, and the results say so."""
    out = tmp_path / "shared.json"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(out), "--max-np", "2",
                           "--parts", "collective", "--repeats", "1", "-b", "4K", "-e", "16K", "-n", "20", "--algos",
                           "shm,mpi", "--shared-buffers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = schema.load(out)
    assert d["config"]["collective"]["shared_buffers"] is True
    direct = {(r["key"]["algo"], r["key"]["size"]): r["info"]["shm_direct"] for r in d["rows"]}
    assert direct == {("shm", 4096): 1, ("shm", 16384): 1, ("mpi", 4096): None, ("mpi", 16384): None}


@pytest.mark.mpi
@pytest.mark.e2e
def test_small_real_sweep_at_1_2_and_4_ranks(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(out), "--max-np", "4",
                           "--oversubscribe", "--repeats", "2", "-b", "1K", "-e", "16K", "-n", "20", "--model",
                           "compute", "--batch", "8", "--steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = schema.load(out)
    assert d["benchmark"] == "scaling" and d["env"]["hosts"]["oversubscribed"] is True
    assert d["env"]["mpi"]["library"] and d["env"]["mpirt"]["git_commit"]
    coll = {(r["key"]["np"], r["key"]["algo"]) for r in d["rows"] if r["kind"] == "collective"}
    assert coll == {(n, a) for n in (2, 4) for a in ("mpi", "ring", "shm", "auto", "ordered", "hier")}
    train = [r for r in d["rows"] if r["kind"] == "train"]
    assert d["config"]["collective"]["shared_buffers"] is False
    assert {r["info"]["shm_direct"] for r in d["rows"] if r["kind"] == "collective" and r["key"]["algo"] == "shm"} == {0}
    assert d["config"]["train"]["reduced_by"] == {"compute-only": "none", "mpirt": "core (shared buckets)",
                                                  "ddp": "gloo"}  # as at the largest world size, 4 ranks
    assert {(r["key"]["np"], r["key"]["scaling"], r["key"]["system"]) for r in train} == {
        (n, sc, sy) for n in (1, 2, 4) for sc in ("weak", "strong") for sy in ("compute-only", "mpirt", "ddp")}
    for r in train:
        assert r["metrics"]["samples_per_s"]["n"] == 2 and r["metrics"]["samples_per_s"]["median"] > 0
        assert r["info"]["global_batch"] == (8 * r["key"]["np"] if r["key"]["scaling"] == "weak" else 32)
        if r["key"]["np"] == 1:
            assert r["derived"]["efficiency"] == pytest.approx(1.0)
    assert "| strong | 4 | mpirt |" in proc.stdout  # the printed view of the same data
    rep = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "report", str(out), "--out",
                          str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    for name in ("busbw.png", "efficiency.png", "throughput.png"):
        with Image.open(tmp_path / "report" / name) as im:
            assert im.format == "PNG"
    same = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "compare", str(out), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "0 regression(s)" in same.stdout


@pytest.mark.mpi
def test_a_sweep_killed_outright_takes_its_job_along(tmp_path):
    """SIGKILL to `mpirt bench scaling` (no handler runs): the kernel tells the `mpirt launch` it
    started (SIGTERM), which stops mpirun and the ranks, instead of a sweep going on unwatched."""
    argv = [sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(tmp_path / "r.json"), "--max-np",
            "2", "--parts", "collective", "--repeats", "1", "-b", "64M", "-e", "64M", "-n", "100000", "--algos", "ring"]
    assert not killed_outright(argv, up=5), "the sweep's job outlived mpirt bench scaling"  # launch, sentinel, mpirun, 2 ranks
    assert not (tmp_path / "r.json").exists()
