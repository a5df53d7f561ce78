"""DistributedSampler (PyTorch's rules) and the DataLoader's per-rank split of each global batch."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.data import ArrayDataset, DataLoader, DistributedSampler, shard_slice


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (5, 8), (7, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_and_cover(n, world, drop_last):
    if drop_last and n < world:
        with pytest.raises(ValueError, match="leaves every rank empty"):
            DistributedSampler(n, world, 0, drop_last=True)
        return
    shards = [DistributedSampler(n, world, r, seed=3, drop_last=drop_last).indices() for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    flat = np.concatenate(shards)
    if drop_last:
        assert len(set(flat.tolist())) == len(flat) == (n // world) * world
    else:
        assert set(flat.tolist()) == set(range(n)) and len(flat) == -(-n // world) * world


def test_matches_torch():
    torch = pytest.importorskip("torch")
    from torch.utils.data.distributed import DistributedSampler as TorchSampler

    class Dummy:
        def __len__(self):
            return 11

    for drop_last in (False, True):
        for r in range(3):
            ours = DistributedSampler(11, 3, r, shuffle=False, drop_last=drop_last)
            theirs = TorchSampler(Dummy(), num_replicas=3, rank=r, shuffle=False, drop_last=drop_last)
            assert list(ours) == list(theirs) and len(ours) == len(theirs)
    del torch


def test_set_epoch_reshuffles_deterministically():
    s = DistributedSampler(100, 2, 1, seed=5)
    e0 = s.indices().copy()
    s.set_epoch(1)
    e1 = s.indices()
    assert not np.array_equal(e0, e1)
    again = DistributedSampler(100, 2, 1, seed=5)
    again.set_epoch(1)
    np.testing.assert_array_equal(again.indices(), e1)


@pytest.mark.parametrize("bad, message", [
    (dict(num_replicas=0, rank=0), "num_replicas"),
    (dict(num_replicas=2, rank=2), r"rank must be in \[0, 2\), got 2"),
    (dict(num_replicas=2, rank=-1), "rank must be"),
])
def test_bad_arguments(bad, message):
    with pytest.raises(ValueError, match=message):
        DistributedSampler(10, **bad)


def test_world_defaults_to_the_launchers_environment(monkeypatch):
    """num_replicas/rank default to what the launcher announced (dtrain.env), a world of 1 without one;
    dtrain.distributed re-exports this very class."""
    import dtrain.distributed as dist
    from dtrain import env

    assert dist.DistributedSampler is DistributedSampler
    for var in env.LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    alone = DistributedSampler(10, shuffle=False)
    assert (alone.num_replicas, alone.rank, alone.indices().tolist()) == (1, 0, list(range(10)))
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    s = DistributedSampler(10, shuffle=False)
    assert (s.num_replicas, s.rank, s.indices().tolist()) == (3, 2, [2, 5, 8, 1])  # padded from the start
    assert DistributedSampler(10, rank=0).rank == 0 and DistributedSampler(10, num_replicas=4).rank == 2
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        DistributedSampler(10, num_replicas=2)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="environment variable OMPI_COMM_WORLD_SIZE must be an integer >= 1, got 'x'"):
        DistributedSampler(10)


def test_shard_slice_and_sharded_loader_reassemble_the_global_batches():
    assert [shard_slice(10, r, 4) for r in range(4)] == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert [shard_slice(2, r, 3) for r in range(3)] == [slice(0, 1), slice(1, 2), slice(2, 2)]
    data = ArrayDataset(np.arange(23.0)[:, None], np.arange(23))
    full = list(DataLoader(data, batch_size=8, shuffle=True, seed=1).iter_epoch(2))
    parts = [list(DataLoader(data, batch_size=8, shuffle=True, seed=1, shard=(r, 3)).iter_epoch(2)) for r in range(3)]
    assert all(len(p) == len(full) == 3 for p in parts)
    for b, (_, y) in enumerate(full):
        np.testing.assert_array_equal(np.concatenate([parts[r][b][1] for r in range(3)]), y)
    assert [len(parts[r][-1][1]) for r in range(3)] == [3, 2, 2]  # the last global batch of 7, uneven
    with pytest.raises(ValueError, match=r"shard rank must be in \[0, 3\)"):
        DataLoader(data, batch_size=4, shard=(3, 3))


# ---------------------------------------------------------------------------------------------- torch habits


def _labels(loader) -> list[int]:
    return [i for _, y in loader for i in y.tolist()]


def test_a_data_set_is_accepted_where_torch_takes_one():
    """DistributedSampler(dataset), as in PyTorch; the int form stays."""
    import dtrain.distributed as dist

    data = ArrayDataset(np.arange(10.0)[:, None], np.arange(10))
    s = dist.DistributedSampler(data, num_replicas=3, rank=1, seed=4)
    assert (s.n, len(s)) == (10, 4)
    np.testing.assert_array_equal(s.indices(), DistributedSampler(10, 3, 1, seed=4).indices())
    assert DistributedSampler(list(range(7)), 2, 0).n == 7  # anything with len()


@pytest.mark.parametrize("bad, error, message", [
    (object(), TypeError, "DistributedSampler: dataset must be a data set (anything with len()) or a positive "
                          "integer sample count, got object <object object at"),
    ("abcd", TypeError, "DistributedSampler: dataset must be a data set (anything with len()) or a positive "
                        "integer sample count, got str 'abcd'"),
    (2.5, TypeError, "DistributedSampler: dataset must be a data set (anything with len()) or a positive "
                     "integer sample count, got float 2.5"),
    (True, TypeError, "DistributedSampler: dataset must be a data set (anything with len()) or a positive "
                      "integer sample count, got bool True"),
    (0, ValueError, "DistributedSampler: dataset must be a data set (anything with len()) or a positive "
                    "integer sample count, got 0"),
    ([], ValueError, "DistributedSampler: the data set is empty (len() is 0): []"),
])
def test_what_is_not_a_data_set_is_an_exact_error(bad, error, message):
    with pytest.raises(error) as info:
        DistributedSampler(bad, 2, 0)
    assert str(info.value).startswith(message)


def test_a_torch_style_loop_with_sampler_set_epoch_gets_the_users_epochs():
    """for epoch in range(start, n): sampler.set_epoch(epoch); for batch in loader — the DataLoader does not
    overwrite the user's epoch with its own counter (it did: a resume at epoch 5 shuffled as epoch 0)."""
    data = ArrayDataset(np.arange(20.0)[:, None], np.arange(20))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, seed=3)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    for epoch in (5, 6, 6, 2):  # a resume at 5; repeating an epoch; going back
        sampler.set_epoch(epoch)
        assert loader.epoch == epoch
        assert _labels(loader) == _epoch_order(20, 2, 1, 3, epoch)
        assert sampler.epoch == epoch
    assert _labels(loader) == _epoch_order(20, 2, 1, 3, 2)  # the epoch set last, again: the user owns it


