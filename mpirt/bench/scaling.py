"""`mpirt bench scaling`: the collective sweep and data-parallel training throughput at world
sizes 1, 2, 4, ... up to --max-np, each started through `mpirt launch` (local ranks, or hosts
from a hostfile or the pod), written as one mpirt.bench/1 document.

Repeats differ by part, on purpose. The collective sweep is started afresh for every repeat,
so its spread includes what changes between runs (placement, page mapping). Training repeats
inside one job (torch takes seconds to import) and alternates mpirt, DDP and compute-only
within each repeat. A one-rank allreduce moves no data (busbw is 0 by definition), so the
collective sweep starts at 2 ranks. Rank 0's output comes back over the launcher's stdout,
since on a cluster rank 0 runs on another host than this driver.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mpirt.bench import schema
from mpirt.bench.allreduce import EXECUTABLE, executable

ALGOS = ("mpi", "ring", "shm", "auto", "ordered", "hier")  # the core's (mpirt.core imports MPI; this runs in the launcher)


class ScalingError(ValueError):
    pass


@dataclass(frozen=True)
class ScalingConfig:
    out: str
    max_np: int | None = None  # default: every slot available
    repeats: int = 5
    parts: tuple[str, ...] = ("collective", "train")
    minbytes: str = "1K"
    maxbytes: str = "16M"
    factor: int = 4
    algos: str = "all"
    iters: int | None = None  # collective iterations per size (default: the harness's)
    shared_buffers: bool = False  # the collective sweep on buffers the local ranks share (the harness's -R)
    model: str = "comm"
    scalings: tuple[str, ...] = ("weak", "strong")
    batch: int = 32  # per rank, weak scaling
    global_batch: int | None = None  # strong scaling; default batch * max_np
    steps: int = 10
    device: str = "auto"  # cpu | cuda | auto (cuda when this host has GPUs)
    hostfile: str | None = None
    hosts: str | None = None
    slots: str = "auto"
    oversubscribe: bool = False
    mpirun: str | None = None
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class Placement:
    """Where the ranks go: names and slots of the hosts, or this machine."""

    names: tuple[str, ...]
    slots: int
    source: str
    remote: bool


def world_sizes(max_np: int) -> list[int]:
    """1, 2, 4, ... below max_np, then max_np itself."""
    sizes, n = [], 1
    while n < max_np:
        sizes.append(n)
        n *= 2
    return sizes + [max_np]


def placement(cfg: ScalingConfig, env) -> Placement:
    from launcher.launch import LaunchConfig, resolve_hosts

    hosts, source = resolve_hosts(LaunchConfig(command=(), hostfile=cfg.hostfile, hosts=cfg.hosts, slots=cfg.slots),
                                  env)
    if hosts:
        return Placement(tuple(h.name for h in hosts), sum(h.slots for h in hosts), source, True)
    if cfg.slots not in ("auto", "") and not cfg.slots.isdigit():
        raise ScalingError(f"--slots {cfg.slots!r}: give a number or auto")
    slots = int(cfg.slots) if cfg.slots.isdigit() else (os.cpu_count() or 1)
    return Placement(("localhost",), slots, "this machine", False)


def check(cfg: ScalingConfig, where: Placement) -> tuple[int, list[int]]:
    """(max_np, the world sizes of the sweep) after every check that needs no ranks."""
    max_np = cfg.max_np or where.slots
    if max_np < 1 or cfg.repeats < 1 or cfg.steps < 1 or cfg.batch < 1:
        raise ScalingError("--max-np, --repeats, --steps and --batch must be at least 1")
    if max_np > where.slots:
        if where.remote:
            raise ScalingError(f"--max-np {max_np} is more than the {where.slots} slots on {len(where.names)} hosts "
                               f"({where.source}); lower --max-np or give the hosts more slots (slots=N, --slots)")
        if not cfg.oversubscribe:
            raise ScalingError(f"--max-np {max_np} is more than the {where.slots} slots of this machine (its cores); "
                               "lower --max-np, or pass --oversubscribe to share cores (the results then say so)")
    unknown = set(cfg.parts) - {"collective", "train"}
    if unknown or not cfg.parts:
        raise ScalingError(f"--parts {','.join(cfg.parts)}: choose from collective, train")
    bad = set(cfg.scalings) - {"weak", "strong"}
    if bad or not cfg.scalings:
        raise ScalingError(f"--scaling {','.join(cfg.scalings)}: choose from weak, strong")
    if cfg.algos != "all" and set(cfg.algos.split(",")) - set(ALGOS):
        raise ScalingError(f"--algos {cfg.algos}: choose from {', '.join(ALGOS)} or all")
    if parse_size(cfg.minbytes) > parse_size(cfg.maxbytes):
        raise ScalingError(f"-b {cfg.minbytes} is larger than -e {cfg.maxbytes}")
    sizes = world_sizes(max_np)
    gb = cfg.global_batch or cfg.batch * max_np
    uneven = [n for n in sizes if gb % n]
    if "strong" in cfg.scalings and "train" in cfg.parts and uneven:
        lcm = math.lcm(*sizes)
        raise ScalingError(f"--global-batch {gb} does not split evenly over {uneven[0]} ranks; give a multiple of "
                           f"{lcm} (every world size of the sweep: {', '.join(map(str, sizes))})")
    out = Path(cfg.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ScalingError(f"--out {cfg.out}: {parent} is not a writable directory; create it or choose another path")
    return max_np, sizes


def check_gpus(device: str, where: Placement, max_np: int, gpu_count: int) -> None:
    """On GPUs every rank needs one of its own: DDP's baseline and the NCCL collective run over
    NCCL, which refuses two ranks on one GPU. Known here only for ranks on this machine."""
    if device != "cuda" or where.remote:
        return
    if gpu_count == 0:
        raise ScalingError("--device cuda: this machine has no GPU that NVML sees; use --device cpu (or auto)")
    if max_np > gpu_count:
        raise ScalingError(f"--device cuda with up to {max_np} ranks on this machine, which has {gpu_count} GPU"
                           f"{'' if gpu_count == 1 else 's'}: DDP's baseline and NCCL need a GPU per rank (NCCL "
                           f"refuses two ranks on one); use --max-np {gpu_count}, or --device cpu")


def json_in(output: str, wanted) -> dict:
    """The first JSON object in a rank's output for which ``wanted(doc)`` holds."""
    decoder = json.JSONDecoder()
    at = 0
    while (at := output.find("{", at)) >= 0:
        if at == 0 or output[at - 1] == "\n":
            try:
                doc, _ = decoder.raw_decode(output, at)
                if isinstance(doc, dict) and wanted(doc):
                    return doc
            except json.JSONDecodeError:
                pass
        at += 1
    raise ScalingError("no result in the ranks' output")


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it


