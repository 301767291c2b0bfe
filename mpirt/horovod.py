"""Horovod's PyTorch API on mpirt: with ``import mpirt.horovod as hvd`` in place of ``import
horovod.torch as hvd``, a Horovod training script runs on mpirt under ``mpirt launch`` (or
any mpirun), with no Horovod to build against torch and MPI.

Horovod is no longer maintained, and the MPIJob world is full of its scripts (mpi-operator's
own examples are). Here: ``init``/``shutdown``, the rank queries, ``allreduce`` (Average, Sum,
Min, Max, Product; pre- and postscale; fp16 compression), ``allgather`` (first dimensions may
differ), ``broadcast``, their in-place, grouped and async forms (which complete before they
return; ``synchronize(handle)`` gives the result), ``broadcast_parameters``,
``broadcast_optimizer_state``, the object collectives, ``barrier``, and ``DistributedOptimizer``,
which is ``mpirt.data_parallel`` underneath: buckets averaged while backward runs (gradients are
final when ``backward()`` returns, so ``synchronize()`` has nothing left to wait for),
compression, ``backward_passes_per_step``. Not here, each an error that says what to use:
Adasum, process sets, ``join``, ``op=Sum`` for the optimizer. Collectives here are not
differentiable, and names (``name=``) only label.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

from mpirt.comm import MPI
from mpirt.data_parallel import DataParallel
from mpirt.tensorbytes import broadcast_optimizer_state as _bcast_optimizer
from mpirt.tensorbytes import broadcast_tensors


# Horovod names left out, and what to use instead: said on first use, not as a bare AttributeError.
_ELSEWHERE = {
    "SyncBatchNorm": "torch.nn.SyncBatchNorm on GPUs, after mpirt.torchdist.init_process_group()",
    "elastic": "mpirt launch --max-restarts N, resuming from your checkpoints (MPIRT_RESTART says the attempt)",
    "alltoall": "mpi4py's comm.Alltoallv on MPI.COMM_WORLD",
    "reducescatter": "allreduce and keep this rank's slice, or mpi4py's comm.Reduce_scatter",
    "ProcessSet": "hvd.init(comm=[ranks]) to run on a subset",
    "add_process_set": "hvd.init(comm=[ranks]) to run on a subset",
    "nccl_built": "torch.distributed.is_nccl_available() (CUDA models reduce through NCCL where torch has it)",
    "start_timeline": "data_parallel's timeline= (MPIRT_TIMELINE), a Chrome trace of every bucket",
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        raise AttributeError(f"mpirt.horovod has no {name}: use {_ELSEWHERE[name]}")
    raise AttributeError(f"module 'mpirt.horovod' has no attribute {name!r}")


class _Op:
    def __init__(self, name: str, mpi_op: str):
        self.name, self.mpi_op = name, mpi_op

    def __repr__(self) -> str:
        return f"hvd.{self.name}"


Average, Sum, Min, Max, Product = (_Op("Average", "SUM"), _Op("Sum", "SUM"), _Op("Min", "MIN"), _Op("Max", "MAX"),
                                   _Op("Product", "PROD"))
Adasum = _Op("Adasum", "")


class Compression:
    """What gradients travel as: ``none`` or ``fp16`` (floating tensors cast to 16 bits on the
    wire and back; mpirt also has ``bf16``)."""
    none, fp16, bf16 = "none", "fp16", "bf16"


class _State:
    comm = None  # this job's communicator, after init()
    local = None  # the ranks on this node
    cross = None  # one rank per node with this local rank
    optimizers: list[DataParallel] = []


_state = _State()

# The core reduces these dtypes with these ops; anything else goes through mpi4py.
_CORE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32)
_CORE_OPS = {"SUM": "sum", "MIN": "min", "MAX": "max"}


def init(comm=None) -> None:
    """Start (MPI starts here if nothing started it before). ``comm``: an mpi4py communicator
    or a list of world ranks to run on; the default is every rank. A second call does nothing."""
    if _state.comm is not None:
        return
    world = MPI.COMM_WORLD
    if comm is None:
        comm = world
    elif not isinstance(comm, MPI.Comm):
        ranks = list(comm)
        group = world.Get_group().Incl(ranks)
        comm = world.Create(group)
        group.Free()
        if comm == MPI.COMM_NULL:
            raise ValueError(f"hvd.init(comm={ranks}): this rank ({world.Get_rank()}) is not in the list; start "
                             "Horovod on the ranks listed only, or list this rank too")
    _state.comm = comm.Dup()
    _state.local = _state.comm.Split_type(MPI.COMM_TYPE_SHARED, key=_state.comm.Get_rank())
    _state.cross = _state.comm.Split(_state.local.Get_rank(), _state.comm.Get_rank())


def shutdown() -> None:
    """Close every DistributedOptimizer and free the communicators (collective)."""
    if _state.comm is None:
        return
    for dp in _state.optimizers:
        dp.close()
    _state.optimizers = []
    for c in (_state.cross, _state.local, _state.comm):
        c.Free()
    _state.comm = _state.local = _state.cross = None


def is_initialized() -> bool:
    return _state.comm is not None


def _comm():
    if _state.comm is None:
        raise ValueError("Horovod has not been initialized; use hvd.init().")
    return _state.comm


def size() -> int:
    return _comm().Get_size()


def rank() -> int:
    return _comm().Get_rank()


def local_size() -> int:
    _comm()
    return _state.local.Get_size()


def local_rank() -> int:
    _comm()
    return _state.local.Get_rank()


def cross_size() -> int:
    """How many nodes have a rank with this local rank (the node count on a uniform job)."""
    _comm()
    return _state.cross.Get_size()


def cross_rank() -> int:
    """This node's index among them."""
    _comm()
    return _state.cross.Get_rank()


