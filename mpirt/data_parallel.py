"""Data-parallel training over MPI: gradient buckets reduced while backward still runs.

``from mpirt.data_parallel import data_parallel``; ``dp = data_parallel(model, optimizer)``
is the whole API. It

- checks that every rank built the same model (names, shapes, dtypes, bucket layout) before
  any collective, and names the first differing parameter and the ranks that differ;
- broadcasts parameters, buffers and optimizer state from rank 0, and after every step the
  buffers again (BatchNorm statistics: DDP's ``broadcast_buffers``), so all ranks run the next
  forward with the same ones;
- packs gradients into flat buckets in reverse parameter order (the order backward produces
  them; a small first bucket so communication starts early), and from a per-parameter
  post-accumulate hook hands each full bucket to one communication thread
  (``mpirt.commthread``), which averages it while backward goes on: with the compiled core,
  or (``algo="auto"`` on a CUDA model where every rank of a node has a GPU of its own and
  torch has NCCL) with NCCL through
  torch.distributed, DDP's own path to NVLink and GPUDirect. Buckets are always reduced in
  index order, so every rank issues the same collectives in the same order. On CPUs with
  several ranks a node they live in memory the node's ranks share, which the core's ``shm``
  reduces without staging (``dp.shared_buckets``; ``MPIRT_SHARED_BUCKETS=0`` keeps them private);
- waits for all buckets when backward ends (a callback queued on the autograd engine), so the
  gradients are final when ``backward()`` returns, as with DDP: gradient clipping, AMP's
  ``GradScaler.unscale_``/inf check and a second loss's backward all see averaged gradients.
  An optimizer step pre-hook (or ``synchronize()``) does it for a rank that ran no backward;
- under ``join()``, lets ranks with fewer batches finish early: they shadow the others'
  collectives with zero gradients until every rank is done, then all take the weights of the
  rank that trained longest (DDP's ``Join``), instead of hanging;
- skips communication under ``no_sync()`` (gradient accumulation; or, as Horovod's option,
  ``backward_passes_per_step=N``: only every N-th backward averages), optionally sends fp16/bf16
  on the wire (cast on the training thread, as DDP's hook does, and back on a cast thread, so
  neither cast holds up the next bucket's transfer) or PowerSGD's low-rank factors
  (``mpirt.powersgd``), and handles parameters that
  get no gradient (zero contribution; with ``find_unused_parameters`` a parameter unused on
  every rank keeps ``grad = None``).

Activation checkpointing (reentrant too) and torch.compile work; ``dp.compile()`` compiles the
model split where the buckets end, as DDP does, so reductions overlap a compiled backward.

The communication thread is the only thread that calls MPI during a step; a stall inspector
(``mpirt.stall``) watches it. ``timeline=PATH`` (or ``$MPIRT_TIMELINE``) records when each
bucket was ready and reduced, for chrome://tracing (``mpirt.timeline``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch

from mpirt import torchdist
from mpirt.comm import MPI
from mpirt.commthread import CommThread, InFlight
from mpirt.console import say
from mpirt.core import shared_zeros
from mpirt.powersgd import BucketCompressor
from mpirt.signature import ModelMismatchError, describe_mismatch, signature
from mpirt.stall import StallInspector
from mpirt.tensorbytes import bcast_bytes, broadcast_optimizer_state, broadcast_tensors, pack, unpack
from mpirt.timeline import Timeline

# compression -> the 16-bit type gradients travel in (PowerSGD sends low-rank factors instead)
COMPRESSION = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16, "powersgd": None}
ALGOS = ("auto", "core", "mpi", "ring", "shm", "ordered", "hier", "mpi4py", "torch")
_SHAREABLE = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # dtypes of shared buckets
DEFAULT_FIRST_BUCKET_MB = 1.0


def default_bucket_mb(cuda: bool, compression: str) -> float:
    """The bucket size when none is given. CPU: measured with benchmarks/buckets.py
    (results/buckets-*.md): 2 MiB was best or within noise of it for every model, on one node
    and across TCP hosts, where 25 MiB left the last 80-85% of backward with nothing to send.
    PowerSGD: 25, as its factors are small and each bucket's two reductions are calls in
    sequence (on 2 and 3 TCP hosts, 2 MiB gave 0.82x and 0.72x the throughput of 25 in two
    runs of benchmarks/powersgd.py an hour apart).
    GPU: DDP's 25 MiB, which NCCL's per-call cost favours (not yet measured here)."""
    return 25.0 if cuda or compression == "powersgd" else 2.0


def choose_algo(requested: str, cuda_model: bool, nccl: bool) -> str:
    """What ``algo`` runs: ``auto`` is NCCL through torch.distributed (``torch``) for a CUDA
    model where NCCL can serve every rank (each rank of a node on a GPU of its own; staging
    through host memory could not come near NVLink or GPUDirect), else ``core``: the compiled
    core, choosing its algorithm per size and layout. Any other name is kept as it is."""
    if requested != "auto":
        return requested
    return "torch" if cuda_model and nccl else "core"


@dataclass(frozen=True)
class StepStats:
    step: int
    comm_s: float  # time the communication thread spent reducing this step's buckets
    exposed_s: float  # time the optimizer step waited for them
    buckets: int

    @property
    def overlapped_s(self) -> float:
        return max(0.0, self.comm_s - self.exposed_s)


@dataclass
class _Bucket:
    index: int
    names: list[str]
    params: list[torch.Tensor]
    flat: torch.Tensor
    views: list[torch.Tensor]
    wire: torch.Tensor | None
    psgd: BucketCompressor | None = None
    fired: list[bool] = field(default_factory=list)
    pending: int = 0
    ready: bool = False
    launched: bool = False
    event: object = None

    def reset(self) -> None:
        self.fired = [False] * len(self.params)
        self.pending = len(self.params)
        self.ready = self.launched = False
        self.event = None


def _wrapped(p: torch.Tensor) -> bool:
    """Whether ``p`` has the gradient hook of an open DataParallel (close() removes it)."""
    return any(isinstance(getattr(hook, "__self__", None), DataParallel)
               for hook in (getattr(p, "_post_accumulate_grad_hooks", None) or {}).values())


def _backend_hint(algo: str) -> str:
    """torch.distributed's backend names are what DDP users reach for: say which algo is that."""
    if algo.lower() in ("nccl", "gloo", "cpu:gloo,cuda:nccl"):
        return f" ({algo} is torch.distributed's backend: algo='torch' reduces through it, NCCL on GPUs, gloo on CPUs)"
    return ""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None


