"""Ranks compare a fingerprint of the data they loaded (issue 17, item 2). The end-to-end MPMD cases (40 vs
41 samples, the same size with other contents, 40 vs 200) are in tests/test_bad_inputs.py."""

from __future__ import annotations

import numpy as np

from dtrain.data.dataset import ArrayDataset
from dtrain.data.datasets.registry import Splits
from dtrain.train.datacheck import data_fingerprint, data_mismatch


def _splits(n=40, name="npz:data.npz", bump=False, y_dtype=np.int64):
    x = np.arange(n * 4, dtype=np.float64).reshape(n, 4)
    if bump:
        x[3, 1] += 1e-12  # one value in one sample, barely different
    y = (np.arange(n) % 3).astype(y_dtype)
    return Splits(ArrayDataset(x[: n - 8], y[: n - 8]), ArrayDataset(x[n - 8:], y[n - 8:]), "classification", 3,
                  (4,), name)


def test_the_same_data_matches_wherever_it_was_read_from(tmp_path):
    assert data_mismatch([data_fingerprint(_splits()), data_fingerprint(_splits(name="npz:other.npz"))]) is None


def test_a_different_size_names_the_split_the_counts_and_the_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.npz").write_bytes(b"")
    msg = data_mismatch([data_fingerprint(_splits()), data_fingerprint(_splits(n=41))])
    assert msg.startswith("the ranks loaded different data: train 32 samples on rank 0 but 33 samples on rank 1; "
                          "test contents "), msg
    assert f"rank 0 read npz:{tmp_path}/data.npz, rank 1 read npz:{tmp_path}/data.npz" in msg


def test_one_changed_value_is_found_by_the_content_digest():
    a, b = data_fingerprint(_splits()), data_fingerprint(_splits(bump=True))
    msg = data_mismatch([a, a, b])
    assert "train contents " in msg and "on rank 2" in msg and "test" not in msg.split(";")[0][:40]
    assert data_mismatch([a, b, b]).endswith("give every rank the same data set")
    assert "(and rank 2)" in data_mismatch([a, b, b])


def test_the_same_bytes_in_another_dtype_differ():
    msg = data_mismatch([data_fingerprint(_splits()), data_fingerprint(_splits(y_dtype=np.int32))])
    assert "dtypes" in msg