def _die_with(driver: int) -> None:
    """In a child, before it runs: SIGTERM from the kernel when ``driver`` (this process, single
    threaded) dies, a kill -9 included, so that `mpirt launch` stops its job (its own SIGTERM
    handling) instead of benchmarking on unwatched."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != driver:  # it died before the request
        os._exit(1)


class Runner:
    """Starts one command on n ranks through `mpirt launch`, and says how long it took."""

    def __init__(self, cfg: ScalingConfig):
        self.cfg = cfg
        self.mpirt = executable("mpirt")
        self.where = []
        if cfg.hostfile:
            self.where += ["--hostfile", cfg.hostfile]
        if cfg.hosts:
            self.where += ["--hosts", cfg.hosts]
        self.where += ["--slots", cfg.slots or "auto"]
        if cfg.mpirun:
            self.where += ["--mpirun", cfg.mpirun]

    def argv(self, n: int, command: list[str], *extra: str) -> list[str]:
        return [self.mpirt, "launch", "-np", str(n), "--no-tag-output", *self.where, *extra, "--", *command]

    def launcher_env(self, n: int) -> dict[str, str]:
        """What `mpirt launch` adds to the ranks' environment, from its dry run."""
        proc = subprocess.run(self.argv(n, ["true"], "--dry-run"), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ScalingError(f"mpirt launch cannot start {n} ranks: {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)["env"]

    def run(self, n: int, command: list[str], what: str) -> str:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(self.argv(n, command), capture_output=True, text=True, check=False,
                                  timeout=self.cfg.timeout_s, preexec_fn=functools.partial(_die_with, os.getpid()))
        except subprocess.TimeoutExpired as e:
            raise ScalingError(f"{what} at {n} ranks ran past --timeout {self.cfg.timeout_s:g} s") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
            raise ScalingError(f"{what} at {n} ranks failed (exit {proc.returncode}):\n{tail}")
        print(f"mpirt bench scaling: {what} at {n} ranks: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        return proc.stdout


def collective_rows(runs: dict[int, list[dict]]) -> list[dict]:
    """Rows from the harness documents of every repeat at every world size."""
    samples: dict[tuple, dict[str, list[float]]] = {}
    info: dict[tuple, dict] = {}
    for n, docs in runs.items():
        for doc in docs:
            for r in doc["results"]:
                if r["wrong"]:
                    raise ScalingError(f"{r['algo']} at {n} ranks, {r['size']} B: {r['wrong']} wrong values; the "
                                       "collective is broken here, so none of its timings count")
                k = (n, r["algo"], r["size"], r["mode"], doc["config"]["dtype"], doc["config"]["op"], doc["device"])
                s = samples.setdefault(k, {"busbw_gbs": [], "algbw_gbs": [], "time_us": []})
                s["busbw_gbs"].append(r["busbw_gbs"])
                s["algbw_gbs"].append(r["algbw_gbs"])
                s["time_us"].append(r["time_us"]["avg"])
                info[k] = {"algo_used": r["algo_used"], "iters": r["iters"], "shm_direct": r.get("shm_direct")}
    fields = schema.KINDS["collective"][0]
    metrics = {k: {m: schema.stat(v) for m, v in s.items()} for k, s in samples.items()}
    bus = {k: m["busbw_gbs"]["median"] for k, m in metrics.items()}
    first = min(runs) if runs else 0
    return [{"kind": "collective", "key": dict(zip(fields, k)), "metrics": metrics[k],
             "derived": {"efficiency": _ratio(bus[k], bus.get((first,) + k[1:])),
                         "vs_mpi": _ratio(bus[k], bus.get((k[0], "mpi") + k[2:]))},
             "info": info[k]} for k in sorted(samples)]


def _ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def train_rows(runs: dict[int, dict], device: str) -> list[dict]:
    """Rows from the training job at every world size: throughput, step time, communication share."""
    by = {}
    for n, doc in runs.items():
        for r in doc["results"]:
            by[(n, r["scaling"], r["system"])] = r
    metrics = {}
    for (n, scaling, system), r in by.items():
        compute = by[(n, scaling, "compute-only")]["step_s"]
        metrics[(n, scaling, system)] = m = {"samples_per_s": schema.stat([r["global_batch"] / t for t in r["step_s"]]),
                                             "step_s": schema.stat(r["step_s"])}
        if system != "compute-only":
            m["comm_share"] = schema.stat([max(0.0, 1.0 - c / t) for c, t in zip(compute, r["step_s"])])
    thr = {k: m["samples_per_s"]["median"] for k, m in metrics.items()}
    rows = []
    for (n, scaling, system), r in sorted(by.items()):
        k = (n, scaling, system)
        one = thr.get((1, scaling, system))
        derived = {"efficiency": _ratio(thr[k], n * one if one else None)}
        if system == "mpirt" and (n, scaling, "ddp") in thr:
            derived["vs_ddp"] = _ratio(thr[k], thr[(n, scaling, "ddp")])
        rows.append({"kind": "train", "key": {"np": n, "scaling": scaling, "system": system,
                                              "model": runs[n]["model"], "device": device},
                     "metrics": metrics[k], "derived": derived,
                     "info": {"per_rank_batch": r["per_rank_batch"], "global_batch": r["global_batch"],
                              "params": runs[n]["params"]}})
    return rows


def parse_size(text: str) -> int:
    """'16M' -> 16 MiB, as the harness reads -b/-e (binary suffixes)."""
    t = text.strip().upper()
    shift = {"K": 10, "M": 20, "G": 30}.get(t[-1:], 0)
    try:
        value = int(t[:-1] if shift else t) << shift
    except ValueError:
        value = 0
    if value < 1:
        raise ScalingError(f"size {text!r}: give bytes with an optional K, M or G suffix, e.g. 1K or 16M")
    return value


def nccl_present() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_nccl_available()


def _device(cfg: ScalingConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    from mpirt.bench.environment import gpus

    return "cuda" if gpus() else "cpu"


def run(cfg: ScalingConfig) -> dict:
    from launcher.mpi import detect, find_mpirun
    from mpirt.bench import environment

    where = placement(cfg, os.environ)
    max_np, sizes = check(cfg, where)
    device = _device(cfg)
    check_gpus(device, where, max_np, len(environment.gpus()))
    impl = detect(find_mpirun(cfg.mpirun))
    runner = Runner(cfg)
    added = runner.launcher_env(max_np)
    gb = cfg.global_batch or cfg.batch * max_np
    coll: dict[int, list[dict]] = {}
    nccl: dict[int, list[dict]] = {}  # torch.distributed NCCL, the GPU baseline users know
    train: dict[int, dict] = {}
    rank_view: dict = {}
    harness = executable(EXECUTABLE)
    for n in sizes:
        if "collective" in cfg.parts and n >= 2:
            command = [harness, "-b", cfg.minbytes, "-e", cfg.maxbytes, "-f", str(cfg.factor), "-a", cfg.algos,
                       "-m", "out-of-place", "-D", device, "-J", "-"]
            if cfg.iters:
                command += ["-n", str(cfg.iters), "-w", str(max(2, cfg.iters // 10))]
            if cfg.shared_buffers:
                command.append("-R")
            for rep in range(cfg.repeats):
                out = runner.run(n, command, f"collective sweep {rep + 1}/{cfg.repeats}")
                doc = json_in(out, lambda d: d.get("schema") == "mpirt.bench.allreduce/1")
                coll.setdefault(n, []).append(doc)
                rank_view.setdefault("mpi_library", doc["mpi"]["library"])
                rank_view.setdefault("cuda_aware", doc["mpi"]["cuda_aware"])
        if "collective" in cfg.parts and n >= 2 and device == "cuda" and nccl_present():
            command = [sys.executable, "-P", "-m", "mpirt.bench.nccl", "--minbytes", str(parse_size(cfg.minbytes)),
                       "--maxbytes", str(parse_size(cfg.maxbytes)), "--factor", str(cfg.factor),
                       "--iters", str(cfg.iters or 20)]
            for rep in range(cfg.repeats):
                out = runner.run(n, command, f"NCCL baseline {rep + 1}/{cfg.repeats}")
                nccl.setdefault(n, []).append(json_in(out, lambda d: d.get("schema") == "mpirt.bench.nccl/1"))
        if "train" in cfg.parts:
            # -P: a source checkout in the working directory must not shadow the installed package
            command = [sys.executable, "-P", "-m", "mpirt.bench.train", "--json", "-", "--model", cfg.model,
                       "--scaling", ",".join(cfg.scalings), "--batch", str(cfg.batch), "--global-batch", str(gb),
                       "--steps", str(cfg.steps), "--repeats", str(cfg.repeats), "--device", device]
            out = runner.run(n, command, f"training ({cfg.repeats} repeats)")
            train[n] = json_in(out, lambda d: "results" in d and "rank_view" in d)
            rank_view.update(train[n]["rank_view"])
        if n in train or n in coll:  # hosts the ranks really ran on (a launcher-only run is caught here)
            rank_view["nodes"] = train[n]["rank_view"]["nodes"] if n in train else coll[n][-1]["world"]["nodes"]
    both = {n: coll.get(n, []) + nccl.get(n, []) for n in {*coll, *nccl}}
    rows = collective_rows(both) + train_rows(train, device)
    hosts = {"count": len(where.names), "slots": where.slots, "names": list(where.names), "from": where.source,
             "oversubscribed": max_np > where.slots, "nodes_seen": rank_view.get("nodes")}
    env = environment.collect(impl=impl, hosts=hosts, launcher_added=added, rank_view=rank_view)
    config = {"world_sizes": sizes, "collective_world_sizes": [n for n in sizes if n >= 2] if "collective" in
              cfg.parts else [], "repeats": cfg.repeats, "parts": list(cfg.parts), "device": device,
              "collective": {"minbytes": cfg.minbytes, "maxbytes": cfg.maxbytes, "factor": cfg.factor,
                             "algos": cfg.algos, "iters": cfg.iters, "mode": "out-of-place",
                             "shared_buffers": cfg.shared_buffers},
              "train": {"model": cfg.model, "scalings": list(cfg.scalings), "batch_per_rank": cfg.batch,
                        "global_batch": gb, "steps": cfg.steps,
                        # what reduced the gradients: data_parallel's algo for mpirt, the backend for DDP
                        "reduced_by": rank_view.get("reduced_by", {})}}
    doc = schema.document("scaling", env, config, rows)
    schema.write(doc, cfg.out)
    return doc