class DataParallel:
    def __init__(self, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer] | None = None, *,
                 bucket_mb: float | None = None, first_bucket_mb: float = DEFAULT_FIRST_BUCKET_MB,
                 compression: str = "none", find_unused_parameters: bool = False, algo: str | None = None,
                 overlap: bool = True, comm=None, stall_warn_s: float | None = None,
                 stall_abort_s: float | None = None, timeline: str | os.PathLike | None = None,
                 powersgd_rank: int = 4, powersgd_start: int = 10, broadcast_buffers: bool = True,
                 backward_passes_per_step: int = 1):
        if compression not in COMPRESSION:
            raise ValueError(f"compression {compression!r}: use one of {', '.join(COMPRESSION)}")
        if not (isinstance(powersgd_rank, int) and powersgd_rank >= 1 and isinstance(powersgd_start, int)
                and powersgd_start >= 0):
            raise ValueError(f"powersgd_rank={powersgd_rank!r}, powersgd_start={powersgd_start!r}: the rank is a whole "
                             "number >= 1, the start a step number >= 0")
        if not (isinstance(backward_passes_per_step, int) and backward_passes_per_step >= 1):
            raise ValueError(f"backward_passes_per_step={backward_passes_per_step!r}: give a whole number >= 1 (the "
                             "backward passes whose gradients add up before they are averaged)")
        if algo is None:
            algo = os.environ.get("MPIRT_ALGO") or "auto"
            if algo not in ALGOS:
                raise ValueError(f"MPIRT_ALGO={algo!r} is not an algorithm: set one of {', '.join(ALGOS)}, or unset it"
                                 f"{_backend_hint(algo)}")
        elif algo not in ALGOS:
            raise ValueError(f"algo {algo!r}: use one of {', '.join(ALGOS)}{_backend_hint(algo)}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]  # not in any bucket
        taken = next((n for n, p in named if _wrapped(p)), None)
        if taken is not None:
            raise RuntimeError(f"parameter {taken!r} is already data-parallel under a data_parallel() not yet closed: "
                               "use that one, or call its close() before wrapping again (two would each average "
                               "every gradient)")
        if bucket_mb is None:
            bucket_mb = default_bucket_mb(any(p.is_cuda for p in model.parameters()), compression)
        if not bucket_mb > 0 or not first_bucket_mb > 0:
            raise ValueError(f"bucket sizes must be positive (bucket_mb={bucket_mb}, first_bucket_mb={first_bucket_mb})")
        self.model, self.optimizer = model, optimizer
        self._optimizers = [] if optimizer is None else list(optimizer) if isinstance(optimizer, (list, tuple)) \
            else [optimizer]
        self.bucket_mb, self.first_bucket_mb = bucket_mb, first_bucket_mb
        self.compression, self.find_unused = compression, find_unused_parameters
        self.broadcast_buffers = bool(broadcast_buffers)
        self._buffer_root = 0  # whose buffers the others take after a step (under join(): one still training)
        self._staged_buffers = None  # the root's buffers, received during the step, to put in place after it
        self.powersgd_rank, self.powersgd_start = powersgd_rank, powersgd_start
        self._comm = (comm or MPI.COMM_WORLD).Dup()
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)  # on every rank: a collective
        self._local_size = node.Get_size()
        node.Free()
        self.algo = self._resolve(algo, model)
        self.step = 0
        self.last_stats: StepStats | None = None
        self._sync = True
        self.backward_passes_per_step = backward_passes_per_step
        self._passes = 0  # backward passes since the last averaging
        self._local = False  # this backward only accumulates (not the N-th of backward_passes_per_step)
        self._done = False  # the gradients are averaged (and no backward has added to them since)
        self._used: set[int] = set()  # the optimizers (ids) that have stepped with them
        self._joining = False  # inside join(): every step first says how many ranks still train
        self._trained = 0  # steps this rank took part in with its own gradients (for join)
        self._queued = False  # the end-of-backward callback is queued
        self._core = self._load_core()
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._check_same_model(named, {"bucket_mb": bucket_mb, "first_bucket_mb": first_bucket_mb,
                                       "compression": compression, "algo": self.algo,
                                       "find_unused_parameters": find_unused_parameters,
                                       "broadcast_buffers": self.broadcast_buffers,
                                       "backward_passes_per_step": backward_passes_per_step,
                                       **({"powersgd_rank": powersgd_rank, "powersgd_start": powersgd_start}
                                          if compression == "powersgd" else {})})
        self.shared_buckets = self._shares_buckets(named)
        self._buckets = self._make_buckets(named, int(bucket_mb * 2**20), int(first_bucket_mb * 2**20))
        self._slot = {id(p): (b.index, i) for b in self._buckets for i, p in enumerate(b.params)}
        self._own_group = self.algo == "torch" and self.size > 1 and torchdist.join_default_group(self._comm)
        self._broadcast_state()
        timeline = timeline or os.environ.get("MPIRT_TIMELINE") or None
        self._timeline = Timeline(self._comm, timeline) if timeline else None
        self._next = 0
        for b in self._buckets:
            b.reset()
        threaded = overlap and MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        self._worker = CommThread(threaded)
        # casts back from the wire dtype, while the communication thread sends the next bucket
        # (torch.distributed's own reductions stay in flight instead)
        self._casts = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mpirt-cast") if (
            threaded and self.algo != "torch" and any(b.wire is not None for b in self._buckets)) else None
        self.inspector = StallInspector(
            self._comm,
            _env_float("MPIRT_STALL_WARN_S", 60.0) if stall_warn_s is None else stall_warn_s,
            _env_float("MPIRT_STALL_ABORT_S", 0.0) if stall_abort_s is None else stall_abort_s)
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for _, p in named]
        self._hooks += [opt.register_step_pre_hook(self._before_step) for opt in self._optimizers]
        atexit.register(self.close)

    # Construction.
    def _resolve(self, algo: str, model: torch.nn.Module) -> str:
        if algo != "auto":
            return algo
        cuda_model = any(p.is_cuda for p in model.parameters())
        return choose_algo(algo, cuda_model, cuda_model and "nccl" in torchdist.default_backend(self._local_size))

    def _shares_buckets(self, named) -> bool:
        """Whether CPU buckets go in memory the ranks of a node share, which the core's `shm`
        reduces without staging (docs/training.md): where the core reduces on CPUs with several
        ranks on every node, /dev/shm (where MPI maps it; 64 MiB in a container by default) has
        twice the room, and MPIRT_SHARED_BUCKETS is not 0. Decided by all ranks together."""
        wanted = (self._core is not None and self.algo in ("core", "shm", "ordered") and self._local_size > 1
                  and self.compression != "powersgd" and os.environ.get("MPIRT_SHARED_BUCKETS", "1") != "0")
        if wanted:
            wire = COMPRESSION[self.compression]
            per_rank = sum(p.numel() * (wire.itemsize if wire is not None and p.dtype in (torch.float32, torch.float64)
                                        else p.element_size())
                           for _, p in named if p.device.type == "cpu" and p.dtype in _SHAREABLE)
            try:
                room = shutil.disk_usage("/dev/shm").free
            except OSError:
                room = 0
            wanted = 2 * per_rank * self._local_size <= room
        return bool(self._comm.allreduce(int(wanted), op=MPI.MIN))

    def _zeros(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A bucket's buffer (the one its reduction reads and writes), shared where decided."""
        if self.shared_buckets and device.type == "cpu" and dtype in _SHAREABLE:
            return shared_zeros(numel, dtype, comm=self._comm)
        return torch.zeros(numel, dtype=dtype, device=device)

    def _load_core(self):
        if self.algo in ("mpi4py", "torch"):
            return None
        try:
            from mpirt.comm import core

            return core()
        except (ImportError, RuntimeError) as e:
            if self.rank == 0:
                say(f"mpirt: compiled core unavailable ({e}); reducing with mpi4py instead", err=True)
            return None

    def _make_buckets(self, named, cap: int, first_cap: int) -> list[_Bucket]:
        """Tensors in reverse order, one group per (dtype, device) being filled; a group closes
        once it holds its cap, as DDP's do. Closing before a tensor that would overflow it
        instead made a bucket of each bias between two large weights: with 2 MiB buckets, a
        tiny allreduce between every two large ones (0.89x the throughput of 25 MiB buckets
        for the `comm` model on 2 hosts of 2 ranks)."""
        groups: list[list[tuple[str, torch.Tensor]]] = []
        sizes: list[int] = []
        open_group: dict[tuple, int] = {}  # (dtype, device) -> the group being filled
        first_group: dict[tuple, int] = {}
        for name, p in reversed(named):
            kind = (p.dtype, p.device)
            g = open_group.get(kind)
            if g is None:
                g = open_group[kind] = len(groups)
                first_group.setdefault(kind, g)
                groups.append([])
                sizes.append(0)
            groups[g].append((name, p))
            sizes[g] += p.numel() * p.element_size()
            if sizes[g] >= (first_cap if first_group[kind] == g else cap):
                del open_group[kind]
        wire_dtype = COMPRESSION[self.compression]
        buckets = []
        for i, members in enumerate(groups):
            p0 = members[0][1]
            numel = sum(p.numel() for _, p in members)
            wire, psgd = None, None
            if wire_dtype is not None and p0.dtype in (torch.float32, torch.float64):
                wire = self._zeros(numel, wire_dtype, p0.device)
            flat = torch.zeros(numel, dtype=p0.dtype, device=p0.device) if wire is not None else \
                self._zeros(numel, p0.dtype, p0.device)
            views, off = [], 0
            for _, p in members:
                views.append(flat[off:off + p.numel()].view_as(p))
                off += p.numel()
            if self.compression == "powersgd" and p0.dtype in (torch.float32, torch.float64):
                psgd = BucketCompressor(views, self.powersgd_rank, seed=i)
            buckets.append(_Bucket(i, [n for n, _ in members], [p for _, p in members], flat, views, wire, psgd))
        return buckets

    def _check_same_model(self, named, config) -> None:
        sig = signature(named, list(self.model.named_buffers()), config)
        digest = hashlib.sha256(repr(sig).encode()).hexdigest()
        if len(set(self._comm.allgather(digest))) == 1:
            return
        sigs = self._comm.allgather(sig)
        raise ModelMismatchError(describe_mismatch(sigs))

    def _broadcast_state(self, root: int = 0) -> None:
        if self.size == 1:
            return
        broadcast_tensors(self._comm, [p.data for p in self.model.parameters()] + list(self.model.buffers()), root)
        for opt in self._optimizers:
            broadcast_optimizer_state(self._comm, opt, root)

    def _share_buffers(self) -> None:
        """Start this step's broadcast of the buffers (BatchNorm statistics; DDP's
        ``broadcast_buffers``, which it does before each forward) from rank 0, or under join()
        the lowest rank still training: a snapshot packed now, when forward has written them,
        that the communication thread sends ahead of the step's first bucket, so it overlaps
        backward; ``_take_buffers`` puts the root's in place once the step's collectives are
        done, before the next forward."""
        buffers = list(self.model.buffers())
        if not (self.broadcast_buffers and buffers):
            return
        packed, groups = pack(buffers)
        events = [torch.cuda.Event() if p.is_cuda else None for p in packed]
        for p, event in zip(packed, events):
            if event is not None:
                event.record(torch.cuda.current_stream(p.device))
        self._worker.submit(lambda s=self.step: self._bcast_buffers(packed, events, groups, s))

    def _bcast_buffers(self, packed, events, groups, step: int) -> None:
        """On the communication thread: the snapshot to the host, broadcast in place there."""
        t0 = self._timeline.now() if self._timeline else 0
        self.inspector.enter(step, "buffer broadcast", 0, 0)
        host = []
        for p, event in zip(packed, events):
            with self._comm_stream(p):
                if event is not None:
                    torch.cuda.current_stream(p.device).wait_event(event)
                host.append(p.cpu())  # on that stream, which it waits for
        flat = torch.cat(host) if len(host) > 1 else host[0]
        root = self._buffer_root
        bcast_bytes(self._comm, flat, root)
        self._staged_buffers = (flat, groups) if root != self.rank else None
        self.inspector.leave(step)
        if self._timeline:
            self._timeline.span("broadcast buffers", t0, self._timeline.now(), step=step, root=root)

    def _take_buffers(self) -> None:
        """On the training thread, the step's collectives done: the root's buffers in place
        (on the training stream for CUDA ones, before the next forward's kernels)."""
        if self._staged_buffers is not None:
            flat, groups = self._staged_buffers
            self._staged_buffers = None
            unpack(flat, groups)

    # Reduction.
    def _allreduce(self, t: torch.Tensor, op: str) -> None:
        if t.is_complex():  # sums and averages part by part: reduce the real view
            t = torch.view_as_real(t).view(-1)
        if self.algo == "torch":  # on this thread's stream; a CUDA bucket's is synchronised after
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX if op == "max" else
                                         torch.distributed.ReduceOp.SUM)
            if op == "avg":
                t.div_(self.size)
            return
        if t.is_cuda:  # the core copies on a stream of its own: the tensor's work must be done
            torch.cuda.current_stream(t.device).synchronize()
        if self._core is not None:
            self._core.allreduce(self._comm.py2f(), t.data_ptr(), t.data_ptr(), t.numel(),
                                 str(t.dtype).removeprefix("torch."), op, "auto" if self.algo == "core" else self.algo,
                                 str(t.device))
            return
        host = t if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.int32) else \
            t.to("cpu", torch.float32 if t.is_floating_point() else t.dtype)
        mpi_op = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX}[op]
        self._comm.Allreduce(MPI.IN_PLACE, host.numpy(), op=mpi_op)
        if op == "avg":
            host.div_(self.size)
        if host is not t:
            t.copy_(host)

    def _comm_stream(self, t: torch.Tensor):
        """A CUDA bucket's casts, copies and staging run on a stream of the communication
        thread's own: on the default stream they would queue behind the rest of backward."""
        if not t.is_cuda:
            return contextlib.nullcontext()
        if t.device not in self._streams:
            self._streams[t.device] = torch.cuda.Stream(device=t.device)
        return torch.cuda.stream(self._streams[t.device])

    def _reduce_bucket(self, b: _Bucket, step: int) -> InFlight | None:
        """Average bucket ``b``: to the end here, or, through torch.distributed, started here
        and returned in flight for the communication thread to finish after the next start."""
        with self._comm_stream(b.flat):
            t0 = self._timeline.now() if self._timeline else 0
            self.inspector.enter(step, "gradient allreduce", b.index, len(self._buckets))
            if b.event is not None:  # the gradients (or a shadowed step's zeros) are written
                torch.cuda.current_stream(b.flat.device).wait_event(b.event)
            if b.psgd is not None and step >= self.powersgd_start:
                b.psgd.reduce(self._allreduce)  # its reductions depend on one another: in turn
                self._complete(b, step, t0, b.psgd.wire_numel * b.flat.element_size())
                return None
            t = b.flat if b.wire is None else b.wire  # the wire copy was made by _submit
            sent = t.numel() * t.element_size()
            if self.algo == "torch":
                work = torch.distributed.all_reduce(t, async_op=True)
                return InFlight(work.get_future(), lambda: self._complete(b, step, t0, sent, work=work))
            self._allreduce(t, "avg" if b.wire is None else "sum")
            if b.wire is None or self._casts is None:
                self._complete(b, step, t0, sent)
                return None
        self._reduced(b, step, t0, sent)
        cast = self._casts.submit(self._cast_back, b, step)
        return InFlight(cast, cast.result)

    def _complete(self, b: _Bucket, step: int, t0: int, sent: int, work=None) -> None:
        """After the reduction, on the communication thread (waiting for torch.distributed's
        ``work`` if it is in flight): the average back into the bucket."""
        if work is not None:
            self.inspector.enter(step, "gradient allreduce", b.index, len(self._buckets))
            work.wait()
        self._unwire(b, divide=work is not None)
        self._reduced(b, step, t0, sent)

    def _reduced(self, b: _Bucket, step: int, t0: int, sent: int) -> None:
        self.inspector.leave(step)
        if self._timeline:
            self._timeline.span(f"allreduce bucket {b.index}", t0, self._timeline.now(), step=step, bytes=sent,
                                algo=self.algo if self._core is not None or self.algo == "torch" else "mpi4py")

    def _cast_back(self, b: _Bucket, step: int) -> None:
        """On the cast thread, while the communication thread sends the next bucket."""
        t0 = self._timeline.now() if self._timeline else 0
        self._unwire(b, divide=False)
        if self._timeline:
            self._timeline.span(f"cast back bucket {b.index}", t0, self._timeline.now(), step=step)

    def _unwire(self, b: _Bucket, divide: bool) -> None:
        """The average into the bucket: cast back from the wire copy, or (``divide``) a sum
        divided; finished on the device before the training thread may read it."""
        with self._comm_stream(b.flat):
            if b.wire is not None:
                b.flat.copy_(b.wire)
            elif divide:
                b.flat.div_(self.size)
            if b.flat.is_cuda:
                torch.cuda.current_stream(b.flat.device).synchronize()

    def _launch(self, b: _Bucket) -> None:
        b.launched = True
        if self.size == 1:
            return
        if b.index == 0:  # this step's first collectives
            if self._joining:
                self._worker.submit(lambda: self._still_training(True))
            self._share_buffers()
        self._submit(b)

    def _submit(self, b: _Bucket) -> None:
        """Queue the bucket's reduction. The wire copy is made here, as DDP's compression hook
        does it on the autograd thread: the communication thread keeps sending meanwhile. A CUDA
        bucket's writes so far are marked by an event on this thread's stream of its device, for
        the communication stream to wait for."""
        if b.wire is not None:
            t0 = self._timeline.now() if self._timeline else 0
            # scaled at full precision, rounded once; in place then a copy: torch.mul(out=) of
            # another dtype took 6-15 ms for 4 M elements here, these two about 1.5
            b.flat.mul_(1.0 / self.size)
            b.wire.copy_(b.flat)
            if self._timeline:
                self._timeline.span(f"cast bucket {b.index}", t0, self._timeline.now(), step=self.step)
        if b.flat.is_cuda:
            b.event = torch.cuda.Event()
            b.event.record(torch.cuda.current_stream(b.flat.device))
        self._worker.submit(lambda b=b, s=self.step: self._reduce_bucket(b, s))

    def _mark_ready(self, b: _Bucket) -> None:
        if self._timeline:
            self._timeline.instant(f"bucket {b.index} ready", step=self.step)
        b.ready = True
        while self._next < len(self._buckets) and self._buckets[self._next].ready:
            self._launch(self._buckets[self._next])
            self._next += 1

    def _absorb(self, b: _Bucket, i: int) -> None:
        p, view = b.params[i], b.views[i]
        g = p.grad
        if g is None:
            view.zero_()  # its share of the average
            if not p.requires_grad:  # frozen since: as in one process, the optimizer must skip it
                return
        elif g.is_sparse:
            raise RuntimeError(f"parameter {b.names[i]!r} has a sparse gradient, which mpirt does not reduce; "
                               "use a dense embedding (sparse=False)")
        elif g.data_ptr() != view.data_ptr():
            view.copy_(g)
        p.grad = view

    def _queue_end(self) -> None:
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._sync:
            return
        if not self._queued:  # the first gradient of this backward
            self._done = False  # a backward after averaged gradients (a second loss, a skipped step) adds to them
            self._passes += 1
            self._local = self._passes < self.backward_passes_per_step
            self._queue_end()
        if self._local:
            return
        b_idx, i = self._slot[id(p)]
        b = self._buckets[b_idx]
        self._absorb(b, i)
        b.fired[i] = True
        b.pending -= 1
        if b.pending == 0:
            self._mark_ready(b)

    def _end_of_backward(self) -> None:
        """Queued on the backward that produced the step's first gradient. That may be a
        backward run by a node of another (reentrant activation checkpointing recomputes the
        checkpointed part and runs its backward inside the user's): it ends before the other
        gradients exist, so the callback moves to the end of the enclosing backward, from a
        hook run there when that node is done; averaged here, the step would be averaged and
        counted twice."""
        outer = torch._C._current_autograd_node()  # the node this backward runs in; None at the top
        if outer is not None:  # still queued, as it were: gradients arriving meanwhile queue no other
            outer.register_hook(self._requeue)
            return
        self._queued = False
        if self._local:
            self._local = False
        elif not self._done:
            self._average()

    def _requeue(self, *_grads) -> None:
        """Post-hook of the node a nested backward ran in: on the enclosing backward."""
        self._queued = False
        self._queue_end()

    def _average(self) -> None:
        self._finish_step()
        self._done, self._used, self._passes = True, set(), 0

    def _before_step(self, optimizer, *_args) -> None:
        """Optimizer step pre-hook. Backward averaged the gradients when it ended; a rank that
        ran no backward this step (no gradients since, or this optimizer has stepped with them
        already) still takes part in the step's collectives here. Each optimizer steps once
        with each averaging: with several, the second does not start a step of its own."""
        if not self._done or id(optimizer) in self._used:
            self._average()
        self._used.add(id(optimizer))

    def synchronize(self) -> StepStats:
        """Make sure every gradient is averaged: needed only on a rank that ran no backward
        this step before it reads gradients (backward averages them before it returns)."""
        if not self._done or self._used:
            self._average()
        return self.last_stats

    def _finish_step(self) -> StepStats:
        if not self._sync:
            raise RuntimeError("optimizer.step() inside dp.no_sync(): gradients were never averaged across ranks; "
                               "leave the no_sync() block for the last backward before the step")
        t0 = time.perf_counter()
        used = []
        for b in self._buckets:
            for i, p in enumerate(b.params):
                used.append(b.fired[i] or p.grad is not None)
                if not b.fired[i]:
                    self._absorb(b, i)
            if not b.ready:
                self._mark_ready(b)
        mask = None
        if self.find_unused:  # every rank, every step: whether a rank has unused parameters is not shared
            mask = torch.tensor(used, dtype=torch.int32, device="cpu")
            if self.size > 1:
                self._worker.submit(lambda: self._allreduce_mask(mask))
        self._worker.drain()
        self._take_buffers()
        thawed = next((n for n, p in self._frozen if p.requires_grad and p.grad is not None), None)
        if thawed is not None:
            raise RuntimeError(f"parameter {thawed!r} did not require grad when data_parallel() was built, so its "
                               "gradient is not averaged and the ranks' weights would drift apart: after changing "
                               "which parameters train, call close() and data_parallel() again")
        exposed = time.perf_counter() - t0
        if self._timeline:
            end = self._timeline.now()
            self._timeline.span("wait for gradients", end - int(exposed * 1e9), end, step=self.step)
        if mask is not None:
            flags = iter(mask.tolist())
            for b in self._buckets:
                for p in b.params:
                    if not next(flags):
                        p.grad = None
        stats = StepStats(self.step, self._worker.busy_s, exposed, len(self._buckets))
        self._trained += self._joining
        self._worker.busy_s = 0.0
        self.last_stats = stats
        self.step += 1
        self.inspector.leave(self.step)
        self._next = 0
        for b in self._buckets:
            b.reset()
        return stats

    def _still_training(self, mine: bool) -> int | None:
        """The lowest rank still in its join() loop, None when none is (the collective that
        opens each step); its buffers are the ones the others take after the step."""
        flag = torch.tensor([self.size - self.rank if mine else 0], dtype=torch.int32, device="cpu")
        self.inspector.enter(self.step, "join()'s count of the ranks still training", 0, 0)
        self._allreduce(flag, "max")
        self.inspector.leave(self.step)
        first = int(flag.item())
        lowest = self.size - first if first else None
        self._buffer_root = 0 if lowest is None else lowest
        return lowest

    @contextlib.contextmanager
    def join(self):
        """Wrap the training loop when ranks may have different numbers of batches: a rank that
        leaves the loop early takes part in the others' gradient averaging with zeros (the
        average still divides by the world size, as DDP's ``Join`` does) until every rank has
        left it; then every rank takes the weights and optimizer state of the rank that took
        the most steps. Every rank must use it; collectives of your own inside the loop cannot
        be shadowed and would hang."""
        if self.size == 1:
            yield
            return
        self._worker.drain()
        self._joining, self._trained = True, 0
        try:
            yield
        except BaseException:
            self._joining, self._buffer_root = False, 0
            raise
        self._worker.drain()
        counts = []
        self._worker.submit(lambda: counts.append(self._still_training(False)))
        self._worker.drain()
        while counts[-1] is not None:  # shadow one step of the ranks still training
            self._share_buffers()
            for b in self._buckets:
                b.flat.zero_()
                self._submit(b)
            if self.find_unused:
                mask = torch.zeros(sum(len(b.params) for b in self._buckets), dtype=torch.int32, device="cpu")
                self._worker.submit(lambda: self._allreduce_mask(mask))
            self._worker.submit(lambda: counts.append(self._still_training(False)))
            self._worker.drain()
            self._take_buffers()
            self.step += 1
        for b in self._buckets:
            b.reset()
        self._joining, self._buffer_root = False, 0
        steps = self._comm.allgather(self._trained)
        self._broadcast_state(root=max(range(self.size), key=lambda r: (steps[r], -r)))

    def _allreduce_mask(self, mask: torch.Tensor) -> None:
        self.inspector.enter(self.step, "unused-parameter mask allreduce", 0, 0)
        self._allreduce(mask, "max")
        self.inspector.leave(self.step)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, with no communication."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _unshare(self) -> None:
        """Move every bucket out of shared memory before it is freed: gradients that are views
        of a bucket become views of a private copy."""
        if not self.shared_buckets:
            return
        for b in self._buckets:
            if b.wire is not None:
                b.wire = b.wire.clone()
                continue
            b.flat, off = b.flat.clone(), 0
            for i, p in enumerate(b.params):
                view = b.flat[off:off + p.numel()].view_as(p)
                off += p.numel()
                if p.grad is not None and p.grad.data_ptr() == b.views[i].data_ptr():
                    p.grad = view
                b.views[i] = view

    def compile(self, backend="inductor", **options) -> torch.nn.Module:
        """``torch.compile(model, **options)`` with the compiled graph split where this
        object's buckets end (DDP does the same for a model it wraps, with the same splitter:
        torch's DDPOptimizer). A model compiled whole has one backward node, so every gradient
        appears when it ends and no reduction overlaps its backward; split, each bucket's
        reduction starts while the layers before it are still in backward. Call it on the
        model after ``data_parallel`` and train with what it returns."""
        from torch._dynamo.backends.distributed import DDPOptimizer
        from torch._dynamo.backends.registry import lookup_backend

        cap = int(self.bucket_mb * 2**20)  # the splitter wants a first bucket no larger than the rest
        split = DDPOptimizer(cap, lookup_backend(backend), first_bucket_cap=min(cap, int(self.first_bucket_mb * 2**20)))
        return torch.compile(self.model, backend=split.compile_fn, **options)

    @property
    def buckets(self) -> list[list[str]]:
        """Parameter names per bucket, in reduction order."""
        return [list(b.names) for b in self._buckets]

    def close(self) -> None:
        """Remove the hooks, stop the threads and write the timeline (also run at interpreter
        exit). While an exception propagates (a ``finally`` on a failing rank), the other
        ranks are not here for a collective: each rank then writes its own part of the
        timeline (PATH.rank-R), and the communicator, the node's shared buckets (whose
        release is collective) and torch.distributed's group are left for the job's abort
        to reclaim, so that the rank reaches ``python -m mpirt``'s abort instead of waiting
        for ranks still training."""
        if self._worker is None:
            return
        failing = sys.exc_info()[1] is not None
        for h in self._hooks:
            h.remove()
        self._worker.close(timeout=5.0 if failing else None)
        self._worker = None
        if self._casts is not None:
            self._casts.shutdown(wait=not failing)
        self.inspector.close()
        if self._timeline and not MPI.Is_finalized():
            if not failing:
                path = self._timeline.write()
                if path:
                    say(f"mpirt: timeline of {self.size} rank{'s' if self.size > 1 else ''} in {path} "
                        "(chrome://tracing or ui.perfetto.dev)", err=True)
            else:
                self._timeline.write_own()
        if self._own_group and not failing:  # NCCL's teardown waits for work the others will never match
            torchdist.leave_default_group()
        if not MPI.Is_finalized():
            self._unshare()
            if not failing:
                self._comm.Free()  # and with it the shared buffers
        atexit.unregister(self.close)


