"""Tensors moved between ranks as bytes: one flat copy per device for a whole set of tensors
(one broadcast, not one per tensor; one copy off each GPU), and optimizer state by pickle.
Used by ``data_parallel`` (rank 0's state at the start, buffers after each step) and the
Horovod API (``broadcast_parameters``, ``broadcast_optimizer_state``)."""

from __future__ import annotations

import torch


def on_cpu(obj):
    """``obj`` (a state dict: dicts, lists, tuples, tensors) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def pack(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """The tensors' bytes, one flat copy per device (one copy off each GPU, not one per
    tensor), and the tensors grouped the same way for ``unpack``."""
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    with torch.no_grad():
        packed = [torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in ts])
                  for ts in groups.values()]
    return packed, list(groups.values())


def bcast_bytes(comm, flat: torch.Tensor, root: int) -> None:
    """Broadcast a flat CPU uint8 tensor in place, in pieces MPI's int counts can hold."""
    arr = flat.numpy()
    chunk = 1 << 30
    for start in range(0, arr.size, chunk):
        comm.Bcast(arr[start:start + chunk], root=root)


def unpack(flat: torch.Tensor, groups: list[list[torch.Tensor]]) -> None:
    """Host bytes from ``pack``'s layout back into the tensors, on their devices."""
    off = 0
    with torch.no_grad():
        for ts in groups:
            n = sum(t.numel() * t.element_size() for t in ts)
            part, off, at = flat[off:off + n].to(ts[0].device), off + n, 0
            for t in ts:
                size = t.numel() * t.element_size()
                # a copy starts at offset 0: a view of bytes as a wider dtype needs an offset
                # its size divides (an int64 after an odd number of float32s has none)
                t.copy_(part[at:at + size].clone().view(t.dtype).view(t.shape))
                at += size


def broadcast_tensors(comm, tensors: list[torch.Tensor], root: int) -> None:
    """``root``'s values into ``tensors`` on every rank, in one broadcast (collective; every
    rank passes tensors of the same shapes and dtypes, in the same order)."""
    if comm.Get_size() == 1 or not tensors:
        return
    packed, groups = pack(tensors)
    flat = torch.cat([p.cpu() for p in packed])
    bcast_bytes(comm, flat, root)
    if comm.Get_rank() != root:
        unpack(flat, groups)


def broadcast_optimizer_state(comm, optimizer: torch.optim.Optimizer, root: int) -> None:
    """``root``'s optimizer state (moments, step counts) into every rank's ``optimizer``;
    via the CPU: unpickled CUDA tensors would land on the root's GPU index. A root with no
    state yet (before its first step) leaves the others' as they are."""
    if comm.Get_size() == 1:
        return
    state = comm.bcast(on_cpu(optimizer.state_dict()) if comm.Get_rank() == root else None, root=root)
    if comm.Get_rank() != root and state["state"]:
        optimizer.load_state_dict(state)
