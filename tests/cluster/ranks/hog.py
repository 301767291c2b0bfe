"""Rank R ends itself the two ways that look alike from outside, a SIGKILL and no error
record: ``hog.py R oom`` takes memory until the OOM killer stops it, ``hog.py R kill`` sends
itself SIGKILL (a kill -9, no memory involved). The other ranks wait in a barrier."""

import os
import signal
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
victim, how = int(sys.argv[1]), sys.argv[2]
if comm.Get_rank() == victim:
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    held = []
    while True:
        held.append(b"\x01" * (32 << 20))  # written pages: charged to the cgroup at once
comm.Barrier()
