"""How the launch ended, kept in the pod's status: Kubernetes copies the file at the
container's terminationMessagePath (default /dev/termination-log, a file it mounts into every
container) into ``status.containerStatuses[].state.terminated.message``. So `kubectl describe
pod` still names the root cause after the launcher's logs are gone with a retry (mpi-operator
#354) and where the pod status showed only a crash loop (#90). Kubernetes keeps 4096 bytes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT = Path("/dev/termination-log")
LIMIT = 4096


def path_for(setting: str) -> Path | None:
    """auto: the default file where Kubernetes mounted it; none: nowhere; else that path."""
    if setting == "none":
        return None
    if setting == "auto":
        return DEFAULT if DEFAULT.is_file() and os.access(DEFAULT, os.W_OK) else None
    path = Path(setting)
    if not path.is_absolute():
        raise ValueError(f"--termination-log {setting!r}: give an absolute path (the container's "
                         "terminationMessagePath), auto or none")
    return path


def clip(text: str, limit: int = LIMIT) -> bytes:
    """The message as Kubernetes keeps it: at most ``limit`` bytes, cut at a character boundary."""
    data = text.encode()
    if len(data) <= limit:
        return data
    return data[:limit - 4].decode(errors="ignore").encode() + " ...".encode()


def write(path: Path | None, text: str) -> None:
    """Replace the message; a failure to write is reported, never the job's outcome."""
    if path is None:
        return
    try:
        path.write_bytes(clip(text.rstrip() + "\n"))
    except OSError as e:
        print(f"mpirt: warning: could not write the termination message to {path}: {e.strerror}", file=sys.stderr,
              flush=True)
