"""A rank that writes its shard of a checkpoint when told to stop, as torch.distributed.checkpoint
users do: rank 0's shard takes WORK seconds, the others' a moment; each then exits 143, as a
stopped program does. Run under `python -m mpirt`: one rank's exit must not cut another's shard
short (MPI_Finalize, at the exit, waits for every rank)."""

import signal
import socket
import sys
import time
from pathlib import Path

from mpi4py import MPI

out, work = Path(sys.argv[1]), float(sys.argv[2])
rank = MPI.COMM_WORLD.Get_rank()


def stop(_signum, _frame):
    time.sleep(work if rank == 0 else 0.2)
    (out / f"rank-{rank}.done").write_text(socket.gethostname())
    sys.exit(143)


signal.signal(signal.SIGTERM, stop)
(out / f"rank-{rank}.started").write_text(socket.gethostname())
while True:
    time.sleep(0.1)
