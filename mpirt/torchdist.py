"""torch.distributed over the ranks MPI started: the rendezvous an MPIJob does not provide.

Rank 0 of the communicator picks a free port, MPI tells the others where to connect, and
every rank joins torch's default process group with MPI's rank and size: NCCL for CUDA
tensors where torch has it, gloo for CPU ones. ``data_parallel(algo="torch")`` reduces
through it (NCCL on GPUs); the benchmarks' DDP and NCCL baselines start from it too.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from mpirt.comm import MPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def default_backend(local_ranks: int) -> str:
    """NCCL for CUDA tensors and gloo for CPU ones where torch has NCCL and every rank on the
    node has a GPU of its own (NCCL refuses two ranks on one GPU), else gloo for both."""
    if dist.is_nccl_available() and torch.cuda.device_count() >= local_ranks:
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def join_default_group(comm, backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Make torch's default process group span ``comm``'s ranks, with MPI's rank and size;
    returns whether this call created it (its creator destroys it). An existing group must
    agree with MPI about this rank, or reductions through it would pair the wrong ranks."""
    if not dist.is_available():
        raise RuntimeError("this torch has no torch.distributed; reduce with the core's algorithms (algo='auto')")
    rank, size = comm.Get_rank(), comm.Get_size()
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, size):
            raise ValueError(f"torch.distributed is initialised as rank {dist.get_rank()} of {dist.get_world_size()} "
                             f"but MPI says rank {rank} of {size}; initialise it with MPI's ranks, or leave it to mpirt")
        return False
    if backend is None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        backend = default_backend(node.Get_size())
        node.Free()
    # MASTER_ADDR as rank 0 sees it (the user's, or mpirt's export), else rank 0's host name
    host = os.environ.get("MASTER_ADDR") or socket.gethostname()
    where = comm.bcast((host, free_port()) if rank == 0 else None, root=0)
    dist.init_process_group(backend, init_method=f"tcp://{where[0]}:{where[1]}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    return True


def leave_default_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

