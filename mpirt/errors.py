"""Per-rank error records: the contract between a dying rank and the launcher's root cause.

A rank that dies of an uncaught exception (or a stall the inspector gives up on) writes
``rank-<r>.json`` into ``$MPIRT_ERROR_DIR``: rank, host, pid, kind, exception type, message,
traceback and time, on the host the rank runs on. After a failed job the launcher copies the
records of every other host into its own directory (over ssh) and reports the earliest.
Written through a temporary file and a rename, so a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

ENV = "MPIRT_ERROR_DIR"


def env_rank() -> int:
    """This process's rank, as the MPI launcher's variables say (read before MPI starts)."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def record(kind: str, exc_type: str, message: str, tb: str, rank: int | None = None) -> dict:
    return {
        "rank": env_rank() if rank is None else rank, "host": socket.gethostname(), "pid": os.getpid(),
        "kind": kind, "exception": exc_type, "message": message, "traceback": tb, "time": time.time(),
    }


def _own_frame(frame: traceback.FrameSummary) -> bool:
    """Frames of the runner itself (``python -m mpirt``), which only hide the user's."""
    return frame.filename.startswith("<frozen runpy") or frame.filename.endswith(os.path.join("mpirt", "__main__.py"))


def record_exception(exc: BaseException, kind: str = "exception") -> dict:
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not _own_frame(f)])
    return record(kind, type(exc).__name__, str(exc), "".join(te.format()))


def write(rec: dict, directory: str | None = None) -> Path | None:
    """Write ``rec`` into the error directory (``$MPIRT_ERROR_DIR``); None when there is none."""
    directory = directory or os.environ.get(ENV)
    if not directory:
        return None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"rank-{rec['rank']}.json"
    if final.exists():  # the first failure of a rank is the one that matters
        return final
    tmp = d / f".rank-{rec['rank']}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, final)
    return final


def read_all(directory: str | Path) -> list[dict]:
    """Every complete record in ``directory``, earliest first."""
    out = []
    for path in sorted(Path(directory).glob("rank-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("time", 0.0))


def parse_many(text: str) -> list[dict]:
    """The records in ``text``, written one after another (another host's records, copied
    here by the launcher); what is not a record ends the list."""
    found, decoder, at = [], json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return found
        try:
            rec, at = decoder.raw_decode(text, at)
        except ValueError:
            return found
        if not (isinstance(rec, dict) and isinstance(rec.get("rank"), int) and rec["rank"] >= 0
                and isinstance(rec.get("time"), (int, float))):
            return found
        found.append(rec)


def abort_on_exception(exc: BaseException, code: int = 1) -> None:
    """Report ``exc`` (stderr and error record) and stop every rank of the job. A
    ``sys.exit(N)`` says on stderr what Python would: nothing for a number, the text for text."""
    rec = record_exception(exc)
    if not isinstance(exc, SystemExit):
        sys.stderr.write(f"mpirt: rank {rec['rank']} on {rec['host']} failed:\n{rec['traceback']}")
    elif not isinstance(exc.code, int):
        sys.stderr.write(f"{exc.code}\n")
    sys.stderr.flush()
    write(rec)
    if "mpi4py.MPI" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.COMM_WORLD.Abort(code)
    os._exit(code)
