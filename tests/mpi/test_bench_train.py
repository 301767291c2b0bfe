"""The training benchmark's rank side with several bucket sizes (benchmarks/buckets.py),
compile modes (benchmarks/compile.py) or allreduces (benchmarks/powersgd.py): mpirt trains once
per size, mode or algo in every turn, each under its own name, and a bad list is refused before
any training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

TRAIN = [sys.executable, "-P", "-m", "mpirt.bench.train"]


def trained(mpiexec, np_: int, out: Path, repeats: int, *args: str) -> dict:
    """Rank 0's record of a short weak-scaling job of the compute model on ``np_`` ranks."""
    mpiexec(np_, TRAIN + ["--json", str(out), "--model", "compute", "--scaling", "weak", "--batch", "8", "--steps",
                          "1", "--warmup", "1", "--repeats", str(repeats), "--device", "cpu", *args], timeout=300)
    return json.loads(out.read_text())


@pytest.mark.parametrize("np_", [1, 2])
def test_every_bucket_size_trains_in_every_turn(mpiexec, tmp_path, np_):
    doc = trained(mpiexec, np_, tmp_path / "train.json", 2, "--bucket-mb", "0.5,25")
    by = {r["system"]: r for r in doc["results"]}
    assert list(by) == ["compute-only", "mpirt@0.5", "mpirt@25", "ddp"]
    assert all(len(r["step_s"]) == 2 and min(r["step_s"]) > 0 for r in by.values())
    # the compute model's 4 MiB layers: one a bucket at 0.5 MiB, all but the first 1 MiB bucket in one at 25
    assert by["mpirt@0.5"]["buckets"] > by["mpirt@25"]["buckets"] == 2
    assert "buckets" not in by["ddp"] and set(doc["rank_view"]["reduced_by"]) == set(by)


@pytest.mark.parametrize("sizes", ["0,25", "4,x", "4,4", ""])
def test_a_bad_list_of_bucket_sizes_is_refused(tmp_path, sizes):
    proc = subprocess.run(TRAIN + ["--json", str(tmp_path / "t.json"), "--bucket-mb", sizes], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "give bucket sizes in MiB, positive and each once" in proc.stderr
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_every_algo_trains_in_every_turn(mpiexec, tmp_path, np_):
    """Each under its own name, reduced by the allreduce it names."""
    doc = trained(mpiexec, np_, tmp_path / "train.json", 2, "--algo", "core,torch")
    assert [r["system"] for r in doc["results"]] == ["compute-only", "mpirt:core", "mpirt:torch", "ddp"]
    assert all(len(r["step_s"]) == 2 and min(r["step_s"]) > 0 for r in doc["results"])
    assert doc["rank_view"]["reduced_by"]["mpirt:torch"] == "torch"
    assert doc["rank_view"]["reduced_by"]["mpirt:core"].startswith("core")


def test_both_compile_modes_train_in_every_turn(mpiexec, tmp_path):
    doc = trained(mpiexec, 2, tmp_path / "train.json", 1, "--compile", "whole,split")
    assert [r["system"] for r in doc["results"]] == ["compute-only", "mpirt+whole", "mpirt+split", "ddp"]
    assert all(min(r["step_s"]) > 0 for r in doc["results"])


@pytest.mark.parametrize("args, message", [
    (["--compile", "fast"], "give none, or whole and/or split"),
    (["--compile", "split,split"], "give none, or whole and/or split"),
    (["--compile", "split", "--bucket-mb", "1,25"], "--bucket-mb with --compile: each trains mpirt once per value"),
    (["--algo", "nccl"], "give data_parallel algos, each once, from auto, core,"),
    (["--algo", "torch,torch"], "give data_parallel algos, each once"),
    (["--algo", "auto,torch", "--bucket-mb", "1,25"], "--bucket-mb with --algo: each trains mpirt once per value")])
def test_a_bad_list_is_refused(tmp_path, args, message):
    proc = subprocess.run(TRAIN + ["--json", str(tmp_path / "t.json"), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "t.json").exists()
