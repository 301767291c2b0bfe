"""A rank that needs WORK seconds after SIGTERM to finish (a checkpoint). Running, it writes
DIR/rank-<r>.started; on SIGTERM it works, writes DIR/rank-<r>.done (its host name), waits
(5 s at most) for every rank's, as ranks wait for each other in MPI_Finalize (one rank's
exit ends the job under every MPI), and exits 143. No MPI calls: the stop is the launcher's
and the worker's business, not the MPI's."""

import os
import signal
import socket
import sys
import time
from pathlib import Path

out, work = Path(sys.argv[1]), float(sys.argv[2])
rank = next(os.environ[n] for n in ("OMPI_COMM_WORLD_RANK", "PMI_RANK") if n in os.environ)
size = int(next(os.environ[n] for n in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE") if n in os.environ))


def stop(_signum, _frame):
    time.sleep(work)
    (out / f"rank-{rank}.done").write_text(socket.gethostname())
    deadline = time.time() + 5
    while len(list(out.glob("rank-*.done"))) < size and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(143)


signal.signal(signal.SIGTERM, stop)
(out / f"rank-{rank}.started").write_text(socket.gethostname())
while True:
    time.sleep(0.1)
