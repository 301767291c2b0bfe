"""Every rank reports its rank, host, open-files limit and the variables named in argv (None
where unset);
rank 0 prints them as one JSON line; each rank says "rank R on HOST" in pieces, as
where.py does."""

import json
import os
import resource
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
mine = {"rank": comm.Get_rank(), "host": socket.gethostname(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        **{n: os.environ.get(n) for n in sys.argv[1:]}}
everyone = comm.gather(mine, root=0)
if comm.Get_rank() == 0:
    print(json.dumps(everyone), flush=True)
for piece in ("rank", f" {mine['rank']}", " on", f" {mine['host']}", "\n"):
    sys.stdout.write(piece)
    sys.stdout.flush()
