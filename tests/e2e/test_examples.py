"""examples/: a training loop of one's own (DataLoader workers through the sampler,
data_parallel, mpirt.stop, checkpoints) stopped by SIGTERM to the launcher and resumed ends
with the weights of an uninterrupted run."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpirt import checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]

LOOP = Path(__file__).parents[2] / "examples" / "train_loop.py"


def loop(out, *args):
    return ["mpirt", "launch", "-np", "2", "--", sys.executable, "-m", "mpirt", str(LOOP), "--out", str(out),
            "--samples", "500", "--steps", "80", "--checkpoint-every", "1000", *args]


def test_train_loop_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    whole = subprocess.run(loop(tmp_path / "whole"), capture_output=True, text=True, timeout=180)
    assert whole.returncode == 0, whole.stderr
    assert "[0] step 80 epoch 9 loss" in whole.stdout  # 500 samples in batches of 64: 8 steps an epoch (0-8 done)

    stopped = subprocess.Popen(loop(tmp_path / "part"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in stopped.stdout:
        if line.startswith("[0] step 10 "):
            stopped.send_signal(signal.SIGTERM)
            break
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 143, err
    at, _ = checkpoint.load_latest(tmp_path / "part" / "checkpoints")
    assert 10 <= at < 80  # 70 steps of room for the signal's way to the ranks on a busy machine
    assert f"rank 0: stopped after step {at}" in err and f"rank 1: stopped after step {at}" in err

    resumed = subprocess.run(loop(tmp_path / "part", "--resume"), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"[0] training on 2 ranks (cpu) from step {at} to 80" in resumed.stdout
    ends = [checkpoint.load_latest(tmp_path / run / "checkpoints") for run in ("whole", "part")]
    assert ends[0][0] == ends[1][0] == 80
    for name, weight in ends[0][1]["model"].items():
        assert torch.equal(weight, ends[1][1]["model"][name]), name
    assert ends[0][1]["sampler"] == ends[1][1]["sampler"]
