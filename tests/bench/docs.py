"""Results documents for the report and compare tests, built through the schema's own writer
from measurements given as plain sample lists."""

from __future__ import annotations

import copy

from mpirt.bench import schema

ENV = {
    "mpirt": {"version": "0.1.0", "git_commit": "abc"},
    "mpi": {"impl": "openmpi", "version": "4.1.4", "library": "Open MPI v4.1.4", "cuda_aware": False},
    "network": {"tier": "tcp", "env": {"OMPI_MCA_btl": {"value": "self,vader,tcp", "source": "user"}}},
    "cpu": {"model": "Test CPU", "cores": 2},
    "hosts": {"count": 1, "slots": 2, "names": ["localhost"], "oversubscribed": False},
    "gpus": [], "command": "mpirt bench scaling --out x.json", "timestamp": "2026-11-28T00:00:00+00:00",
}


def collective(np: int, algo: str, size: int, busbw: list[float], **derived) -> dict:
    return {"kind": "collective",
            "key": {"np": np, "algo": algo, "size": size, "mode": "out-of-place", "dtype": "float32", "op": "sum",
                    "device": "cpu"},
            "metrics": {"busbw_gbs": schema.stat(busbw), "time_us": schema.stat([size / b / 1e3 for b in busbw])},
            "derived": derived}


def train(np: int, scaling: str, system: str, thr: list[float], **derived) -> dict:
    return {"kind": "train", "key": {"np": np, "scaling": scaling, "system": system, "model": "comm", "device": "cpu"},
            "metrics": {"samples_per_s": schema.stat(thr), "step_s": schema.stat([64 / t for t in thr]),
                        "comm_share": schema.stat([0.2] * len(thr))},
            "derived": derived, "info": {"global_batch": 64}}


def doc(rows: list[dict], benchmark: str = "scaling") -> dict:
    return schema.document(benchmark, copy.deepcopy(ENV), {"repeats": 5}, rows)


def sweep(scale: float = 1.0, jitter: float = 0.01) -> dict:
    """A two-size, two-algorithm, 1-2 rank sweep; ``scale`` multiplies every rate."""
    def s(v):
        return [v * scale * (1 + jitter * k) for k in (-1, 0, 1)]
    rows = [collective(2, a, size, s(base * size / 1024)) for a, base in (("mpi", 1.0), ("ring", 1.5))
            for size in (1024, 4096)]
    rows += [train(n, sc, sy, s(100.0 * n * (0.9 if sy == "mpirt" else 0.8)), efficiency=0.9)
             for n in (1, 2) for sc in ("weak", "strong") for sy in ("mpirt", "ddp")]
    return doc(rows)
