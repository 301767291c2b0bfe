"""``stop_agreed.py WHO OUT``: every rank stops after the same step, whichever rank the signal
reached. WHO: a rank that sends itself SIGTERM after step 5, or ``none`` (the launcher's
signal to every rank: --time-limit). Each step trains data-parallel and prints a long line, as
a training loop's log does; on the agreed stop rank 0 writes a slow checkpoint into OUT, which
the others must wait for, every rank says where it stopped, and all exit with the stop's code."""

import os
import signal
import sys
import time

import torch

from mpirt import checkpoint
from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel
from mpirt.stop import Stop

rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
who, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
stop = Stop()
model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
dp = data_parallel(model, opt)
step = 0
while True:
    step += 1
    opt.zero_grad()
    model(torch.randn(4, 8)).pow(2).mean().backward()
    opt.step()
    print(f"rank {rank} step {step} " + "." * 200, flush=True)
    if who != "none" and rank == int(who) % size and step == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    if stop.agreed():
        break
    if who == "none":
        time.sleep(0.02)
if rank == 0:
    time.sleep(1)
    checkpoint.save(out, step, {"step": step, "weight": model.weight.detach().clone()})
print(f"rank {rank} stopped after step {step} by signal {stop.signal}", flush=True)
dp.close()
sys.exit(stop.exit_code)