def data_parallel(model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer] | None = None,
                  **options) -> DataParallel:
    """Make ``model`` and ``optimizer`` (one, or a list: Muon for the matrices and AdamW for the
    rest, say) data-parallel across MPI ranks; see the module docstring.

    Options: bucket_mb (MiB; default 2 for a CPU model, 25 for a CUDA one or with PowerSGD),
    first_bucket_mb (1),
    compression ("none", "fp16", "bf16", "powersgd";
    powersgd_rank, default 4, and powersgd_start, the steps averaged exactly first, default 10),
    find_unused_parameters, algo ("auto", the default, or $MPIRT_ALGO: NCCL for a CUDA model where every rank
    of a node has its own GPU, else "core"; "core": the compiled core, its algorithm chosen per size and
    layout; "mpi", "ring", "shm", "ordered", "hier": one of the core's;
    "mpi4py": no core; "torch": torch.distributed, NCCL on GPUs, gloo on CPUs), overlap, comm,
    stall_warn_s / stall_abort_s (default $MPIRT_STALL_WARN_S or 60 s / $MPIRT_STALL_ABORT_S or never),
    timeline (a path for the Chrome-trace timeline; default $MPIRT_TIMELINE, none if unset),
    broadcast_buffers (True: after each step every rank takes rank 0's buffers, as DDP's option of that name),
    backward_passes_per_step (1; N: the gradients of N backward passes add up locally and the N-th averages
    them, as Horovod's option of that name; a step after fewer averages what there is).
    """
    return DataParallel(model, optimizer, **options)
