"""looks_like: what a file that should be an .npz archive is instead (NumPy calls all of these "pickled data")."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from dtrain.data.filetype import looks_like


def _write(path, content):
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("content, expected", [
    (b'lr = 0.1\nepochs = 3\n', "a TOML text file"),
    (b'# options\n\n[train]\nlr = 0.1\n', "a TOML text file"),
    (b'"quoted key" = 1\n', "a TOML text file"),
    (b'{"lr": 0.1}', "a JSON text file"),
    (b'  [1, 2, 3]\n', "a JSON text file"),
    (b'hello world\n', "a text file"),
    (b'# only a comment\n\n', "a text file of blank lines or comments"),
    (b'', "an empty file"),
    (lambda p: np.save(p, np.arange(3)), "a single .npy array"),
    (pickle.dumps({"x": 1}, protocol=4), "a Python pickle"),
    (gzip.compress(b"x = 1\n"), "gzip-compressed data"),
    (lambda p: np.savez(p, x=np.arange(3)), None),  # a real archive: its reader explains the rest
    (np.random.default_rng(0).bytes(4096), None),  # unrecognised binary
    (b"lr = 1\x00\x01\x02", None),  # NUL bytes: not text
])
def test_looks_like(tmp_path, content, expected):
    path = tmp_path / "file"
    _write(path, content)
    if not path.exists():  # np.save/np.savez add an extension
        path = next(tmp_path.iterdir())
    assert looks_like(str(path)) == expected


def test_utf8_character_cut_at_the_end_of_the_head_is_still_text(tmp_path):
    path = tmp_path / "long.toml"
    path.write_bytes(b"a = '" + b"x" * 4094 + "é".encode() + b"'\n")  # byte 4096 is inside 'é'
    assert looks_like(str(path)) == "a TOML text file"


def test_unreadable_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        looks_like(str(tmp_path / "missing"))
