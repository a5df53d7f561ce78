"""dtrain.files: the one place user-named files are opened. Each refusal is an InputFileError (a
ValueError, so the ranks agree on it and exit 2) naming the file, and none of them can block or read
without bound."""

from __future__ import annotations

import json
import os

import pytest

from dtrain.files import InputFileError, open_regular, parse_guarded, read_json, read_limited, size_of


def _fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)




def test_a_fifo_is_refused_at_once_without_blocking(tmp_path, no_hang):
    path = _fifo(tmp_path)
    with pytest.raises(InputFileError, match=rf"^--config {path} is a FIFO \(named pipe\), not a regular file$"):
        no_hang(open_regular, path, "--config")


def test_a_symlink_to_a_fifo_is_refused(tmp_path, no_hang):
    link = tmp_path / "ckpt.npz"
    link.symlink_to(_fifo(tmp_path))
    with pytest.raises(InputFileError, match="is a FIFO"):
        no_hang(read_limited, str(link), "checkpoint", 1024)


def test_dev_zero_is_refused_before_anything_is_read(no_hang):
    with pytest.raises(InputFileError, match=r"^latest.json /dev/zero is a character device, not a regular file$"):
        no_hang(read_json, "/dev/zero", "latest.json")


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="is a directory, not a regular file"):
        size_of(str(tmp_path), "--dataset")


def test_a_file_over_its_limit_is_refused_with_its_size(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 3000)
    with pytest.raises(InputFileError, match=r"big.json is 3,000 bytes, more than the 2.0 KiB such a file"):
        read_limited(str(path), "metadata", 2048)
    assert read_limited(str(path), "metadata", 3000) == b" " * 3000


def test_missing_files_keep_their_own_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular(str(tmp_path / "absent"))


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a":' * 200_000])
def test_deeply_nested_json_is_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "latest.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match=rf"^latest.json {path}: nested too deeply to parse$"):
        read_json(str(path), "latest.json")


def test_deeply_nested_toml_is_reported_by_parse_guarded():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as a package
        import tomli as tomllib

    with pytest.raises(InputFileError, match=r"^run.toml: nested too deeply to parse$"):
        parse_guarded(tomllib.loads, "a = " + "[" * 100_000, "run.toml")


def test_bad_json_and_bad_utf8_name_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputFileError, match=r"m.json is not UTF-8 text \(byte 0\)"):
        read_json(str(path), "metadata")
    path.write_text("{'a': 1}")
    with pytest.raises(InputFileError, match=r"m.json is not valid JSON"):
        read_json(str(path), "metadata")
    path.write_text(json.dumps({"a": [1, 2]}))
    assert read_json(str(path), "metadata") == {"a": [1, 2]}