def _epoch_order(n, world, rank, seed, epoch) -> list[int]:
    s = DistributedSampler(n, world, rank, seed=seed)
    s.set_epoch(epoch)
    return s.indices().tolist()


def test_set_epoch_before_the_loader_is_built_and_with_the_loaders_own_value():
    data = ArrayDataset(np.arange(12.0)[:, None], np.arange(12))
    sampler = DistributedSampler(data, 2, 0, seed=1)
    sampler.set_epoch(7)  # before the DataLoader exists
    loader = DataLoader(data, batch_size=3, sampler=sampler)
    assert _labels(loader) == _epoch_order(12, 2, 0, 1, 7)
    auto = DataLoader(data, batch_size=3, sampler=DistributedSampler(data, 2, 0, seed=1))
    assert _labels(auto) == _epoch_order(12, 2, 0, 1, 0)  # no one set an epoch: the loader counts 0, 1, ...
    auto.sampler.set_epoch(0)  # the value the loader just gave: still the user's, so no advance to 1
    assert _labels(auto) == _epoch_order(12, 2, 0, 1, 0)
    assert _labels(auto) == _epoch_order(12, 2, 0, 1, 0)


def test_without_set_epoch_the_loader_still_advances_and_iter_epoch_still_resumes_exactly():
    """What the Trainer relies on: iter_epoch(e, k) is epoch e from batch k whatever the sampler was told."""
    data = ArrayDataset(np.arange(16.0)[:, None], np.arange(16))
    sampler = DistributedSampler(data, 2, 1, seed=2)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    assert [_labels(loader) for _ in range(3)] == [_epoch_order(16, 2, 1, 2, e) for e in range(3)]
    sampler.set_epoch(9)
    assert _labels(loader.iter_epoch(4, 1)) == _epoch_order(16, 2, 1, 2, 4)[2:]  # explicit epoch wins
    assert _labels(loader) == _epoch_order(16, 2, 1, 2, 9)  # plain passes: the user's epoch
