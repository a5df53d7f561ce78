"""Built-in data sets: digits, synthetic, MNIST IDX files, npz, text; validation and error messages."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from dtrain.data import ArrayDataset, DataLoader, DatasetError, Splits, dataset_names, load_dataset, validate

# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_types():
    s = load_dataset("digits")
    assert isinstance(s, Splits)
    x, y = s.train.arrays
    xt, yt = s.test.arrays
    assert x.shape == (1437, 64) and xt.shape == (360, 64)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert (s.task, s.n_classes, s.input_shape, s.name, s.vocab) == ("classification", 10, (64,), "digits", None)
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))


def test_digits_standardised_on_the_training_split():
    x = load_dataset("digits").train.arrays[0].astype(np.float64)
    std = x.std(axis=0)
    varying = std > 0
    assert varying.sum() > 50
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[:, ~varying], 0.0)  # constant features: centred, divided by 1


def test_digits_split_is_fixed_and_independent_of_the_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=123)
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(sa.arrays[0], sb.arrays[0])
        np.testing.assert_array_equal(sa.arrays[1], sb.arrays[1])


def test_digits_image_option():
    flat, img = load_dataset("digits"), load_dataset("digits", image=True)
    assert img.train.arrays[0].shape == (1437, 1, 8, 8) and img.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(img.train.arrays[0].reshape(1437, 64), flat.train.arrays[0])
    assert load_dataset("digits:image=true").input_shape == (1, 8, 8)
    with pytest.raises(DatasetError, match=r"bad value image='maybe': expected true or false"):
        load_dataset("digits:image=maybe")


def test_digits_without_scikit_learn(monkeypatch):
    import sys

    from dtrain.data.datasets import builtin

    builtin._digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(DatasetError, match="the digits data set needs scikit-learn: pip install scikit-learn"):
            load_dataset("digits")
    finally:
        builtin._digits_arrays.cache_clear()


def test_digits_read_from_scikit_learns_file_without_importing_it():
    """The arrays are exactly load_digits()'s, read from the file it reads, and scikit-learn (with SciPy: ~1.3 s
    of every rank's start) is not imported for them."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from dtrain.data.datasets.builtin import _digits_arrays\n"
            "x, y = _digits_arrays()\n"
            "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
            "from sklearn.datasets import load_digits\n"
            "b = load_digits()\n"
            "assert x.dtype == np.float64 and y.dtype == np.int64 and x.shape == (1797, 64)\n"
            "assert np.array_equal(x, b.data) and np.array_equal(y, b.target)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_digits_loads_through_a_loader():
    s = load_dataset("digits")
    xb, yb = next(iter(DataLoader(s.train, batch_size=32, shuffle=True)))
    assert xb.shape == (32, 64) and yb.shape == (32,)


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_default_and_determinism():
    a, b, c = load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=2)
    assert len(a.train) == 8000 and len(a.test) == 2000
    assert a.input_shape == (64,) and a.n_classes == 10 and a.task == "classification"
    assert a.train.arrays[0].dtype == np.float32 and a.train.arrays[1].dtype == np.int64
    np.testing.assert_array_equal(a.train.arrays[0], b.train.arrays[0])
    np.testing.assert_array_equal(a.test.arrays[1], b.test.arrays[1])
    assert not np.array_equal(a.train.arrays[0], c.train.arrays[0])


def test_synthetic_options_from_spec_and_kwargs():
    s = load_dataset("synthetic:n=500,features=8,classes=3,noise=0.5", seed=0)
    assert (len(s.train), len(s.test), s.input_shape, s.n_classes) == (400, 100, (8,), 3)
    assert set(np.unique(s.train.arrays[1])) == {0, 1, 2}
    same = load_dataset("synthetic", n=500, features=8, classes=3, noise=0.5)
    np.testing.assert_array_equal(s.train.arrays[0], same.train.arrays[0])
    assert load_dataset("synthetic:n=500", n=100, features=None).train.arrays[0].shape == (80, 64)  # kwargs win


