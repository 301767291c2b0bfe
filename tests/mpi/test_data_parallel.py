"""The data-parallel runtime with real ranks: gradients against no-communication references,
and the failure modes (an exception, a stall, a model mismatch) ending the job with a name."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import RANKS
from mpirt import checkpoint

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_gradients_match_references(mpiexec, np_):
    proc = mpiexec.python(np_, "dp_cases.py", timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1])
    assert report["ranks"] == np_
    for case in ("equivalence algo=shm overlap=True", "equivalence algo=mpi4py overlap=False", "broadcast",
                 "5 steps == single process", "accumulation (no_sync x2 + sync)", "compression fp16",
                 "compression bf16", "unused parameters find_unused=True", "unused parameters find_unused=False",
                 "two backward passes before a step", "misuse errors", "amp grad scaler",
                 "equivalence algo=ordered overlap=True", "ordered: bucket size leaves the bits alone",
                 "equivalence algo=torch overlap=True", "equivalence algo=torch overlap=False",
                 "algo=torch: a second object outlives the first", "compression fp16 algo=torch",
                 "powersgd r=1 start=0", "powersgd r=2 start=2", "complex parameters algo=auto",
                 "complex parameters algo=torch", "shared buckets none", "shared buckets fp16",
                 "shared buckets: /dev/shm full on one rank", "shared buckets only where shm reads them",
                 "buffers broadcast_buffers=True", "buffers broadcast_buffers=False", "buffers of every layout",
                 "frozen and thawed parameters", "empty shards, two optimizers",
                 "DataLoader through the sampler, 2 workers",
                 "accumulation backward_passes_per_step=3", "backward_passes_per_step=3: a step after one pass"):
        assert case in report["checked"]


def launch(np_, *args, env=None, timeout=120):
    cmd = ["mpirt", "launch", "-np", str(np_), "--", sys.executable, "-m", "mpirt", str(RANKS / "dp_faults.py"),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_exception_on_one_rank_stops_the_job_and_names_it(tmp_path):
    proc = launch(2, "raise", env={"MPIRT_ERROR_DIR": str(tmp_path)})
    ended = time.time()
    assert proc.returncode != 0
    assert "Root cause (first failure): rank 1 on " in proc.stderr
    assert "ValueError: injected failure at step 3" in proc.stderr
    record = json.loads((tmp_path / "rank-1.json").read_text())
    assert record["exception"] == "ValueError" and record["rank"] == 1
    assert ended - record["time"] < 10, "the job outlived the failing rank by 10 s or more"


@pytest.mark.parametrize("np_", [2, 4])
def test_stalled_rank_is_reported_by_rank_and_step(np_):
    proc = launch(np_, "stall", "4", env={"MPIRT_STALL_WARN_S": "1"})
    assert proc.returncode == 0, proc.stderr
    missing = np_ - 1
    assert f"missing ranks: {missing}\n" in proc.stderr
    assert f"rank {missing} (" in proc.stderr and "at step 3, outside any collective" in proc.stderr
    script = RANKS / "dp_faults.py"
    lines = script.read_text().splitlines()
    sleep, backward = (lines.index(text) + 1 for text in ("        time.sleep(float(sys.argv[2]))",
                                                           "    model(torch.randn(8, 4)).pow(2).mean().backward()"))
    assert f"its main thread is at {script}:{sleep} in <module>: time.sleep(float(sys.argv[2]))\n" in proc.stderr
    assert "in gradient allreduce of step 3" in proc.stderr
    assert (f"waiting: ranks {', '.join(str(r) for r in range(missing))}, at {script}:{backward} in <module>: "
            "model(torch.randn(8, 4)).pow(2).mean().backward()\n") in proc.stderr


def test_a_stall_in_the_buffer_broadcast_is_named_without_a_bucket():
    proc = launch(2, "stall-buffers", "4", env={"MPIRT_STALL_WARN_S": "1"})
    assert proc.returncode == 0, proc.stderr
    assert " in buffer broadcast of step 3; missing ranks: 0\n" in proc.stderr
    assert "rank 0 (" in proc.stderr and "at step 3, outside any collective" in proc.stderr


def test_stall_past_the_abort_threshold_ends_the_job(tmp_path):
    started = time.time()
    proc = launch(2, "stall", "120", env={"MPIRT_STALL_WARN_S": "1", "MPIRT_STALL_ABORT_S": "3",
                                         "MPIRT_ERROR_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert time.time() - started < 60
    assert "Root cause (first failure): rank 0 on " in proc.stderr and "Stall: stalled" in proc.stderr
    assert json.loads((tmp_path / "rank-0.json").read_text())["kind"] == "stall"


def test_model_mismatch_names_the_parameter_and_ranks():
    proc = launch(2, "mismatch")
    assert proc.returncode != 0
    assert ("ModelMismatchError: model differs across ranks: parameter '0.weight' is float32[16, 4] (cpu) on "
            "rank 0 but float32[20, 4] (cpu) on rank 1") in proc.stderr


@pytest.mark.parametrize("np_", [1, 2, 4])
@pytest.mark.parametrize("variant", ["plain", "fp16", "unused", "torch", "buffers"])
def test_uneven_inputs_under_join_end_together_with_the_same_weights(mpiexec, np_, variant):
    proc = mpiexec(np_, [sys.executable, "-m", "mpirt", str(RANKS / "dp_join.py"), variant], timeout=120)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report == {"ranks": np_, "variant": variant, "steps": [2 + r for r in range(np_)]}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_checkpointed_compiled_and_gan_training_average_each_backward_once(mpiexec, np_):
    proc = mpiexec(np_, [sys.executable, "-m", "mpirt", str(RANKS / "dp_graphs.py")], timeout=180)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report == {"ranks": np_, "checked": ["reentrant", "nested", "nonreentrant",
                                                     "penalty", "reused", "compiled", "compiled-first", "split",
                                                     "gan", "gan-no-sync"]}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_torchrun_code_gets_its_process_group_from_mpi(mpiexec, np_):
    proc = mpiexec.python(np_, "ddp_rendezvous.py", timeout=120)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report == {"ranks": np_, "backend": "gloo"}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_replica_check_names_what_differs_and_where(mpiexec, np_):
    proc = mpiexec.python(np_, "verify_replicas.py", timeout=120)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    if np_ == 1:
        assert report["messages"] == [None, None]
        return
    assert report["messages"] == [
        f"replicas diverged at step 2: buffer 'blocks.0.1.running_mean' (the first that differs) on rank(s) "
        f"[{np_ - 1}] differs from rank 0's",
        f"replicas diverged at step 2: weight 'head.bias' (the first that differs) on rank(s) [{np_ - 1}] differs "
        "from rank 0's"]


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(mpiexec, np_, tmp_path):
    """mpirt.stop: the last rank signals itself after step 5; every rank learns it in agreed(),
    rank 0 checkpoints that step while the others wait, and every rank exits 143."""
    proc = mpiexec(np_, [sys.executable, "-m", "mpirt", str(RANKS / "stop_agreed.py"), "-1", str(tmp_path)],
                   check=False, timeout=120)
    assert proc.returncode == 143, proc.stderr
    for r in range(np_):
        assert f"rank {r} stopped after step 5 by signal 15" in proc.stdout, proc.stdout[-2000:]
    assert "step 6 " not in proc.stdout
    step, state = checkpoint.load_latest(tmp_path)
    assert step == state["step"] == 5