def is_homogeneous() -> bool:
    """Whether every node runs the same number of ranks."""
    return len(set(_comm().allgather(local_size()))) == 1


def mpi_threads_supported() -> bool:
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def mpi_enabled() -> bool:
    return True


def mpi_built() -> bool:
    return True


def gloo_enabled() -> bool:
    return False


def gloo_built() -> bool:
    return False


def barrier() -> None:
    _comm().Barrier()


def _resolve_op(average, op) -> _Op:
    if average is not None and op is not None:
        raise ValueError("hvd.allreduce: give op= or the older average=, not both")
    if op is None:
        op = Sum if average is False else Average
    if op is Adasum:
        raise NotImplementedError("hvd.Adasum is not in mpirt: use hvd.Average (the default), the sum over ranks "
                                  "divided by their number")
    if not isinstance(op, _Op):
        raise ValueError(f"hvd.allreduce: op={op!r}; use hvd.Average, hvd.Sum, hvd.Min, hvd.Max or hvd.Product")
    return op


def _no_process_set(process_set) -> None:
    if process_set is not None:
        raise NotImplementedError("process sets are not in mpirt: call hvd.init(comm=[ranks]) to run on a subset")


def _reduce_(t: torch.Tensor, op: _Op) -> None:
    """``t`` (contiguous) reduced in place across the ranks."""
    comm = _comm()
    if comm.Get_size() == 1:
        return
    if t.dtype in _CORE_DTYPES and op.mpi_op in _CORE_OPS and t.device.type in ("cpu", "cuda"):
        from mpirt.core import allreduce

        allreduce(t, op=_CORE_OPS[op.mpi_op], comm=comm)
        return
    host = t.cpu() if t.is_cuda else t  # mpi4py reduces host memory
    if host.dtype in (torch.bfloat16, torch.float16, torch.bool) or (host.is_complex() and op.mpi_op != "SUM"):
        raise TypeError(f"hvd.allreduce: {op!r} of {t.dtype} tensors is not supported; use float32 (or int32 for "
                        "flags)")
    arr = host.numpy() if host.dim() else host.reshape(1).numpy()
    comm.Allreduce(MPI.IN_PLACE, arr, op=getattr(MPI, op.mpi_op))
    if host is not t:
        t.copy_(host)


def allreduce_(tensor: torch.Tensor, average=None, name=None, op=None, prescale_factor: float = 1.0,
               postscale_factor: float = 1.0, process_set=None, compression=Compression.none) -> torch.Tensor:
    """Reduce ``tensor`` across the ranks in place and return it. Average of an integer tensor
    rounds toward zero."""
    op = _resolve_op(average, op)
    _no_process_set(process_set)
    with torch.no_grad():
        work = tensor if tensor.is_contiguous() else tensor.contiguous()
        wire = compression if compression in (Compression.fp16, Compression.bf16) and work.is_floating_point() \
            else Compression.none
        if wire != Compression.none:
            work = work.to(torch.float16 if wire == Compression.fp16 else torch.bfloat16)
        if prescale_factor != 1.0:
            work.mul_(prescale_factor)
        _reduce_(work, op)
        scale = postscale_factor / (size() if op is Average else 1)
        if scale != 1.0:
            if work.is_floating_point() or work.is_complex():
                work.mul_(scale)
            else:
                work.copy_(torch.trunc(work.double() * scale).to(work.dtype))
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def allreduce(tensor: torch.Tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0, process_set=None) -> torch.Tensor:
    """A new tensor: ``tensor`` reduced across the ranks (by default averaged)."""
    return allreduce_(tensor.detach().clone(), average, name, op, prescale_factor, postscale_factor, process_set,
                      compression)


def grouped_allreduce(tensors: list[torch.Tensor], average=None, name=None, compression=Compression.none,
                      op=None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                      process_set=None) -> list[torch.Tensor]:
    """``allreduce`` of each tensor, returned in order."""
    return [allreduce(t, average, name, compression, op, prescale_factor, postscale_factor, process_set)
            for t in tensors]