def test_synthetic_classes_are_learnable_by_nearest_centroid():
    s = load_dataset("synthetic:n=2000,features=16,classes=4")
    x, y = s.train.arrays
    centroids = np.stack([x[y == k].mean(axis=0) for k in range(4)])
    xt, yt = s.test.arrays
    predicted = np.argmin(((xt[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == yt).mean() > 0.9


def test_synthetic_regression_and_image():
    s = load_dataset("synthetic:task=regression,n=100,features=5,outputs=2")
    assert s.task == "regression" and s.n_classes is None and s.output_size == 2
    assert s.train.arrays[1].shape == (80, 2) and s.train.arrays[1].dtype == np.float32
    assert load_dataset("synthetic:task=regression,n=10").train.arrays[1].shape == (8, 1)
    img = load_dataset("synthetic:n=50,image=6")
    assert img.train.arrays[0].shape == (40, 1, 6, 6) and img.input_shape == (1, 6, 6)
    rgb = load_dataset("synthetic:n=50,image=6,channels=3")
    assert rgb.train.arrays[0].shape == (40, 3, 6, 6) and rgb.input_shape == (3, 6, 6)
    assert load_dataset("synthetic:n=50,image=6,channels=3,features=108").input_shape == (3, 6, 6)


@pytest.mark.parametrize(("spec", "message"), [
    ("synthetic:size=10",
     r"has no option 'size'; valid options: n, features, classes, outputs, task, noise, image, channels"),
    ("synthetic:channels=3", r"channels=3 needs image=H"),
    ("synthetic:image=6,channels=3,features=36", r"features=36 contradicts image=6, channels=3 \(an image has 108"),
    ("synthetic:n=abc", r"bad value n='abc': expected a positive integer"),
    ("synthetic:n=0", r"bad value n='0': expected a positive integer"),
    ("synthetic:noise=-1", r"bad value noise='-1': expected a non-negative number"),
    ("synthetic:task=ranking", r"bad value task='ranking': expected one of classification, regression"),
    ("synthetic:n", r"option 'n' is not key=value"),
    ("synthetic:n=5,n=6", r"option 'n' is given twice"),
    ("synthetic:n=1", r"n=1 is too small"),
    ("synthetic:classes=1", r"classes=1; classification needs at least 2"),
    ("synthetic:image=4,features=10", r"features=10 contradicts image=4"),
    ("synthetic:task=regression,classes=3", r"classes=3 applies to task=classification"),
    ("synthetic:outputs=3", r"outputs=3 applies to task=regression"),
])
def test_synthetic_option_errors(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec)


def test_kwarg_option_errors():
    with pytest.raises(DatasetError, match=r"bad value n=2.5: expected a positive integer"):
        load_dataset("synthetic", n=2.5)
    with pytest.raises(DatasetError, match=r"data set 'digits' has no option 'flatten'; valid options: image"):
        load_dataset("digits", flatten=True)


# ---------------------------------------------------------------------------------------------- MNIST


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_mnist(directory, gz=False, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, payload in zip(MNIST_NAMES[split], (idx_bytes(0x803, images), idx_bytes(0x801, labels))):
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (directory / name).write_bytes(payload)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_plain_and_gz(tmp_path, gz):
    raw = write_mnist(tmp_path, gz=gz)
    s = load_dataset(f"mnist:{tmp_path}")
    x, y = s.train.arrays
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert s.test.arrays[0].shape == (3, 1, 28, 28) and s.input_shape == (1, 28, 28) and s.n_classes == 10
    expected = (raw["train"][0].astype(np.float64) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(x[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == raw["train"][1].tolist()
    flat = load_dataset(f"mnist:{tmp_path}", flatten=True)
    assert flat.train.arrays[0].shape == (5, 784) and flat.input_shape == (784,)
    assert s.name == f"mnist:{tmp_path}"


def corrupt_file(path, kind):
    data = path.read_bytes()
    if kind == "magic":
        path.write_bytes(struct.pack(">I", 0x802) + data[4:])
    elif kind == "truncated":
        path.write_bytes(data[:-10])
    elif kind == "trailing":
        path.write_bytes(data + b"\0")
    elif kind == "header":
        path.write_bytes(data[:6])


@pytest.mark.parametrize(("kind", "message"), [
    ("magic", r"wrong magic number 0x00000802, expected 0x00000803"),
    ("truncated", r"truncated: the header says 5 x 28 x 28 = 3920 bytes of data, the file has 3910"),
    ("trailing", r"has trailing bytes"),
    ("header", r"file too short for an IDX header \(6 bytes, need 16\)"),
])
def test_mnist_corrupt_images_name_the_path(tmp_path, kind, message):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    corrupt_file(path, kind)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + message):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_labels_wrong_magic_and_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(0x803, np.zeros((3, 1, 1))))
    with pytest.raises(DatasetError, match=re.escape(str(labels)) + r": wrong magic number 0x00000803, expected "
                                                                    r"0x00000801"):
        load_dataset(f"mnist:{tmp_path}")
    labels.write_bytes(idx_bytes(0x801, np.zeros(4)))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte has 3 images but .*t10k-labels-idx1-ubyte has 4"):
        load_dataset(f"mnist:{tmp_path}")
    labels.write_bytes(idx_bytes(0x801, np.array([1, 2, 200])))
    with pytest.raises(DatasetError, match=re.escape(str(labels)) + r": labels must be digits 0..9, found 200"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_missing_file_and_directory(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    missing = tmp_path / "t10k-images-idx3-ubyte"
    with pytest.raises(DatasetError, match=r"missing file " + re.escape(str(missing)) + r" \(or \.gz\)"):
        load_dataset(f"mnist:{tmp_path}")
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"directory not found: " + re.escape(str(nowhere))):
        load_dataset(f"mnist:{nowhere}")
    with pytest.raises(DatasetError, match=r"data set 'mnist' needs a path: mnist:DIR"):
        load_dataset("mnist")


def test_mnist_bad_gzip_names_the_path(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DatasetError, match=re.escape(str(path)) + r" is not a valid gzip file"):
        load_dataset(f"mnist:{tmp_path}")
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DatasetError, match=re.escape(str(path)) + r" is not a valid gzip file"):
        load_dataset(f"mnist:{tmp_path}")


# ---------------------------------------------------------------------------------------------- npz


def test_npz_classification_with_fixed_split(tmp_path):
    path = tmp_path / "data.npz"
    x = np.arange(50 * 4, dtype=np.float64).reshape(50, 4)
    np.savez(path, x=x, y=np.arange(50) % 3)
    s = load_dataset(f"npz:{path}", seed=5)
    assert (len(s.train), len(s.test)) == (40, 10)
    assert s.task == "classification" and s.n_classes == 3 and s.input_shape == (4,)
    assert s.train.arrays[0].dtype == np.float32 and s.train.arrays[1].dtype == np.int64
    seen = np.concatenate([s.train.arrays[0][:, 0], s.test.arrays[0][:, 0]])
    assert sorted(seen.tolist()) == x[:, 0].tolist()
    again = load_dataset(f"npz:{path}", seed=6)
    np.testing.assert_array_equal(s.test.arrays[0], again.test.arrays[0])
    assert s.name == f"npz:{path}"


def test_npz_with_test_arrays_and_regression(tmp_path):
    path = tmp_path / "reg.npz"
    np.savez(path, x=np.ones((6, 2, 3)), y=np.linspace(0, 1, 6), x_test=np.zeros((2, 2, 3)), y_test=np.ones(2))
    s = load_dataset(f"npz:{path}")
    assert s.task == "regression" and s.n_classes is None and s.input_shape == (2, 3)
    assert s.train.arrays[1].shape == (6, 1) and s.test.arrays[1].shape == (2, 1)
    assert s.train.arrays[1].dtype == np.float32


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((4, 2)), "labels": np.zeros(4, int)}, r"missing array\(s\) 'y'; found keys: 'labels', 'x'"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, r"'x' has 4 samples but 'y' has 3"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, r"labels 'y' must be non-negative .* found min -1"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(4, int), "x_test": np.zeros((1, 2))}, r"has 'x_test' but not 'y_test'"),
    ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, r"array 'x' has dtype <U1; expected numbers"),
    ({"x": np.zeros((4, 2)), "y": np.zeros((4, 2), int)}, r"integer labels 'y' must have shape \(n,\), got \(4, 2\)"),
])
def test_npz_bad_contents_name_the_path(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*" + message):
        load_dataset(f"npz:{path}")


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DatasetError, match=re.escape(str(path)) + r": array 'x' holds Python objects"):
        load_dataset(f"npz:{path}")


