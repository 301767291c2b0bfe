"""The distributed sampler: every sample once per epoch across ranks, deterministic, resumable."""

import pytest
import torch

from mpirt.sampler import DistributedSampler


def epoch_indices(n, batch, world, seed=3):
    samplers = [DistributedSampler(n, batch, r, world, seed) for r in range(world)]
    steps = samplers[0].steps_per_epoch
    shards = [[s.next() for _ in range(steps)] for s in samplers]
    return samplers, shards


@pytest.mark.parametrize("n,batch,world", [(100, 10, 1), (100, 10, 4), (103, 16, 4), (7, 5, 4), (64, 64, 3)])
def test_each_sample_exactly_once_per_epoch(n, batch, world):
    _, shards = epoch_indices(n, batch, world)
    seen = torch.cat([sh.indices for per_rank in shards for sh in per_rank])
    assert sorted(seen.tolist()) == list(range(n))
    for step in range(len(shards[0])):
        sizes = [len(shards[r][step].indices) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1
        assert sum(sizes) == shards[0][step].global_size
        assert sum(shards[r][step].weight(world) for r in range(world)) == pytest.approx(world)


def test_same_seed_same_order_and_epochs_differ():
    a = DistributedSampler(50, 10, 0, 2, seed=7)
    b = DistributedSampler(50, 10, 0, 2, seed=7)
    first = [a.next().indices.tolist() for _ in range(5)]
    assert first == [b.next().indices.tolist() for _ in range(5)]
    second = [a.next().indices.tolist() for _ in range(5)]
    assert a.epoch == 1 and second != first
    assert DistributedSampler(50, 10, 0, 2, seed=8).next().indices.tolist() != first[0]


def test_resume_mid_epoch_continues_the_same_sequence():
    full = DistributedSampler(30, 4, 1, 2, seed=1)
    expected = [full.next().indices.tolist() for _ in range(12)]
    part = DistributedSampler(30, 4, 1, 2, seed=1)
    for _ in range(5):
        part.next()
    resumed = DistributedSampler(30, 4, 1, 2, seed=1)
    resumed.load_state_dict(part.state_dict())
    assert [resumed.next().indices.tolist() for _ in range(7)] == expected[5:]


def test_resume_with_other_data_settings_is_refused():
    s = DistributedSampler(30, 4, 0, 2, seed=1)
    with pytest.raises(ValueError, match="global_batch=4 but this run uses 8; resume with the same data"):
        DistributedSampler(30, 8, 0, 2, seed=1).load_state_dict(s.state_dict())


@pytest.mark.parametrize("args,message", [
    ((0, 4, 0, 1), "dataset is empty"), ((10, 0, 0, 1), "global batch 0"), ((10, 4, 2, 2), "rank 2 is outside"),
])
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        DistributedSampler(*args)
