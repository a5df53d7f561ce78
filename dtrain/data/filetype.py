"""What a file that should be an ``.npz`` archive looks like instead, read from its first bytes.

NumPy takes any file that is neither a zip archive nor an ``.npy`` array for pickled data, so a TOML
config passed as ``--dataset npz:run.toml`` or a JSON file passed as ``--resume run.json`` would be
reported as "pickled data". The loaders (data sets, checkpoints) ask :func:`looks_like` first, to say
what the file is.

    >>> looks_like("run.toml")       # doctest: +SKIP
    'a TOML text file'
"""

from __future__ import annotations

import json
import re

__all__ = ["looks_like"]

_HEAD_BYTES = 4096
# The first meaningful line of a TOML file: `key = value` (bare, quoted or dotted key) or a [table] header.
_TOML_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_TOML_LINE = re.compile(rf"^(\[\[?[^\]]+\]\]?|{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*\s*=.*)$")
_BINARY = (
    (b"PK\x03\x04", None), (b"PK\x05\x06", None),  # a zip archive (.npz): not for us to describe
    (b"\x93NUMPY", "a single .npy array"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x89PNG", "a PNG image"),
)


def _describe_text(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "a JSON text file"
    if stripped.startswith("["):
        try:
            json.loads(text)
            return "a JSON text file"
        except ValueError:
            pass  # a TOML [table] header, or a JSON file longer than what was read
    for line in stripped.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return "a TOML text file" if _TOML_LINE.match(line) else "a text file"
    return "a text file of blank lines or comments"


def looks_like(path: str) -> str | None:
    """A short description of the file at ``path`` ("a TOML text file", "a JSON text file", "an empty
    file", ...), or None when it is a zip archive (an .npz: its own reader explains what is wrong) or
    unrecognised binary data. Raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        return "an empty file"
    for magic, what in _BINARY:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut in two at the end of what was read
            return None
        text = head[:exc.start].decode("utf-8")
    if "\x00" in text:
        return None
    return _describe_text(text)
