"""What produced a result, recorded in it (``env`` of mpirt.bench/1), so a number can be
reproduced and two numbers can be judged comparable. Collected on the launcher side without
MPI; what only a rank can see (the MPI library string, CUDA-awareness, GPU names) comes back
from the ranks in ``rank_view``."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import mpirt


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""

# variables that change how MPI, UCX, NCCL or mpirt move data: recorded with where they came from
PERF_PREFIXES = ("OMPI_MCA_", "PRTE_MCA_", "PMIX_MCA_", "UCX_", "NCCL_", "I_MPI_", "MPIR_CVAR_", "FI_", "HYDRA_",
                 "MPIRT_", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "GLOO_")
# ... except those that are only plumbing (paths of this run) or could hold a secret
PLUMBING = ("MPIRT_ERROR_DIR", "MPIRT_STATE_DIR", "MPIRT_LOG_DIR")


def cpu_model(root: Path = Path("/")) -> str:
    try:
        for line in (root / "proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def perf_env(user_env: dict[str, str], launcher_added: dict[str, str]) -> dict[str, dict[str, str]]:
    """{name: {value, source}} for every performance-relevant variable the ranks saw."""
    out = {}
    for source, env in (("user", user_env), ("launcher", launcher_added)):
        for name, value in env.items():
            if name.startswith(PERF_PREFIXES) and name not in PLUMBING and "_ssh_args" not in name.lower() \
                    and "EXTRA_ARGS" not in name:
                out[name] = {"value": value, "source": source}
    return dict(sorted(out.items()))


def network(root: Path = Path("/")) -> dict:
    from launcher.detect.probe import probe

    try:
        p = probe(root)
    except ValueError as e:
        return {"tier": "unknown", "why": str(e)}
    return {"tier": p.tier, "hcas": list(p.hcas), "iface": p.iface, "shm_bytes": p.shm_bytes}


def gpus() -> list[dict]:
    from launcher.detect.gpu import local

    return [{"name": g.name, "memory_bytes": g.memory_bytes, "bus_id": g.bus_id} for g in local().gpus]


def collect(*, impl, hosts: dict, launcher_added: dict[str, str], rank_view: dict, argv: list[str] | None = None,
            root: Path = Path("/")) -> dict:
    """The ``env`` section. ``impl``: launcher.mpi.MpiImpl; ``hosts``: {count, slots, names,
    oversubscribed}; ``rank_view``: {mpi_library, cuda_aware, ...} as rank 0 reported it."""
    build = mpirt.build_info()
    net = network(root)
    net["env"] = perf_env(dict(os.environ), launcher_added)
    return {
        "mpirt": {"version": mpirt.__version__, "git_commit": build["git_commit"],
                  "core": {k: build[k] for k in ("cuda_built", "cuda_architectures", "compiler", "mpi_source")}},
        "mpi": {"impl": impl.family, "version": ".".join(map(str, impl.version)), "mpirun": impl.mpirun,
                "library": rank_view.get("mpi_library", ""), "cuda_aware": bool(rank_view.get("cuda_aware"))},
        "network": net,
        "cpu": {"model": cpu_model(root), "cores": os.cpu_count(), "arch": platform.machine()},
        "gpus": gpus(),
        "hosts": hosts,
        "software": {"python": platform.python_version(), "torch": _version("torch"),
                     "os": platform.platform(terse=True)},
        "command": shlex.join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