def test_npz_nan_names_split_count_and_first_sample(tmp_path):
    path = tmp_path / "nan.npz"
    x = np.zeros((10, 3))
    x[7, 1] = np.nan
    x[9] = np.inf
    np.savez(path, x=x, y=np.zeros(10, int), x_test=np.zeros((2, 3)), y_test=np.zeros(2, int))
    message = re.escape(f"data set 'npz:{path}', train split: 4 non-finite values (NaN or inf) in the inputs, "
                        "first in sample 7")
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(DatasetError, match=r"file not found: " + re.escape(str(missing))):
        load_dataset(f"npz:{missing}")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DatasetError, match=re.escape(str(garbage)) + r": cannot read it as an \.npz archive"):
        load_dataset(f"npz:{garbage}")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((20, 2)), y=np.zeros(20, int))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DatasetError, match=re.escape(str(truncated))):
        load_dataset(f"npz:{truncated}")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DatasetError, match=re.escape(str(single)) + r": is a single \.npy array"):
        load_dataset(f"npz:{single}")


# ---------------------------------------------------------------------------------------------- text


def test_text_default_is_pythons_documentation():
    s = load_dataset("text")
    assert s.name == "text" and s.input_shape == (32,)
    x, y = s.train.get_batch(np.arange(3))
    np.testing.assert_array_equal(x[1, :-8], x[0, 8:])  # default stride seq_len // 4
    np.testing.assert_array_equal(y[0, :-1], x[0, 1:])
    text = "".join(s.vocab[i] for i in x[0])
    assert text.startswith('The "assert" statement') or text.startswith("The Zen of Python")
    assert 8000 < len(s.train) < 12000 and len(s.test) > 500


