"""`mpirt train`: a complete data-parallel job on a built-in model and synthetic data.

Run on every rank (``mpirt launch -np 2 -- mpirt train``). Rank 0 prints the falling loss,
writes ``metrics.jsonl`` and checkpoints under ``--out``; ``--resume`` continues from the
newest complete checkpoint with the same data order, optimizer state and RNG states, so a
killed and resumed run ends with the weights of an uninterrupted one. SIGTERM (pod
deletion) makes every rank stop after the current step, checkpoint, and exit 143.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from launcher.detect import cpus
from mpirt import checkpoint
from mpirt.comm import MPI
from mpirt.console import say
from mpirt.data_parallel import DEFAULT_FIRST_BUCKET_MB, data_parallel
from mpirt.metrics import Metrics
from mpirt.models import build
from mpirt.sampler import DistributedSampler
from mpirt.stop import Stop
from mpirt.world import export_torch_env, pick_device, world

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mlp"
    steps: int = 200
    batch_size: int = 64  # global, split across ranks
    lr: float = 3e-3
    optimizer: str = "adam"
    seed: int = 0
    samples: int = 8192
    hidden: int | None = None
    layers: int | None = None
    out: str = "mpirt-train"
    checkpoint_every: int = 50
    keep: int = 3
    resume: bool = False
    bucket_mb: float | None = None  # data_parallel's default for the device
    first_bucket_mb: float = DEFAULT_FIRST_BUCKET_MB
    compression: str = "none"
    powersgd_rank: int = 4
    powersgd_start: int = 10
    algo: str = "auto"
    overlap: bool = True
    threads: int | None = None
    verify_every: int = 0
    log_every: int = 10
    timeline: str | None = None  # Chrome-trace timeline of the communication (mpirt.timeline)
    device: str = "auto"  # auto: the local rank's GPU where torch sees one, else the CPU
    compile_mode: str = "none"  # torch.compile: none, whole, or split at the buckets (dp.compile())
    accumulate: int = 1  # backward passes a step, each over a part of the rank's shard

    def check(self) -> None:
        for name in ("steps", "batch_size", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr})")
        if self.checkpoint_every < 0 or self.verify_every < 0 or self.keep < 1:
            raise ValueError("--checkpoint-every and --verify-every must be >= 0 and --keep >= 1")
        if self.accumulate < 1:
            raise ValueError(f"--accumulate must be at least 1 (got {self.accumulate})")
        if self.compile_mode not in ("none", "whole", "split"):
            raise ValueError(f"--compile {self.compile_mode!r}: use none, whole or split")
        pick_device(self.device, 0)  # a device this machine lacks is refused before any rank starts


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def _digests(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(name, SHA-256 of its bytes) per entry of the state dict: weights and buffers."""
    return [(name, hashlib.sha256(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
             .hexdigest()) for name, t in model.state_dict().items()]


def run(cfg: TrainConfig) -> int:
    cfg.check()
    w = world()
    export_torch_env(w)
    comm = MPI.COMM_WORLD
    if cfg.threads or not os.environ.get("OMP_NUM_THREADS"):  # torch read that one itself
        # the host's CPUs (its quota, not this rank's mask) shared by its ranks, within a binding's mask
        share = max(1, cpus.budget(affinity=os.cpu_count() or 1).count // w.local_size)
        torch.set_num_threads(cfg.threads or min(share, len(os.sched_getaffinity(0))))
    if cfg.batch_size < w.size and w.rank == 0:
        say(f"mpirt: warning: global batch {cfg.batch_size} < {w.size} ranks: some ranks get no samples", err=True)
    out = Path(cfg.out)
    if w.rank == 0:  # the one that writes there: a bad --out fails the job before any training
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {cfg.out}: cannot make it ({e.strerror}); give a writable directory on rank "
                             "0's host") from e
    ckpt_dir = out / "checkpoints"
    device = pick_device(cfg.device, w.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    task = build(cfg.model, cfg.samples, cfg.seed, cfg.hidden, cfg.layers).to(device)
    model = task.model
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9))
    sampler = DistributedSampler(cfg.samples, cfg.batch_size, w.rank, w.size, cfg.seed)
    start = _resume(cfg, comm, w, model, opt, sampler, ckpt_dir) if cfg.resume else 0
    dp = data_parallel(model, opt, bucket_mb=cfg.bucket_mb, first_bucket_mb=cfg.first_bucket_mb,
                       compression=cfg.compression, algo=cfg.algo, overlap=cfg.overlap, timeline=cfg.timeline,
                       powersgd_rank=cfg.powersgd_rank, powersgd_start=cfg.powersgd_start,
                       backward_passes_per_step=cfg.accumulate)
    if cfg.compile_mode != "none":  # the task runs the compiled model; checkpoints keep the plain one's state
        task = replace(task, model=dp.compile() if cfg.compile_mode == "split" else torch.compile(model))
    metrics = Metrics(out / "metrics.jsonl", cfg.steps, enabled=w.rank == 0, every=cfg.log_every)
    if w.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        say(f"mpirt train: {cfg.model} ({params / 1e6:.2f} M parameters, {len(dp.buckets)} bucket{'s' if len(dp.buckets) != 1 else ''}) on {w.size} "
            f"rank{'s' if w.size > 1 else ''} / {w.nodes} node{'s' if w.nodes > 1 else ''} ({device.type}, algo "
            f"{dp.algo}{', shared buckets' if dp.shared_buckets else ''}"
            f"{'' if cfg.compile_mode == 'none' else ', compiled ' + cfg.compile_mode}), global batch "
            f"{cfg.batch_size}{f' in {cfg.accumulate} backward passes' if cfg.accumulate > 1 else ''}, "
            f"steps {start + 1}..{cfg.steps}")
    stop = Stop()  # agreed in the per-step loss allreduce below, at no extra cost
    step, loss_value, rates = start, float("nan"), []
    t_begin = time.perf_counter()
    try:
        while step < cfg.steps:
            step += 1
            shard = sampler.next()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            local = 0.0
            # --accumulate N: N backward passes over parts of the shard, averaged after the N-th
            # (a rank with fewer rows than N runs fewer, and the step averages then)
            for part in torch.tensor_split(shard.indices, cfg.accumulate):
                if len(part):
                    loss = task.loss(part)
                    (loss * shard.weight(w.size) * (len(part) / len(shard.indices))).backward()
                    local += loss.item() * len(part)
            opt.step()
            step_time = time.perf_counter() - t0
            both = np.array([local, float(stop.requested)])
            comm.Allreduce(MPI.IN_PLACE, both, op=MPI.SUM)  # global loss, and whether any rank must stop
            loss_value, stopping = both[0] / shard.global_size, bool(both[1])
            st = dp.last_stats
            rates.append(shard.global_size / step_time)
            metrics.log({"step": step, "epoch": shard.epoch, "loss": loss_value, "samples": shard.global_size,
                         "samples_per_s": rates[-1], "step_time_s": step_time, "comm_s": st.comm_s,
                         "exposed_comm_s": st.exposed_s,
                         "overlap": st.overlapped_s / st.comm_s if st.comm_s > 0 else 0.0})
            if cfg.verify_every and step % cfg.verify_every == 0:
                _verify_replicas(comm, model, step)
            last = step == cfg.steps or stopping
            if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                _save(cfg, comm, w, model, opt, sampler, step, ckpt_dir)
            if stopping:
                if w.rank == 0:
                    say(f"mpirt train: stopped by signal after step {step}; checkpoint written, continue with "
                        "--resume", err=True)
                return 143
    finally:
        metrics.close()
        dp.close()
    if w.rank == 0:
        summary = {"model": cfg.model, "ranks": w.size, "device": device.type, "algo": dp.algo,
                   "shared_buckets": dp.shared_buckets, "bucket_mb": dp.bucket_mb, "steps": step, "final_loss": loss_value,
                   "samples_per_s_median": sorted(rates)[len(rates) // 2] if rates else 0.0,
                   "wall_s": time.perf_counter() - t_begin, "config": asdict(cfg)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        say(f"mpirt train: done: {step} steps, final loss {loss_value:.4f}, output in {out}/")
    return 0


def _verify_replicas(comm, model, step: int) -> None:
    mine = _digests(model)
    everyone = comm.allgather(hashlib.sha256(repr(mine).encode()).hexdigest())
    if len(set(everyone)) == 1:
        return
    tables = comm.allgather(mine)
    bad = [r for r, t in enumerate(tables) if t != tables[0]]
    first = next((name for (name, d0), (_, d) in zip(tables[0], tables[bad[0]]) if d != d0), "?")
    kind = "buffer" if first in dict(model.named_buffers()) else "weight"
    raise RuntimeError(f"replicas diverged at step {step}: {kind} {first!r} (the first that differs) on rank(s) "
                       f"{bad} differs from rank 0's")


def _save(cfg, comm, w, model, opt, sampler, step: int, ckpt_dir: Path) -> None:
    rngs = comm.gather(_rng_state(), root=0)
    if w.rank == 0:
        checkpoint.save(ckpt_dir, step, {
            "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "sampler": sampler.state_dict(), "rng": rngs, "world_size": w.size, "config": asdict(cfg)}, keep=cfg.keep)


def _resume(cfg, comm, w, model, opt, sampler, ckpt_dir: Path) -> int:
    """Load the newest complete checkpoint on rank 0 and share what every rank needs; the
    weights and optimizer state reach the others through data_parallel's broadcast."""
    meta = None
    if w.rank == 0:
        found = checkpoint.load_latest(ckpt_dir)
        if found is None:
            say(f"mpirt train: --resume: no complete checkpoint in {ckpt_dir}; starting from step 0", err=True)
        else:
            step, state = found
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            meta = {"step": step, "sampler": state["sampler"], "rng": state["rng"], "world_size": state["world_size"]}
            say(f"mpirt train: resuming from step {step} ({checkpoint.path_for(ckpt_dir, step)})")
    meta = comm.bcast(meta, root=0)
    if meta is None:
        return 0
    sampler.load_state_dict(meta["sampler"])
    if meta["world_size"] == w.size:
        _set_rng_state(meta["rng"][w.rank])
    elif w.rank == 0:
        say(f"mpirt train: checkpoint was written by {meta['world_size']} ranks, this run has {w.size}: "
            "RNG states are not restored", err=True)
    return meta["step"]
