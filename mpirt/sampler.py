"""Which samples each rank trains on: deterministic, seeded, resumable mid-epoch.

Each epoch is one permutation of all samples (seed + epoch), cut into global batches; every
global batch is split into contiguous per-rank shards whose sizes differ by at most one. So
every sample is used exactly once per epoch across all ranks and the last, smaller batch is
kept, not dropped or padded with repeats. ``weight`` turns a rank's mean loss into its share
of the global mean when shards are uneven, so averaged gradients equal one big batch.

``loader()`` loads the shards through a torch ``DataLoader`` (workers, pinned memory,
prefetch) and counts a step as taken only when the training loop receives its batch: a
DataLoader draws indices several batches ahead, so counting what it drew would resume past
batches never trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

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
    """``data``: the dataset (anything with a length) or its number of samples."""

    def __init__(self, data: int | Sized, global_batch: int, rank: int, world: int, seed: int = 0,
                 shuffle: bool = True):
        num_samples = data if isinstance(data, int) else _length(data)
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

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch, as torch's sampler does; the epoch this sampler
        is in (a resumed one, say) keeps its position."""
        if epoch < 0:
            raise ValueError(f"epoch {epoch} is negative")
        if epoch != self.epoch:
            self.epoch, self.position, self._order = epoch, 0, None

    def _roll(self) -> None:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None

    def _shard(self, position: int) -> Shard:
        start = position * self.global_batch
        batch = self._epoch_order()[start:start + self.global_batch]
        base, extra = divmod(len(batch), self.world)
        lo = self.rank * base + min(self.rank, extra)
        hi = lo + base + (1 if self.rank < extra else 0)
        return Shard(self.epoch, position, batch[lo:hi], len(batch))

    def next(self) -> Shard:
        """This rank's shard of the next global batch (rolling over into the next epoch)."""
        self._roll()
        shard = self._shard(self.position)
        self.position += 1
        return shard

    def loader(self, dataset, **options: Any) -> ShardLoader:
        """A ``DataLoader`` over ``dataset`` that yields ``(shard, batch)`` for the rest of this
        epoch, then the next on the next pass; ``options`` go to the DataLoader."""
        return ShardLoader(self, dataset, **options)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_samples", "global_batch"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler has {key}={state[key]} but this run uses {getattr(self, key)}; "
                                 "resume with the same data and batch settings")
        self.epoch, self.position, self._order = state["epoch"], state["position"], None


def _length(dataset) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise ValueError(f"{type(dataset).__name__} has no length: the sampler needs a map-style dataset "
                         "(__len__ and __getitem__) or a number of samples; an IterableDataset picks its own "
                         "samples, so split it by rank inside the dataset") from None


class _Batches:
    """The DataLoader's ``batch_sampler``: the index lists of the epoch's remaining non-empty
    shards, read from the sampler when the DataLoader starts a pass (persistent workers too)."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def _shards(self) -> list[Shard]:
        s = self.sampler
        return [s._shard(p) for p in range(s.position, s.steps_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        return (sh.indices.tolist() for sh in self._shards() if len(sh.indices))

    def __len__(self) -> int:
        return sum(1 for sh in self._shards() if len(sh.indices))


class ShardLoader:
    """This rank's part of each global batch, loaded by a torch ``DataLoader``; one pass is the
    rest of the sampler's epoch. Each item is ``(shard, batch)``: ``shard.weight(world)`` scales
    the loss, and ``batch`` is None where the shard is empty (a last global batch smaller than
    the world: that rank only calls ``optimizer.step()``)."""

    _SAMPLER_OPTIONS = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")

    def __init__(self, sampler: DistributedSampler, dataset, **options: Any):
        from torch.utils.data import DataLoader

        taken = [k for k in self._SAMPLER_OPTIONS if k in options]
        if taken:
            raise ValueError(f"loader({', '.join(k + '=' for k in taken)}): the sampler decides the batches "
                             f"(global_batch={sampler.global_batch} over {sampler.world} ranks, seed, shuffle); "
                             "leave these out")
        if _length(dataset) != sampler.num_samples:
            raise ValueError(f"the dataset has {_length(dataset)} samples but the sampler was made for "
                             f"{sampler.num_samples}; make it with DistributedSampler(dataset, ...)")
        self.sampler = sampler
        self._batches = _Batches(sampler)
        self.data_loader = DataLoader(dataset, batch_sampler=self._batches, **options)

    def __len__(self) -> int:
        """Steps in the next pass."""
        s = self.sampler
        return s.steps_per_epoch if s.position >= s.steps_per_epoch else s.steps_per_epoch - s.position

    def __iter__(self) -> Iterator[tuple[Shard, Any]]:
        s = self.sampler
        s._roll()
        shards = self._batches._shards()
        batches = iter(self.data_loader)
        for shard in shards:
            batch = next(batches) if len(shard.indices) else None
            s.position = shard.step_in_epoch + 1  # taken: the loop has its batch
            yield shard, batch
