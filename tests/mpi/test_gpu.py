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
    assert report == {"ranks": np_, "checked": ["none", "bf16"]}
