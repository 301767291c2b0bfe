"""Every algorithm x dtype x op x count x mode against numpy, on every rank.

Run under mpirun; rank 0 prints one JSON line: the number of cases and every failure.
Inputs are small integers, so sum/min/max must match bit for bit in every dtype. With
MPIRT_TEST_SHARED_BUFFERS=1 every buffer lies in memory the local ranks share (shared_zeros),
one element past its start, which `shm` reduces without staging.
"""

import os
import sys

import numpy as np
import torch

from mpirt.comm import MPI
from mpirt.core import ALGOS, OPS, allreduce, shared_zeros

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests start Python with PYTHONSAFEPATH
from failures import report  # noqa: E402  (beside this script)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
# 0, 1, fewer than the ranks, not divisible by them, and (float32) past where shm measures its stores.
COUNTS = [0, 1, 3, 4 * size + 3, 70001]
DTYPES = ["float32", "float64", "float16", "bfloat16", "int32"]
EPS = {"float32": 1.2e-7, "float64": 2.2e-16, "float16": 9.8e-4, "bfloat16": 7.9e-3, "int32": 0}


def inputs(count, seed):
    return [np.random.default_rng(seed * 1000 + r).integers(-8, 9, count).astype(np.float64) for r in range(size)]


def expected(values, op, dtype):
    stack = np.stack(values)
    if op == "min":
        return stack.min(axis=0)
    if op == "max":
        return stack.max(axis=0)
    total = stack.sum(axis=0)
    if op == "sum":
        return total
    return np.trunc(total / size) if dtype == "int32" else total / size


SHARED = os.environ.get("MPIRT_TEST_SHARED_BUFFERS") == "1"
pools = {}  # dtype -> a shared buffer holding the send buffer, then the receive buffer


def make(values, dtype, slot):
    if dtype == "bfloat16":  # numpy has no bfloat16: go through torch
        buf = torch.tensor(values, dtype=torch.bfloat16)
    else:
        buf = values.astype(dtype)
    if not SHARED:
        return buf
    span = max(COUNTS) + 1
    if dtype not in pools:  # collective: every rank meets the dtypes in the same order
        pools[dtype] = shared_zeros(2 * span + 1, torch.bfloat16 if dtype == "bfloat16" else dtype)
    at = slot * span + 1
    view = pools[dtype][at:at + len(values)]
    view[...] = buf
    return view


def to_f64(buf):
    return buf.to(torch.float64).numpy() if isinstance(buf, torch.Tensor) else buf.astype(np.float64)


failures, cases, seed = [], 0, 0
for algo in ALGOS:
    for dtype in DTYPES:
        for op in OPS:
            for count in COUNTS:
                for inplace in (False, True):
                    seed += 1
                    vals = inputs(count, seed)
                    send = make(vals[rank], dtype, 0)
                    recv = None if inplace else make(np.zeros(count), dtype, 1)
                    out = allreduce(send, recv, op=op, algo=algo)
                    got, want = to_f64(out), expected(vals, op, dtype)
                    tol = 2 * EPS[dtype] * np.maximum(1, np.abs(want)) if op == "avg" else 0
                    bad = np.flatnonzero(np.abs(got - want) > tol)
                    cases += 1
                    if bad.size or (not inplace and not np.array_equal(to_f64(send), vals[rank])):
                        i = int(bad[0]) if bad.size else -1
                        failures.append(f"rank {rank} {algo} {dtype} {op} count={count} inplace={inplace}: "
                                        f"{bad.size} wrong, first at {i}: got {got[i] if i >= 0 else '-'} "
                                        f"want {want[i] if i >= 0 else '-'} (or send was modified)")

# A torch float32 tensor through every algorithm, out of place into a fresh tensor.
t = torch.arange(10, dtype=torch.float32) + rank
for algo in ALGOS:
    r = torch.empty_like(t)
    allreduce(t, r, algo=algo)
    cases += 1
    if not torch.equal(r, torch.arange(10, dtype=torch.float32) * size + size * (size - 1) / 2):
        failures.append(f"rank {rank} torch tensor via {algo}: {r.tolist()}")

report(comm, cases, failures)
