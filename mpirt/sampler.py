"""Which samples each rank trains on: deterministic, seeded, resumable mid-epoch.

Each epoch is one permutation of all samples (seed + epoch), cut into global batches; every
global batch is split into contiguous per-rank shards whose sizes differ by at most one. So
every sample is used exactly once per epoch across all ranks and the last, smaller batch is
kept, not dropped or padded with repeats. ``weight`` turns a rank's mean loss into its share
of the global mean when shards are uneven, so averaged gradients equal one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    epoch: int
    step_in_epoch: int
    indices: torch.Tensor  # this rank's sample indices (may be empty in a short last batch)
    global_size: int  # samples in the whole global batch

    def weight(self, world: int) -> float:
        """Factor for this rank's mean loss so that averaging over ranks gives the global mean."""
        return len(self.indices) * world / self.global_size if len(self.indices) else 0.0


class DistributedSampler:
    def __init__(self, num_samples: int, global_batch: int, rank: int, world: int, seed: int = 0,
                 shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}: the dataset is empty")
        if global_batch < 1:
            raise ValueError(f"global batch {global_batch} must be at least 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        self.num_samples, self.global_batch, self.rank, self.world = num_samples, global_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0  # position: global batches already taken in this epoch
        self._order: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_samples // self.global_batch)

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._order = torch.randperm(self.num_samples, generator=g)
            else:
                self._order = torch.arange(self.num_samples)
        return self._order

    def next(self) -> Shard:
        """This rank's shard of the next global batch (rolling over into the next epoch)."""
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        start = self.position * self.global_batch
        batch = self._epoch_order()[start:start + self.global_batch]
        base, extra = divmod(len(batch), self.world)
        lo = self.rank * base + min(self.rank, extra)
        hi = lo + base + (1 if self.rank < extra else 0)
        shard = Shard(self.epoch, self.position, batch[lo:hi], len(batch))
        self.position += 1
        return shard

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_samples", "global_batch"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler has {key}={state[key]} but this run uses {getattr(self, key)}; "
                                 "resume with the same data and batch settings")
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