def grouped_allreduce_(tensors: list[torch.Tensor], average=None, name=None, op=None, prescale_factor: float = 1.0,
                       postscale_factor: float = 1.0, process_set=None) -> list[torch.Tensor]:
    return [allreduce_(t, average, name, op, prescale_factor, postscale_factor, process_set) for t in tensors]


class _Handles:
    """The async forms complete before they return (the gradient path, which overlaps, is
    DistributedOptimizer's): a handle gives the result to ``synchronize``, once."""
    results: dict[int, object] = {}
    next = 0

    @classmethod
    def add(cls, result) -> int:
        cls.next += 1
        cls.results[cls.next] = result
        return cls.next


def allreduce_async(tensor, *args, **kwargs) -> int:
    return _Handles.add(allreduce(tensor, *args, **kwargs))


def allreduce_async_(tensor, *args, **kwargs) -> int:
    return _Handles.add(allreduce_(tensor, *args, **kwargs))


def allgather_async(tensor, *args, **kwargs) -> int:
    return _Handles.add(allgather(tensor, *args, **kwargs))


def broadcast_async(tensor, root_rank: int, *args, **kwargs) -> int:
    return _Handles.add(broadcast(tensor, root_rank, *args, **kwargs))


def broadcast_async_(tensor, root_rank: int, *args, **kwargs) -> int:
    return _Handles.add(broadcast_(tensor, root_rank, *args, **kwargs))


def poll(handle: int) -> bool:
    """Whether the operation is done: always, once started."""
    if handle not in _Handles.results:
        raise ValueError(f"handle {handle} is not an operation in flight (each is synchronized once)")
    return True


def synchronize(handle: int):
    """The operation's result (the output tensor)."""
    if handle not in _Handles.results:
        raise ValueError(f"handle {handle} is not an operation in flight (each is synchronized once)")
    return _Handles.results.pop(handle)


