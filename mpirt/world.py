"""Where this rank sits: rank, size, node-local rank and node count, read from MPI itself.

Code written for torchrun expects RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and
MASTER_ADDR/PORT; ``export_torch_env`` sets them from this (never overriding what is set).
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

from mpirt.comm import MPI, world as _world


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    node: int  # index of this rank's node, 0..nodes-1 in order of the lowest rank on each
    nodes: int
    host: str
    master_addr: str  # host of rank 0


@functools.cache
def world() -> World:
    comm = _world()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        leader = int(local.Get_rank() == 0)
        # Node index: number of node leaders with a lower world rank, shared within the node.
        before = comm.exscan(leader) if comm.Get_size() > 1 else 0
        node = local.bcast((before or 0) if local.Get_rank() == 0 else None, root=0)
        nodes = comm.allreduce(leader)
        host = socket.gethostname()
        master = comm.bcast(host if comm.Get_rank() == 0 else None, root=0)
        return World(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), node, nodes, host, master)
    finally:
        local.Free()


def pick_device(choice: str, local_rank: int):
    """``auto``: the local rank's GPU where torch sees one (ranks beyond the GPU count share
    them round robin), else the CPU; ``cpu``; ``cuda``: the local rank's GPU, or a ValueError."""
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {choice!r}: use auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def export_torch_env(w: World | None = None) -> dict[str, str]:
    """Set the torchrun-style variables for code that reads them; returns what it set."""
    w = w or world()
    values = {
        "RANK": w.rank, "WORLD_SIZE": w.size, "LOCAL_RANK": w.local_rank, "LOCAL_WORLD_SIZE": w.local_size,
        "GROUP_RANK": w.node, "MASTER_ADDR": w.master_addr, "MASTER_PORT": 29500,
    }
    set_now = {}
    for name, value in values.items():
        if name not in os.environ:
            os.environ[name] = set_now[name] = str(value)
    return set_now
