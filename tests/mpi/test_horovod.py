"""Horovod's PyTorch API on mpirt (`mpirt.horovod`) with real ranks: a Horovod training script
with one line changed reaches one process's weights; the collectives and the errors."""

import json

import pytest

pytestmark = pytest.mark.mpi

EXPECTED = ["size() before init()", "horovod script, clipped", "horovod script, backward_passes_per_step=2",
            "horovod script, fp16 compression", "rank queries", "allreduce average", "allreduce sum",
            "allreduce average=False", "allreduce min", "allreduce max", "allreduce product", "allreduce int64 sum",
            "allreduce int64 average rounds toward zero", "allreduce bfloat16 sum", "allreduce pre- and postscale",
            "allreduce fp16 compression", "allreduce of a 0-d metric", "allreduce_ in place, non-contiguous",
            "allgather of uneven first dimensions", "allgather of bool", "allgather with an empty first dimension",
            "allgather under another default device",
            "broadcast from the last rank", "broadcast_ in place", "allreduce_async and synchronize",
            "a handle synchronized twice", "grouped_allreduce_", "allgather_async", "broadcast_async",
            "object collectives", "Adasum",
            "average= and op= together", "join", "a Horovod name left out says what to use", "unnamed parameters", "optimizer op=Sum"]
ACROSS_RANKS = ["allgather of different row shapes", "broadcast_parameters of different models"]


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_a_horovod_script_and_the_api(mpiexec, np_):
    proc = mpiexec.python(np_, "horovod_script.py", timeout=240)
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert report["ranks"] == np_
    assert report["checked"] == EXPECTED + (ACROSS_RANKS if np_ > 1 else [])
