"""Every rank reports (rank, size, host name); rank 0 prints them as one JSON line. With no
argument, each rank also says "rank R on HOST" in pieces, each written apart as print() of
several values does under PYTHONUNBUFFERED=1. With an
argument R: rank R exits with code 3 (through SystemExit, so `python -m mpirt` records it);
with `hang R`: rank R sleeps, the others wait for it in a barrier; with `raise R`: rank R
raises an exception."""

import json
import socket
import sys
import time

from mpi4py import MPI

comm = MPI.COMM_WORLD
mine = {"rank": comm.Get_rank(), "size": comm.Get_size(), "host": socket.gethostname()}
everyone = comm.gather(mine, root=0)
if comm.Get_rank() == 0:
    print(json.dumps(everyone), flush=True)
if len(sys.argv) == 1:
    for piece in ("rank", f" {mine['rank']}", " on", f" {mine['host']}", "\n"):
        sys.stdout.write(piece)
        sys.stdout.flush()
elif sys.argv[1] == "sleep":
    comm.Barrier()
    time.sleep(float(sys.argv[2]))
    comm.Barrier()
elif sys.argv[1] == "raise":
    if comm.Get_rank() == int(sys.argv[2]):
        raise RuntimeError(f"shard {comm.Get_rank()} is corrupt")
elif sys.argv[1] == "hang":
    if comm.Get_rank() == int(sys.argv[2]):
        time.sleep(600)
    comm.Barrier()
elif int(sys.argv[1]) == comm.Get_rank():
    sys.exit(3)
