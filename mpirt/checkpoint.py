"""Atomic, verifiable checkpoints written by rank 0.

A file is ``MAGIC``, the payload length and its SHA-256, then the payload (``torch.save``
of plain containers and tensors, loadable with ``weights_only=True``). It is written to a
temporary name, fsynced, renamed into place and the directory fsynced: a crash leaves the old
checkpoint or the new one, never a mix. On resume, files that are torn or corrupt (bad
magic, short, checksum mismatch, unreadable payload) are skipped with a warning and the
next older one is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import sys
from pathlib import Path

import torch

MAGIC = b"MPIRTCKPT1\n"
_HEADER = struct.Struct(">Q32s")
_NAME = re.compile(r"^ckpt-step(\d{8})\.pt$")


class CheckpointError(ValueError):
    pass


def path_for(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-step{step:08d}.pt"


def save(directory: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step``; keep the newest ``keep`` complete ones."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    final = path_for(d, step)
    tmp = d / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + _HEADER.pack(len(payload), hashlib.sha256(payload).digest()) + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_steps(d)[:-keep] if keep > 0 else []:
        path_for(d, old).unlink(missing_ok=True)
    return final


def list_steps(directory: str | Path) -> list[int]:
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def load(path: str | Path) -> dict:
    data = Path(path).read_bytes()
    head = len(MAGIC) + _HEADER.size
    if not data.startswith(MAGIC):
        raise CheckpointError("not an mpirt checkpoint (bad magic)")
    if len(data) < head:
        raise CheckpointError("torn: header incomplete")
    length, digest = _HEADER.unpack(data[len(MAGIC):head])
    payload = data[head:]
    if len(payload) != length:
        raise CheckpointError(f"torn: {len(payload)} of {length} payload bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("corrupt: checksum mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)  # resumable on any device
    except Exception as e:  # noqa: BLE001 - any unreadable payload is a bad checkpoint
        raise CheckpointError(f"unreadable payload: {e}") from e


def load_latest(directory: str | Path) -> tuple[int, dict] | None:
    """(step, state) of the newest checkpoint that verifies, or None."""
    for step in reversed(list_steps(directory)):
        path = path_for(Path(directory), step)
        try:
            return step, load(path)
        except (OSError, CheckpointError) as e:
            print(f"mpirt: warning: skipping checkpoint {path}: {e}", file=sys.stderr, flush=True)
    return None
