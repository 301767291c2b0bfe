"""The report of a rank script that counts cases and collects failures on every rank."""

import json
import sys


def report(comm, cases: int, failures: list[str]) -> None:
    """Rank 0 prints one JSON line: world size, this rank's case count, the first 20 failures
    of all ranks and how many there were."""
    everyone = comm.gather(failures, root=0)
    if comm.Get_rank() == 0:
        flat = [f for fs in everyone for f in fs]
        print(json.dumps({"size": comm.Get_size(), "cases": cases, "failures": flat[:20], "n_failures": len(flat)}))
        sys.stdout.flush()
