"""A training loop as users write one: no thread settings, an MLP on synthetic batches,
`data_parallel` across the ranks. Rank 0 prints one JSON line: the seconds of each timed step
and the intra-op threads torch chose. Run by benchmarks/threads.py under `mpirt launch`."""

import json
import time

import torch
from torch import nn

from mpirt.comm import MPI
from mpirt.data_parallel import data_parallel
from mpirt.world import world

STEPS, WARMUP, BATCH, WIDTH = 12, 2, 512, 2048

w = world()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
dp = data_parallel(model, opt)
x, y = torch.randn(BATCH // w.size, WIDTH), torch.randint(0, 10, (BATCH // w.size,))
times = []
for step in range(STEPS):
    t = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # waits for the gradients' reduction
    times.append(time.perf_counter() - t)
dp.close()
if w.rank == 0:
    print(json.dumps({"ranks": w.size, "threads": torch.get_num_threads(), "global_batch": BATCH,
                      "step_s": times[WARMUP:], "mpi_library": MPI.Get_library_version().strip()}), flush=True)