def test_text_zen_of_python(capsys):
    s = load_dataset("text:zen", stride=1)
    assert capsys.readouterr().out == ""  # reading the Zen must not print it
    assert s.task == "lm" and s.input_shape == (32,) and s.vocab is not None
    assert s.n_classes == len(s.vocab) and list(s.vocab) == sorted(set(s.vocab))
    x, y = s.train.get_batch(np.arange(len(s.train)))
    assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == y.shape == (len(s.train), 32)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    np.testing.assert_array_equal(x[1:, :], np.concatenate([x[:-1, 1:], y[:-1, -1:]], axis=1))  # stride 1
    decoded = "".join(s.vocab[i] for i in x[0])
    assert decoded == "The Zen of Python, by Tim Peters"[:32]
    assert len(s.test) > 0


def test_text_file_split_seq_len_and_stride(tmp_path):
    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(400)) + "é"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    s = load_dataset(f"text:{path}", seq_len=8, stride=3)
    assert s.vocab == "".join(sorted(set(text))) and s.n_classes == 27
    n_test = len(text) // 10
    n_train = len(text) - n_test
    assert len(s.train) == len(range(0, n_train - 8, 3)) and len(s.test) == len(range(0, n_test - 8, 3))
    x, y = s.train.get_batch([0, 1])
    assert "".join(s.vocab[i] for i in x[1]) == text[3:11] and "".join(s.vocab[i] for i in y[1]) == text[4:12]
    _, yt = s.test.get_batch([len(s.test) - 1])
    last_y = "".join(s.vocab[i] for i in yt[0])
    assert text.endswith(last_y) or last_y in text[n_train:]
    x_first = "".join(s.vocab[i] for i in s.test.get_batch([0])[0][0])
    assert x_first == text[n_train:n_train + 8]  # the test split starts where the training text ends


