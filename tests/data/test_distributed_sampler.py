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
