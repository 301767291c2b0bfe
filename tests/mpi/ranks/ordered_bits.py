"""`ordered` gives the bits of a serial fold over the ranks in rank order, however the buffer
is split into calls (as gradients are fused into buckets of any size), in place or not.

Inputs are random normal floats, so the order of additions shows in the last bits. Rank 0
prints one JSON line: the number of cases and every failure.
"""

import os
import sys

import numpy as np
import torch

from mpirt.comm import MPI
from mpirt.core import allreduce

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests start Python with PYTHONSAFEPATH
from failures import report  # noqa: E402  (beside this script)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
COUNT = 3 * (1 << 20) // 2 + 7  # more than one 4 MiB block of float32, not divisible by the ranks


def inputs(dtype, seed):
    vals = [np.random.default_rng(seed * 100 + r).standard_normal(COUNT) * 10.0 ** (r % 3) for r in range(size)]
    if dtype == "bfloat16":
        return [torch.tensor(v, dtype=torch.bfloat16) for v in vals]
    return [v.astype(dtype) for v in vals]


def serial_fold(bufs, op):
    """Rank 0 to n-1, one left fold in the accumulation type (fp32 for 16-bit floats), rounded
    once; avg then scales that result by 1/n in the accumulation type, as the core does."""
    if isinstance(bufs[0], torch.Tensor):
        widen, narrow, inv = (lambda b: b.float()), (lambda a: a.to(torch.bfloat16)), torch.tensor(1 / size)
        mn, mx = torch.minimum, torch.maximum
    else:
        wide = np.float32 if bufs[0].dtype == np.float16 else bufs[0].dtype.type
        widen, narrow, inv = (lambda b: b.astype(wide)), (lambda a: a.astype(bufs[0].dtype)), wide(1) / wide(size)
        mn, mx = np.minimum, np.maximum
    acc = widen(bufs[0])
    for b in bufs[1:]:
        acc = acc + widen(b) if op in ("sum", "avg") else (mn if op == "min" else mx)(acc, widen(b))
    return narrow(widen(narrow(acc)) * inv) if op == "avg" else narrow(acc)


def same_bits(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a.view(torch.int16), b.view(torch.int16))
    return a.tobytes() == b.tobytes()


def in_pieces(send, cuts, op):
    """One call per piece, as fused into buckets cut at ``cuts``."""
    out = send.clone() if isinstance(send, torch.Tensor) else send.copy()
    for lo, hi in zip([0, *cuts], [*cuts, COUNT]):
        allreduce(out[lo:hi], op=op, algo="ordered")
    return out


failures, cases, seed = [], 0, 0
for dtype in ("float32", "float64", "float16", "bfloat16"):
    for op in ("sum", "avg", "max"):
        seed += 1
        bufs = inputs(dtype, seed)
        want = serial_fold(bufs, op)
        mine = bufs[rank]
        whole = allreduce(mine, mine.clone() if isinstance(mine, torch.Tensor) else mine.copy(), op=op, algo="ordered")
        cuts = sorted({int(c) for c in np.random.default_rng(seed).integers(1, COUNT, 7)})
        for how, got in (("one call", whole), ("in pieces", in_pieces(mine, cuts, op)),
                         ("tiny pieces", in_pieces(mine, list(range(1, 64)), op))):
            cases += 1
            if not same_bits(got, want):
                diff = int((got != want).sum())
                failures.append(f"rank {rank} {dtype} {op} {how}: {diff} elements differ from the serial fold")

report(comm, cases, failures)
