"""torch.distributed over the ranks MPI started: the rendezvous an MPIJob does not provide.

Rank 0 of the communicator picks a free port, MPI tells the others where to connect, and
every rank joins torch's default process group with MPI's rank and size: NCCL for CUDA
tensors where torch has it, gloo for CPU ones. ``data_parallel(algo="torch")`` reduces
through it (NCCL on GPUs); the benchmarks' DDP and NCCL baselines start from it too, and
``init_process_group()`` gives it to code written for torchrun and DDP.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from mpirt.comm import MPI


_holders = 0  # callers sharing the group this module created; the last to leave destroys it


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


def rank0_address() -> str:
    """Where the others reach this rank: MASTER_ADDR if set, else this host's name, given as
    the address it resolves to here (a pod's IP in Kubernetes: no DNS lookup, no wait for the
    headless Service's record), or as the name where that is loopback (127.0.1.1 on Debian)."""
    host = os.environ.get("MASTER_ADDR") or socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return host
    return host if address.startswith("127.") else address


def join_default_group(comm, backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Make torch's default process group span ``comm``'s ranks, with MPI's rank and size;
    returns whether the caller holds it: then ``leave_default_group()`` when done, and the
    last holder destroys it. A group the user made stays theirs (False). An existing group
    must agree with MPI about every rank, or reductions through it would pair the wrong ranks."""
    global _holders
    if not dist.is_available():
        raise RuntimeError("this torch has no torch.distributed; reduce with the compiled core (algo='core')")
    rank, size = comm.Get_rank(), comm.Get_size()
    # every rank's view, so that all raise or none does (a rank alone joining would hang the rest)
    views = comm.allgather((dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else None)
    if any(v is not None for v in views):
        wrong = [f"MPI rank {r} " + ("has no group" if v is None else f"is its rank {v[0]} of {v[1]}")
                 for r, v in enumerate(views) if v != (r, size)]
        if wrong:
            raise ValueError(f"torch.distributed disagrees with MPI about the {size} ranks: {', '.join(wrong[:4])}"
                             f"{', ...' if len(wrong) > 4 else ''}; initialise it on every rank with MPI's rank and "
                             "size, or leave it to mpirt")
        if _holders:
            _holders += 1
        return _holders > 0
    if backend is None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        backend = default_backend(node.Get_size())
        node.Free()
    where = comm.bcast((rank0_address(), free_port()) if rank == 0 else None, root=0)
    dist.init_process_group(backend, init_method=f"tcp://{where[0]}:{where[1]}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    _holders = 1
    return True


def init_process_group(backend: str | None = None, timeout_s: float = 600.0) -> str:
    """``torch.distributed.init_process_group`` for the ranks ``mpirun`` started, with no
    rendezvous to set up: for code written for torchrun (its variables are exported too, see
    ``mpirt.world.export_torch_env``), DDP itself, SyncBatchNorm on GPUs, torch's
    DistributedSampler, ``dist.all_reduce`` of metrics. Collective: every rank calls it. A group
    already made with MPI's ranks is kept. Returns the group's backend."""
    from mpirt.world import export_torch_env

    export_torch_env()
    join_default_group(MPI.COMM_WORLD, backend, timeout_s)
    return dist.get_backend()


def leave_default_group() -> None:
    """One holder done; the last destroys the group (collective: every rank, in step)."""
    global _holders
    if _holders == 0:
        return
    _holders -= 1
    if _holders == 0 and dist.is_initialized():
        dist.destroy_process_group()

