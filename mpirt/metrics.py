"""Per-step training metrics: JSON lines for machines, a progress bar or log line for people.
Only rank 0 writes. The bar needs a real terminal: under mpirun, output goes through the
launcher's relay (and Open MPI hands ranks a pty that is not the user's terminal), so ranks
print a line every ``every`` steps unless MPIRT_PROGRESS=bar asks for the bar, as mpirt
launch does when its own output is a terminal (its relay redraws the bar in place)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path


class Metrics:
    def __init__(self, path: str | Path | None, total_steps: int, enabled: bool, every: int = 10, stream=None):
        self.enabled, self.total, self.every = enabled, total_steps, max(1, every)
        self.stream = stream or sys.stdout
        under_mpi = any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))
        mode = os.environ.get("MPIRT_PROGRESS", "")
        self.tty = mode == "bar" or (mode != "lines" and self.stream.isatty() and not under_mpi)
        self._file = None
        if enabled and path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        step = record["step"]
        text = (f"step {step:>6}/{self.total}  loss {record['loss']:.4f}  {record['samples_per_s']:9.1f} samples/s  "
                f"step {record['step_time_s'] * 1e3:7.1f} ms  comm {record['comm_s'] * 1e3:6.1f} ms "
                f"({record['overlap'] * 100:3.0f}% overlapped)")
        if self.tty:
            self.stream.write("\r" + self._bar(step, text))
            if step == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step % self.every == 0 or step == self.total or step == 1:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _bar(self, step: int, text: str) -> str:
        """One state of the bar, as wide as the terminal (COLUMNS under mpirt launch) allows:
        a line that wraps cannot be redrawn in place."""
        width = shutil.get_terminal_size((160, 24)).columns - 1
        cells = max(10, min(30, width - len(text) - 3))
        done = int(cells * step / max(1, self.total))
        return f"[{'#' * done}{'.' * (cells - done)}] {text}"[:width]

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
