"""CUDA buffers through the core and the benchmark; skipped where no GPU is visible."""

import json

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.mpi,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]


@pytest.mark.parametrize("np_", [1, 2])
def test_device_buffers_every_algorithm(mpiexec, np_, tmp_path):
    out = tmp_path / "r.json"
    mpiexec(np_, ["mpirt-allreduce-perf", "-D", "cuda", "-b", "8", "-e", "16M", "-f", "16", "-a", "all",
                  "-d", "bfloat16", "-o", "avg", "-J", str(out)])
    doc = json.loads(out.read_text())
    assert doc["device"] == "cuda"
    assert all(r["wrong"] == 0 for r in doc["results"])


@pytest.mark.parametrize("np_", [1, 2])
def test_data_parallel_on_cuda_matches_reference(mpiexec, np_):
    proc = mpiexec.python(np_, "dp_cuda.py")
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report == {"ranks": np_, "checked": ["none", "bf16", "torch none", "amp", "buffers"]}


@pytest.mark.parametrize("np_", [1, 2])
def test_horovod_api_on_cuda(mpiexec, np_):
    """mpirt.horovod with the model, data and every tensor on the GPU: the core's device path,
    mpi4py's staged one (int64, float64 products), NCCL under DistributedOptimizer."""
    from test_horovod import ACROSS_RANKS, EXPECTED

    proc = mpiexec.python(np_, "horovod_script.py", "cuda", timeout=300)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["checked"] == EXPECTED + (ACROSS_RANKS if np_ > 1 else [])


@pytest.mark.parametrize("np_", [1, 2])
def test_a_thread_on_device_0_reduces_on_the_tensors_device(mpiexec, np_):
    """With two GPUs or more the tensors are on the last devices, so the thread's device 0 is
    the wrong one: the core must switch, as it must for data_parallel's communication thread."""
    proc = mpiexec.python(np_, "cuda_thread_device.py")
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    devices = report["devices"]
    assert report["per_rank"] == [{"mpi": True, "ring": True, "auto": True, "thread device": devices - 1 - r % devices,
                                   "python entry": True, "main device": 0} for r in range(np_)]


def test_mpirt_train_on_gpus_gives_the_weights_of_one_rank(tmp_path):
    """The README job on the local ranks' GPUs: 2 ranks end where 1 rank does (within float
    tolerance: GPU kernels may sum in another order), and say they trained on CUDA."""
    import subprocess

    from mpirt import checkpoint

    same = ["--device", "cuda", "--optimizer", "sgd", "--lr", "0.05", "--steps", "8", "--batch-size", "24",
            "--samples", "240", "--checkpoint-every", "0", "--bucket-mb", "0.02"]
    weights = []
    for np_ in (1, 2):
        out = tmp_path / f"np{np_}"
        proc = subprocess.run(["mpirt", "launch", "-np", str(np_), "--", "mpirt", "train", "--out", str(out), *same],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        # auto: NCCL where every rank has a GPU of its own, the core where ranks share one
        nccl = torch.distributed.is_nccl_available() and torch.cuda.device_count() >= np_
        assert (summary["device"], summary["algo"]) == ("cuda", "torch" if nccl else "core"), summary
        weights.append(checkpoint.load_latest(out / "checkpoints")[1]["model"])
    for name, w1 in weights[0].items():
        assert torch.allclose(w1, weights[1][name], rtol=1e-4, atol=1e-5), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the NCCL baseline needs two GPUs (NCCL refuses two ranks on one)")
def test_scaling_on_gpus_has_nccl_beside_the_core(tmp_path):
    import subprocess
    import sys

    from mpirt.bench import schema

    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "scaling", "--out", str(out), "--max-np", "2",
                           "--device", "cuda", "--repeats", "2", "-b", "1K", "-e", "1M", "--steps", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = schema.load(out)
    algos = {r["key"]["algo"] for r in d["rows"] if r["kind"] == "collective"}
    assert algos == {"mpi", "ring", "shm", "auto", "ordered", "hier", "nccl"}
    assert {r["key"]["device"] for r in d["rows"]} == {"cuda"} and d["env"]["gpus"]
