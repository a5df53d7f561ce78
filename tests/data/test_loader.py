"""Dataset, samplers and DataLoader: coverage, ordering, determinism, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.data import ArrayDataset, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset


def make_dataset(n: int = 10) -> ArrayDataset:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return ArrayDataset(x, np.arange(n, dtype=np.int64))


def epoch_labels(batches) -> list[list[int]]:
    return [yb.tolist() for _, yb in batches]


# ---------------------------------------------------------------------------------------------- datasets


def test_array_dataset_items_and_batches():
    ds = make_dataset(5)
    assert len(ds) == 5
    x, y = ds[2]
    assert x.tolist() == [6.0, 7.0, 8.0] and y == 2
    xb, yb = ds.get_batch(np.array([4, 0]))
    assert xb.shape == (2, 3) and yb.tolist() == [4, 0]
    assert xb.flags.c_contiguous
    xb[:] = -1  # a copy, not a view on the dataset
    assert ds.arrays[0][4, 0] == 12.0
    assert TensorDataset is ArrayDataset
    assert ds.tensors is ds.arrays


def test_array_dataset_length_mismatch_names_lengths():
    with pytest.raises(ValueError, match=r"same first dimension, got 4 \(array 0\), 3 \(array 1\)"):
        ArrayDataset(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="at least one array"):
        ArrayDataset()
    with pytest.raises(ValueError, match="scalar"):
        ArrayDataset(np.float32(1.0))


class SquaresDataset(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return np.array([i, i * i], dtype=np.float32), i % 2


def test_default_get_batch_stacks_items():
    xb, yb = SquaresDataset().get_batch([1, 3])
    assert xb.tolist() == [[1, 1], [3, 9]] and yb.tolist() == [1, 1]
    loader = DataLoader(SquaresDataset(), batch_size=4)
    assert [len(yb) for _, yb in loader] == [4, 2]


def test_dataset_is_abstract():
    with pytest.raises(TypeError):
        Dataset()


# ---------------------------------------------------------------------------------------------- samplers


def test_sequential_sampler():
    s = SequentialSampler(4)
    assert list(s) == [0, 1, 2, 3] and len(s) == 4
    s.set_epoch(5)
    assert list(s) == [0, 1, 2, 3]


def test_random_sampler_is_a_function_of_seed_and_epoch():
    s = RandomSampler(50, seed=7)
    s.set_epoch(3)
    order = list(s)
    assert sorted(order) == list(range(50))
    assert order == np.random.default_rng([7, 3]).permutation(50).tolist()
    s.set_epoch(4)
    assert list(s) != order
    fresh = RandomSampler(50, seed=7)
    fresh.set_epoch(3)  # no replay of epochs 0..2 needed
    assert list(fresh) == order
    assert list(RandomSampler(50, seed=8)) != list(RandomSampler(50, seed=7))


def test_sampler_errors():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        RandomSampler(5, seed=-1)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0, got 1\.5"):
        RandomSampler(5).set_epoch(1.5)


# ---------------------------------------------------------------------------------------------- DataLoader


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (10, 5), (7, 7), (1, 1)])
def test_every_index_exactly_once_per_epoch(n, batch_size, shuffle):
    loader = DataLoader(make_dataset(n), batch_size=batch_size, shuffle=shuffle)
    for _ in range(3):
        seen = [i for batch in epoch_labels(loader) for i in batch]
        assert sorted(seen) == list(range(n))
    assert len(loader) == -(-n // batch_size)


def test_batches_are_tuples_of_arrays_in_order_without_shuffle():
    batches = list(DataLoader(make_dataset(10), batch_size=4))
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    assert all(isinstance(a, np.ndarray) for b in batches for a in b)
    assert epoch_labels(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][0].shape == (4, 3) and batches[0][0].dtype == np.float32


def test_last_partial_batch_and_drop_last():
    keep = DataLoader(make_dataset(10), batch_size=4)
    drop = DataLoader(make_dataset(10), batch_size=4, drop_last=True)
    assert len(keep) == 3 and [len(y) for _, y in keep] == [4, 4, 2]
    assert len(drop) == 2 and [len(y) for _, y in drop] == [4, 4]
    exact = DataLoader(make_dataset(8), batch_size=4, drop_last=True)
    assert len(exact) == 2 and len(list(exact)) == 2


def test_shuffle_deterministic_from_seed_and_differs_between_epochs():
    a = DataLoader(make_dataset(40), batch_size=8, shuffle=True, seed=3)
    b = DataLoader(make_dataset(40), batch_size=8, shuffle=True, seed=3)
    c = DataLoader(make_dataset(40), batch_size=8, shuffle=True, seed=4)
    a0, a1 = epoch_labels(a), epoch_labels(a)
    assert a0 == epoch_labels(b) and a1 == epoch_labels(b)
    assert a0 != a1  # the internal epoch counter advanced
    assert a0 != epoch_labels(c)
    flat = [i for batch in a0 for i in batch]
    assert flat == np.random.default_rng([3, 0]).permutation(40).tolist()


def test_set_epoch_fixes_the_epoch():
    loader = DataLoader(make_dataset(30), batch_size=10, shuffle=True, seed=1)
    auto = [epoch_labels(loader) for _ in range(3)]
    loader.set_epoch(2)
    assert loader.epoch == 2
    assert epoch_labels(loader) == auto[2]
    assert epoch_labels(loader) == auto[2]  # no auto-advance after set_epoch
    loader.set_epoch(0)
    assert epoch_labels(loader) == auto[0]


def test_order_is_fixed_when_iteration_starts():
    loader = DataLoader(make_dataset(30), batch_size=10, shuffle=True, seed=1)
    loader.set_epoch(0)
    it = iter(loader)
    loader.set_epoch(1)
    expected = epoch_labels(DataLoader(make_dataset(30), batch_size=10, shuffle=True, seed=1))
    assert epoch_labels(it) == expected


@pytest.mark.parametrize("drop_last", [False, True])
def test_iter_epoch_is_the_tail_of_the_full_epoch(drop_last):
    loader = DataLoader(make_dataset(23), batch_size=5, shuffle=True, seed=9, drop_last=drop_last)
    full = [epoch_labels(loader) for _ in range(3)]
    for epoch in range(3):
        for start in range(len(loader) + 1):
            assert epoch_labels(loader.iter_epoch(epoch, start)) == full[epoch][start:]
    x_full = [xb for xb, _ in loader.iter_epoch(1)]
    x_tail = [xb for xb, _ in loader.iter_epoch(1, start_batch=2)]
    for a, b in zip(x_full[2:], x_tail):
        np.testing.assert_array_equal(a, b)


def test_iter_epoch_continues_the_automatic_counter():
    loader = DataLoader(make_dataset(20), batch_size=5, shuffle=True, seed=2)
    reference = [epoch_labels(DataLoader(make_dataset(20), batch_size=5, shuffle=True, seed=2).iter_epoch(e))
                 for e in range(5)]
    assert epoch_labels(loader.iter_epoch(3, 1)) == reference[3][1:]
    assert loader.epoch == 4
    assert epoch_labels(loader) == reference[4]


def test_iter_epoch_errors():
    loader = DataLoader(make_dataset(10), batch_size=4)
    with pytest.raises(ValueError, match=r"start_batch 4 is past the end of the epoch \(3 batches\)"):
        loader.iter_epoch(0, 4)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        loader.iter_epoch(-1)
    with pytest.raises(ValueError, match="start_batch must be an integer >= 0, got -2"):
        loader.iter_epoch(0, -2)


class EveryOtherSampler:
    """A custom sampler: even indices, then odd ones, reversed on odd epochs."""

    def __init__(self, n):
        self.n = n
        self.epochs_seen = []
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epochs_seen.append(epoch)
        self.epoch = epoch

    def __iter__(self):
        order = list(range(0, self.n, 2)) + list(range(1, self.n, 2))
        return iter(order[::-1] if self.epoch % 2 else order)

    def __len__(self):
        return self.n


def test_custom_sampler_gets_the_epoch():
    sampler = EveryOtherSampler(6)
    loader = DataLoader(make_dataset(6), batch_size=4, sampler=sampler)
    assert len(loader) == 2
    assert epoch_labels(loader) == [[0, 2, 4, 1], [3, 5]]
    assert epoch_labels(loader) == [[5, 3, 1, 4], [2, 0]]
    loader.set_epoch(4)
    assert epoch_labels(loader) == [[0, 2, 4, 1], [3, 5]]
    assert sampler.epochs_seen == [0, 1, 4, 4]
    assert epoch_labels(loader.iter_epoch(1, 1)) == [[2, 0]]


def test_sampler_without_set_epoch_and_a_shard():
    class Shard:
        def __iter__(self):
            return iter([1, 3, 5, 7, 9])

        def __len__(self):
            return 5

    loader = DataLoader(make_dataset(10), batch_size=2, sampler=Shard())
    assert len(loader) == 3
    assert epoch_labels(loader) == [[1, 3], [5, 7], [9]]
    with pytest.raises(ValueError, match=r"batch_size 6 is larger than the sampler's 5 samples \(data set of 10\)"):
        DataLoader(make_dataset(10), batch_size=6, sampler=Shard())


def test_sampler_whose_len_lies():
    class Liar:
        def __iter__(self):
            return iter([0, 1])

        def __len__(self):
            return 3

    with pytest.raises(ValueError, match=r"sampler yielded 2 indices but its len\(\) is 3"):
        list(DataLoader(make_dataset(10), batch_size=1, sampler=Liar()))


@pytest.mark.parametrize("bad", [0, -1, "a", 2.0, True, None])
def test_batch_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {bad!r}"):
        DataLoader(make_dataset(10), batch_size=bad)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_size_larger_than_the_data(drop_last):
    with pytest.raises(ValueError, match=r"batch_size 5000 is larger than the data set \(1437 samples\)"):
        DataLoader(make_dataset(1437), batch_size=5000, drop_last=drop_last)


def test_shuffle_and_sampler_are_exclusive():
    with pytest.raises(ValueError, match="shuffle=True and sampler= are mutually exclusive"):
        DataLoader(make_dataset(10), batch_size=2, shuffle=True, sampler=SequentialSampler(10))


def test_other_loader_errors():
    with pytest.raises(TypeError, match="sampler must have __iter__ and __len__, got int"):
        DataLoader(make_dataset(10), sampler=3)
    with pytest.raises(ValueError, match="data set is empty"):
        DataLoader(ArrayDataset(np.zeros((0, 2))), batch_size=1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -3"):
        DataLoader(make_dataset(10), shuffle=True, seed=-3)


def test_plain_samplers_take_a_data_set_too():
    ds = make_dataset(5)
    assert list(SequentialSampler(ds)) == [0, 1, 2, 3, 4]
    assert list(RandomSampler(ds, seed=7)) == list(RandomSampler(5, seed=7))
    with pytest.raises(TypeError, match=r"^RandomSampler: dataset must be a data set \(anything with len\(\)\) or "
                                        r"a non-negative integer sample count, got NoneType None$"):
        RandomSampler(None)
    with pytest.raises(ValueError, match=r"^SequentialSampler: dataset must be a data set \(anything with len\(\)\) "
                                         r"or a non-negative integer sample count, got -1$"):
        SequentialSampler(-1)


def test_a_custom_samplers_epoch_set_by_the_user_wins():
    """A sampler of one's own with an ``epoch`` attribute: a set_epoch the user calls is seen as a change of it."""
    sampler = EveryOtherSampler(6)
    loader = DataLoader(make_dataset(6), batch_size=6, sampler=sampler)
    assert epoch_labels(loader) == [[0, 2, 4, 1, 3, 5]]  # epoch 0 from the loader
    sampler.set_epoch(3)
    assert epoch_labels(loader) == [[5, 3, 1, 4, 2, 0]] and loader.epoch == 3
    assert epoch_labels(loader) == [[5, 3, 1, 4, 2, 0]]  # stays 3: the user owns the epoch now
    assert sampler.epochs_seen == [0, 3, 3, 3]
