"""mpirt.stop without MPI: what a signal leaves noted, where the rank's output goes from then on,
and the main-thread rule (agreeing across ranks: tests/mpi and tests/e2e)."""

import subprocess
import sys
import threading

import pytest

from mpirt.stop import Stop

NOTED = """
import os, signal
from mpirt.stop import Stop
stop = Stop()
print("before", stop.requested, stop.exit_code, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("after", stop.requested, stop.signal, stop.exit_code, flush=True)
os.kill(os.getpid(), signal.SIGINT)
print("second", stop.signal, flush=True)
"""


def test_a_signal_is_noted_and_the_output_moves_to_the_error_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-c", NOTED], capture_output=True, text=True, timeout=60,
                          env={"MPIRT_ERROR_DIR": str(tmp_path), "OMPI_COMM_WORLD_RANK": "3", "PATH": "/usr/bin",
                               "PYTHONSAFEPATH": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "before False 0\n"
    moved = (tmp_path / "rank-3.out").read_text().splitlines()
    assert moved[0].startswith("mpirt-output rank=3 host=")
    assert moved[1:] == ["after True 15 143", "second 15"]  # the first signal is the one kept


def test_stop_made_outside_the_main_thread_says_why():
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(ValueError, Stop)))
    t.start()
    t.join()
    assert "Stop() must be made in the main thread, where Python runs signal handlers" in str(caught[0].value)
