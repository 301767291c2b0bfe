"""Every float16 bit pattern through the core's reductions, against numpy, on 2 ranks.

Rank 0 gives each value, rank 1 the same values reversed, so each pair differs and sums
cover overflow, subnormals, signed zeros, infinities and NaNs (min and max follow
IEEE 754-2019: a NaN wins, -0 < +0). The core widens to fp32,
reduces and rounds once to nearest even, which numpy does as written below. Rank 0 prints
one JSON line: the cases and the values that differ (NaNs compare as NaN, any payload).
"""

import json

import numpy as np

from mpirt.comm import MPI
from mpirt.core import allreduce

comm = MPI.COMM_WORLD
every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
mine = every if comm.Get_rank() == 0 else every[::-1].copy()
wide = every.astype(np.float32), every[::-1].astype(np.float32)
with np.errstate(all="ignore"):
    a, b = wide
    nan = np.isnan(a) | np.isnan(b)
    # IEEE 754-2019 minimum / maximum: a NaN wins and -0 < +0, whichever rank holds which
    want = {"sum": (a + b).astype(np.float16),
            "min": np.where(nan, np.nan, np.where((b < a) | ((b == a) & np.signbit(b)), b, a)),
            "max": np.where(nan, np.nan, np.where((b > a) | ((b == a) & ~np.signbit(b)), b, a)),
            # avg: the sum is rounded to float16 first, then halved (scaled once the sum is whole)
            "avg": ((a + b).astype(np.float16).astype(np.float32) * np.float32(0.5)).astype(np.float16)}
report = {"cases": 0, "wrong": {}}
for algo in ("shm", "ring"):
    for op, expect in want.items():
        got = allreduce(mine, np.empty_like(mine), op=op, algo=algo)
        expect = expect.astype(np.float16)
        bad = ~((got.view(np.uint16) == expect.view(np.uint16)) | (np.isnan(got) & np.isnan(expect)))
        report["cases"] += 1
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            report["wrong"][f"{algo} {op}"] = f"{int(bad.sum())} values, first {mine[i]!r}: got {got[i]!r}, want {expect[i]!r}"
if comm.Get_rank() == 0:
    print(json.dumps(report))