def allgather(tensor: torch.Tensor, name=None, process_set=None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along the first dimension, in rank order; the
    first dimension may differ between ranks, the others may not."""
    _no_process_set(process_set)
    comm = _comm()
    t = tensor.detach().contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    shapes = comm.allgather((tuple(t.shape), str(t.dtype)))
    rest = {(s[1:], d) for s, d in shapes}
    if len(rest) > 1:
        raise ValueError("hvd.allgather: tensors differ beyond the first dimension or in dtype across ranks: " +
                         ", ".join(f"rank {r} {list(s)} {d}" for r, (s, d) in enumerate(shapes)))
    host = t.cpu()
    row = math.prod(host.shape[1:]) * host.element_size()
    counts = [s[0] * row for s, _ in shapes]
    out = torch.empty(sum(counts), dtype=torch.uint8, device="cpu")  # whatever the default device
    comm.Allgatherv(host.reshape(-1).view(torch.uint8).numpy(), [out.numpy(), counts])
    return out.view(t.dtype).reshape(sum(s[0] for s, _ in shapes), *t.shape[1:]).to(t.device)


def broadcast_(tensor: torch.Tensor, root_rank: int, name=None, process_set=None) -> torch.Tensor:
    """``root_rank``'s values into ``tensor`` on every rank; returns it."""
    _no_process_set(process_set)
    broadcast_tensors(_comm(), [tensor], root_rank)
    return tensor


def broadcast(tensor: torch.Tensor, root_rank: int, name=None, process_set=None) -> torch.Tensor:
    """A new tensor with ``root_rank``'s values."""
    return broadcast_(tensor.detach().clone(), root_rank, name, process_set)


def broadcast_object(obj, root_rank: int = 0, name=None, process_set=None):
    _no_process_set(process_set)
    return _comm().bcast(obj, root=root_rank)


def allgather_object(obj, name=None, process_set=None) -> list:
    _no_process_set(process_set)
    return _comm().allgather(obj)


def broadcast_parameters(params, root_rank: int) -> None:
    """``root_rank``'s values into ``params`` on every rank, in one broadcast: a
    ``state_dict()`` (parameters and buffers), ``named_parameters()``, or a list of tensors."""
    items = sorted(params.items()) if isinstance(params, dict) else \
        [p if isinstance(p, tuple) else (None, p) for p in params]
    tensors = [t for _, t in items if isinstance(t, torch.Tensor)]
    comm = _comm()
    seen = comm.allgather([(n, tuple(t.shape), str(t.dtype)) for n, t in items if isinstance(t, torch.Tensor)])
    for r, theirs in enumerate(seen):
        if theirs != seen[root_rank]:
            first = next((i for i, (a, b) in enumerate(zip(theirs, seen[root_rank])) if a != b), None)
            what = (f"{seen[root_rank][first]} on rank {root_rank}, {theirs[first]} on rank {r}" if first is not None
                    else f"{len(seen[root_rank])} tensors on rank {root_rank}, {len(theirs)} on rank {r}")
            raise ValueError(f"hvd.broadcast_parameters: the ranks hold different tensors: {what}; build the same "
                             "model on every rank")
    with torch.no_grad():
        broadcast_tensors(comm, [t.data for t in tensors], root_rank)


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int) -> None:
    """``root_rank``'s optimizer state and hyperparameters into every rank's optimizer."""
    comm = _comm()
    _bcast_optimizer(comm, optimizer, root_rank)
    groups = comm.bcast([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
                        if comm.Get_rank() == root_rank else None, root=root_rank)
    for group, theirs in zip(optimizer.param_groups, groups):
        group.update(theirs)


def join(device: int = -1) -> int:
    raise NotImplementedError("hvd.join() is not in mpirt: give every rank the same number of batches "
                              "(DistributedSampler(..., drop_last=True)), or train under mpirt's "
                              "data_parallel(...).join(), which lets ranks with fewer batches finish early")


class _Distributed:
    """Methods a DistributedOptimizer adds to the optimizer it wraps."""

    def synchronize(self) -> None:
        """Wait for the averaged gradients (backward already did, on a rank that ran one)."""
        self._mpirt_dp.synchronize()

    @contextlib.contextmanager
    def skip_synchronize(self):
        """For ``step()`` after ``synchronize()`` (e.g. with gradient clipping between): step
        uses the gradients averaged then, and averages nothing again."""
        yield


class _Parameters:
    """The named parameters a DistributedOptimizer averages, in the shape data_parallel reads
    a model in (no buffers: Horovod broadcasts those with broadcast_parameters)."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]]):
        self._named = named

    def named_parameters(self):
        return iter(self._named)

    def parameters(self):
        return (p for _, p in self._named)

    def named_buffers(self):
        return iter(())

    def buffers(self):
        return iter(())


def _named(optimizer: torch.optim.Optimizer, named_parameters) -> list[tuple[str, torch.nn.Parameter]]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if named_parameters is None:
        return [(f"allreduce.noname.{i}", p) for i, p in enumerate(params)]
    named = list(named_parameters)
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError("DistributedOptimizer: named_parameters has a name twice; pass model.named_parameters()")
    known = {id(p) for _, p in named}
    missing = [i for i, p in enumerate(params) if id(p) not in known]
    if missing:
        raise ValueError(f"DistributedOptimizer: {len(missing)} parameter(s) of the optimizer are not in "
                         "named_parameters; pass the named_parameters() of every model the optimizer trains")
    ours = {id(p) for p in params}
    return [(n, p) for n, p in named if id(p) in ours]


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters: Iterable | None = None,
                         compression=Compression.none, backward_passes_per_step: int = 1, op=Average,
                         gradient_predivide_factor: float = 1.0, num_groups: int = 0, groups=None,
                         sparse_as_dense: bool = False, process_set=None, **data_parallel_options):
    """``optimizer`` made data-parallel: its parameters' gradients averaged across the ranks in
    buckets while backward runs (``mpirt.data_parallel``), ``backward_passes_per_step``
    backward passes adding up first. Returns the same optimizer object, which gains
    ``synchronize()`` and ``skip_synchronize()``: its state and ``isinstance`` stay. Rank 0's
    parameters and optimizer state are broadcast here. ``gradient_predivide_factor`` splits
    the same division differently, and bucketing is mpirt's, so it, ``num_groups`` and
    ``groups`` change nothing; other keywords go to ``data_parallel`` (``bucket_mb``, ``algo``...)."""
    _no_process_set(process_set)
    if op is not Average:
        raise NotImplementedError(f"DistributedOptimizer(op={op!r}): mpirt averages gradients (hvd.Average); "
                                  "for a sum, scale the loss by hvd.size()")
    if not gradient_predivide_factor > 0:
        raise ValueError(f"gradient_predivide_factor={gradient_predivide_factor}: must be positive")
    if compression not in (Compression.none, Compression.fp16, Compression.bf16):
        raise ValueError(f"compression={compression!r}: use hvd.Compression.none or hvd.Compression.fp16")
    if getattr(optimizer, "_mpirt_dp", None) is not None:
        raise ValueError("this optimizer is a DistributedOptimizer already; wrap the original once")
    dp = DataParallel(_Parameters(_named(optimizer, named_parameters)), optimizer, comm=_comm(),
                      compression=compression, backward_passes_per_step=backward_passes_per_step,
                      **data_parallel_options)
    _state.optimizers.append(dp)
    cls = optimizer.__class__
    optimizer.__class__ = type(cls.__name__, (cls, _Distributed), {})
    optimizer._mpirt_dp = dp
    return optimizer
