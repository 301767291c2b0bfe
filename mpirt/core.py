"""Python entry to the compiled allreduce: numpy arrays and torch tensors, CPU or CUDA.

The extension takes raw addresses; this module checks everything that would make an
address unsafe (layout, dtype, size, device, writability) and turns it into a message.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from mpirt.comm import MPI, core

OPS = ("sum", "min", "max", "avg")
ALGOS = ("mpi", "ring", "shm", "auto", "ordered", "hier")


@dataclass(frozen=True)
class Buffer:
    addr: int
    count: int
    dtype: str
    device: str  # "cpu" or "cuda:N", as torch names the device
    writable: bool


_NUMPY_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16", "int32": "int32"}
_TORCH_DTYPES = {"float32", "float64", "float16", "bfloat16", "int32"}


def describe(buf) -> Buffer:
    """Address, element count, dtype and device of a contiguous numpy array or torch tensor."""
    module = type(buf).__module__
    if module.startswith("torch"):
        name = str(buf.dtype).removeprefix("torch.")
        if name not in _TORCH_DTYPES:
            raise TypeError(f"tensor dtype {buf.dtype} is not supported; use one of {sorted(_TORCH_DTYPES)}")
        if not buf.is_contiguous():
            raise ValueError("tensor is not contiguous; pass tensor.contiguous()")
        if buf.device.type not in ("cpu", "cuda"):
            raise ValueError(f"tensor on device {buf.device} is not supported; use a CPU or CUDA tensor")
        return Buffer(buf.data_ptr(), buf.numel(), name, str(buf.device), True)
    if module.startswith("numpy"):
        if not hasattr(buf, "ctypes"):
            raise TypeError(f"allreduce takes a numpy array, not the scalar numpy.{type(buf).__name__}; "
                            "reduce numpy.array([x]) and read its element")
        name = _NUMPY_DTYPES.get(buf.dtype.name)
        if name is None:
            raise TypeError(
                f"array dtype {buf.dtype} is not supported; use float32, float64, float16 or int32 "
                "(bfloat16 through a torch tensor)"
            )
        if not buf.flags.c_contiguous:
            raise ValueError("array is not C-contiguous; pass numpy.ascontiguousarray(a)")
        return Buffer(buf.ctypes.data, buf.size, name, "cpu", bool(buf.flags.writeable))
    raise TypeError(f"allreduce takes a numpy array or a torch tensor, not {type(buf).__name__}")


def allreduce(send, recv=None, op: str = "sum", algo: str = "auto", comm=None):
    """Reduce ``send`` across ``comm`` (default COMM_WORLD) into ``recv``, or in place when
    ``recv`` is None; returns the buffer holding the result. ``op``: sum, min, max, avg
    (16-bit floats accumulate in fp32). ``algo``: mpi, ring, shm, auto, ordered (the same bits
    for any split of a buffer into calls, any node layout and any run) or hier (node-aware, for
    several ranks a node across a slow network): see docs/allreduce.md."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; use one of {', '.join(OPS)}")
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; use one of {', '.join(ALGOS)}")
    comm = MPI.COMM_WORLD if comm is None else comm
    src = describe(send)
    dst = src if recv is None else describe(recv)
    if recv is not None and (dst.count, dst.dtype, dst.device) != (src.count, src.dtype, src.device):
        raise ValueError(
            f"recv ({dst.count} x {dst.dtype} on {dst.device}) does not match send "
            f"({src.count} x {src.dtype} on {src.device}); allocate recv like send"
        )
    if not dst.writable:
        raise ValueError("the result buffer is read-only; pass a writable array (a.copy())")
    if src.device == "cpu":
        core().allreduce(comm.py2f(), src.addr, dst.addr, src.count, src.dtype, op, algo, src.device)
        return send if recv is None else recv
    import torch

    # torch's device guard keeps the caller's current device (the core would leave the tensor's)
    with torch.cuda.device(torch.device(src.device)):
        torch.cuda.current_stream().synchronize()  # the core copies on a stream of its own: finish first
        core().allreduce(comm.py2f(), src.addr, dst.addr, src.count, src.dtype, op, algo, src.device)
    return send if recv is None else recv


def shared_zeros(shape, dtype="float32", comm=None):
    """A zeroed buffer in memory that the ranks of ``comm``'s node (default COMM_WORLD) share:
    a numpy array, or a torch tensor when ``dtype`` is a torch dtype. Collective: every rank of
    ``comm`` calls it, with the same shape and dtype. Passed at the same offsets on every rank
    of a node, such buffers are reduced by ``shm`` (and ``auto`` where it picks ``shm``) without
    staging: each rank reads its slice from every input and writes it into every output, 2S of
    memory traffic per rank for S bytes against 4S staged (docs/allreduce.md). The memory lives
    until :func:`free_shared` or the end of ``comm``."""
    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        shape = (operator.index(shape),) if not hasattr(shape, "__iter__") else tuple(map(operator.index, shape))
    except TypeError:
        raise TypeError(f"shape {shape!r}: give an int or a tuple of ints") from None
    if shape and min(shape) <= 0:
        raise ValueError(f"shared_zeros needs at least one element along every dimension, not shape {shape}")
    count = math.prod(shape)
    if type(dtype).__module__.startswith("torch"):
        import torch

        if str(dtype).removeprefix("torch.") not in _TORCH_DTYPES:
            raise TypeError(f"dtype {dtype} is not supported; use one of {sorted(_TORCH_DTYPES)}")
        itemsize, wrap = dtype.itemsize, lambda view: torch.frombuffer(view, dtype=dtype).view(shape)
    else:
        import numpy

        np_dtype = numpy.dtype(dtype)
        if np_dtype.name not in _NUMPY_DTYPES:
            raise TypeError(f"dtype {np_dtype} is not supported; use float32, float64, float16 or int32 "
                            "(bfloat16 as torch.bfloat16)")
        itemsize, wrap = np_dtype.itemsize, lambda view: numpy.frombuffer(view, dtype=np_dtype).reshape(shape)
    buf = wrap(core().shared_alloc(comm.py2f(), count * itemsize))
    buf[...] = 0  # each rank's part is first touched by its own rank: its pages lie near it
    comm.Barrier()
    return buf


def free_shared(buf, comm=None) -> None:
    """Free a buffer from :func:`shared_zeros`. Collective over ``comm``, as the allocation was;
    neither ``buf`` nor any view of it may be used afterwards."""
    comm = MPI.COMM_WORLD if comm is None else comm
    core().shared_free(comm.py2f(), describe(buf).addr)
