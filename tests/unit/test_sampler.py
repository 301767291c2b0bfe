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


def dataset(n):
    return torch.utils.data.TensorDataset(torch.arange(n))


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(3))


def loaded(loader):
    """(epoch, step, indices the DataLoader produced) of one pass; None for an empty shard."""
    return [(sh.epoch, sh.step_in_epoch, None if batch is None else batch[0].tolist()) for sh, batch in loader]


@pytest.mark.parametrize("world,workers", [(1, 0), (3, 0), (3, 2)])
def test_loader_yields_the_shards_next_gives_through_a_dataloader(world, workers):
    n, batch = 50, 16
    for rank in range(world):
        s = DistributedSampler(dataset(n), batch, rank, world, seed=5)
        loader = s.loader(dataset(n), num_workers=workers)
        ref = DistributedSampler(n, batch, rank, world, seed=5)
        for epoch in (0, 1):
            assert len(loader) == 4
            expected = [(sh.epoch, sh.step_in_epoch, sh.indices.tolist() or None) for sh in (ref.next() for _ in range(4))]
            assert loaded(loader) == expected and expected[0][0] == epoch


def test_loader_gives_none_for_an_empty_shard_and_the_step_still_counts():
    # 33 samples in global batches of 16 over 3 ranks: the last global batch is 1 sample, on rank 0
    passes = [loaded(DistributedSampler(33, 16, r, 3, seed=2).loader(dataset(33))) for r in range(3)]
    assert [len(p) for p in passes] == [3, 3, 3]
    assert len(passes[0][2][2]) == 1 and passes[1][2][2] is None and passes[2][2][2] is None
    everything = [i for p in passes for (_, _, idx) in p if idx for i in idx]
    assert sorted(everything) == list(range(33))


def test_a_step_counts_when_the_loop_has_its_batch_not_when_a_worker_fetched_it():
    n, batch = 64, 4  # 16 steps an epoch; 2 workers prefetch 4 batches ahead
    ref = DistributedSampler(n, batch, 1, 2, seed=9)
    full = [ref.next().indices.tolist() for _ in range(16)]
    s = DistributedSampler(n, batch, 1, 2, seed=9)
    seen = []
    for shard, b in s.loader(dataset(n), num_workers=2):
        seen.append(b[0].tolist())
        if len(seen) == 5:
            break
    assert s.state_dict()["position"] == 5
    resumed = DistributedSampler(n, batch, 1, 2, seed=9)
    resumed.load_state_dict(s.state_dict())
    assert seen + [b[0].tolist() for _, b in resumed.loader(dataset(n), num_workers=2)] == full


def test_persistent_workers_follow_the_sampler_across_epochs_and_set_epoch():
    s = DistributedSampler(20, 8, 0, 2, seed=4)
    loader = s.loader(dataset(20), num_workers=1, persistent_workers=True)
    ref = DistributedSampler(20, 8, 0, 2, seed=4)
    for _ in range(3):
        assert [idx for _, _, idx in loaded(loader)] == [ref.next().indices.tolist() for _ in range(3)]
    assert s.epoch == 2
    s.set_epoch(2)  # the epoch it is in (a resumed run's): position kept
    assert len(loader) == 3 and s.position == 3
    s.set_epoch(7)
    assert s.position == 0 and loaded(loader)[0][0] == 7


@pytest.mark.parametrize("options,data,message", [
    ({"batch_size": 8}, dataset(20), r"loader\(batch_size=\): the sampler decides the batches \(global_batch=8"),
    ({"shuffle": True, "drop_last": True}, dataset(20), r"loader\(shuffle=, drop_last=\)"),
    ({}, dataset(21), "the dataset has 21 samples but the sampler was made for 20"),
    ({}, Stream(), "Stream has no length: the sampler needs a map-style dataset"),
])
def test_loader_refuses_what_would_break_the_batches(options, data, message):
    with pytest.raises(ValueError, match=message):
        DistributedSampler(20, 8, 0, 2).loader(data, **options)


def test_set_epoch_refuses_a_negative_epoch():
    with pytest.raises(ValueError, match="epoch -1 is negative"):
        DistributedSampler(20, 8, 0, 2).set_epoch(-1)


def test_a_pass_left_early_with_persistent_workers_goes_on_where_the_loop_stopped():
    s = DistributedSampler(40, 4, 1, 2, seed=6)
    ref = DistributedSampler(40, 4, 1, 2, seed=6)
    expected = [ref.next().indices.tolist() for _ in range(20)]
    loader = s.loader(dataset(40), num_workers=2, persistent_workers=True)
    seen = []
    for limit in (2, 5, 10, 20):  # two passes left early (the workers had read ahead), then two to the end
        for _, batch in loader:
            seen.append(batch[0].tolist())
            if len(seen) == limit:
                break
    assert seen == expected