def test_text_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("hello world, this is short", encoding="utf-8")
    with pytest.raises(DatasetError, match=re.escape(str(short)) + r" has 26 characters, too short for seq_len 32"):
        load_dataset(f"text:{short}")
    with pytest.raises(DatasetError, match=r"too short for seq_len 1000"):
        load_dataset("text:zen", seq_len=1000)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DatasetError, match=re.escape(str(binary)) + r": not UTF-8 text"):
        load_dataset(f"text:{binary}")
    with pytest.raises(DatasetError, match=r"file not found: " + re.escape(str(tmp_path / "no.txt"))):
        load_dataset(f"text:{tmp_path / 'no.txt'}")
    with pytest.raises(DatasetError, match=r"bad value seq_len=0"):
        load_dataset("text", seq_len=0)


# ---------------------------------------------------------------------------------------------- registry, validate


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'; valid names: digits, synthetic, mnist:DIR, "
                                         r"npz:FILE, text\[:FILE\]"):
        load_dataset("cifar")
    assert dataset_names() == ["digits", "synthetic", "mnist:DIR", "npz:FILE", "text[:FILE]"]
    with pytest.raises(DatasetError, match="non-empty string"):
        load_dataset("")
    with pytest.raises(DatasetError, match="seed must be a non-negative integer, got -1"):
        load_dataset("digits", seed=-1)


def splits_of(x, y, xt=None, yt=None, task="classification", n_classes=3) -> Splits:
    xt = x if xt is None else xt
    yt = y if yt is None else yt
    return Splits(ArrayDataset(x, y), ArrayDataset(xt, yt), task, n_classes, tuple(x.shape[1:]), "toy")


def test_validate_labels_out_of_range():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(DatasetError, match=r"'toy', test split: labels must lie in \[0, 3\) \(n_classes=3\) but "
                                           r"range from 0 to 5"):
        validate(splits_of(x, np.array([0, 1, 2, 0]), yt=np.array([0, 5, 1, 1])))
    with pytest.raises(DatasetError, match=r"labels must be integers, got dtype float64"):
        validate(splits_of(x, np.zeros(4)))


def test_validate_empty_and_shape_and_nonfinite_test_split():
    x = np.zeros((4, 2), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(DatasetError, match="'toy': the test split is empty"):
        validate(splits_of(x, y, xt=x[:0], yt=y[:0]))
    bad = splits_of(x, y)
    bad.input_shape = (3,)
    with pytest.raises(DatasetError, match=r"sample shape \(2,\) but input_shape is \(3,\)"):
        validate(bad)
    xt = x.copy()
    xt[2, 0] = np.inf
    message = r"test split: 1 non-finite values \(NaN or inf\) in the inputs, first in sample 2"
    with pytest.raises(DatasetError, match=message):
        validate(splits_of(x, y, xt=xt))
    with pytest.raises(DatasetError, match=r"non-finite values \(NaN or inf\) in the targets"):
        validate(splits_of(x, np.array([[0.0], [np.nan], [0.0], [0.0]]), task="regression", n_classes=None))
    with pytest.raises(DatasetError, match="task must be one of"):
        validate(splits_of(x, y, task="ranking"))


def test_zen_fallback_imports_this_silently(monkeypatch, capsys):
    import sys

    from dtrain.data.datasets import text as text_module

    monkeypatch.delitem(sys.modules, "this", raising=False)
    monkeypatch.setattr(text_module.importlib.util, "find_spec", lambda name: None)
    text = text_module._zen_of_python()
    assert text.startswith("The Zen of Python, by Tim Peters") and "Namespaces are one honking great idea" in text
    assert capsys.readouterr().out == ""


def test_register_a_new_data_set_is_one_function(monkeypatch):
    from dtrain import spec
    from dtrain.data.datasets import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_dataset("ones", usage="ones", arg="options", options={"n": spec.integer(minimum=1)})
    def _ones(path, seed, *, n=4):
        x = np.ones((n, 2), np.float32)
        return Splits(ArrayDataset(x, np.zeros(n, np.int64)), ArrayDataset(x, np.zeros(n, np.int64)),
                      "classification", 1, (2,), "ones")

    assert len(load_dataset("ones:n=6").train) == 6
    assert "ones" in dataset_names()
    with pytest.raises(TypeError, match=r"options \['m'\] do not match the keyword-only parameters"):
        registry.register_dataset("bad", usage="bad", arg="options", options={"m": int})(_ones)
