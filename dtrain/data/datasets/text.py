"""Character-level language modelling on a text: ``text`` (Python's docs), ``text:zen``, ``text:FILE``."""

from __future__ import annotations

import ast
import codecs
import contextlib
import importlib.util
import io
import os
import sys

import numpy as np

from ...files import open_regular
from ...spec import integer
from ..dataset import ArrayDataset
from .limits import MAX_TEXT_BYTES, check_classes, check_memory
from .registry import DatasetError, Splits, register_dataset

# ------------------------------------------------------------------------------------------------
# text (character-level language modelling)
# ------------------------------------------------------------------------------------------------


def _zen_of_python() -> str:
    """The Zen of Python, from the stdlib module ``this``, without printing it."""
    module = sys.modules.get("this")
    if module is None:
        spec = importlib.util.find_spec("this")
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            try:
                with open(spec.origin, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "s"
                                                            for t in node.targets):
                        return codecs.decode(ast.literal_eval(node.value), "rot13")
            except (OSError, SyntaxError, ValueError):
                pass  # fall back to importing it below
        with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
            import this as module
    return codecs.decode(module.s, "rot13")


PYTHON_DOCS_CHARS = 100_000
# Indexing a text of n bytes holds, at its peak, the bytes read (1 a byte), the str (up to 4 bytes a character),
# its UTF-32 codes (4) and the int64 ids (8): under 20 bytes a character; 24 leaves room.
_BYTES_PER_CHAR = 24


def _python_docs() -> str:
    """English prose that ships with CPython: the language-reference topics behind ``help()``
    (``pydoc_data.topics``), in a fixed order, the first PYTHON_DOCS_CHARS characters. Falls back to
    the Zen of Python where a distribution strips pydoc_data."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return _zen_of_python()
    return "".join(topics[k] for k in sorted(topics))[:PYTHON_DOCS_CHARS]


def _read_text(path: str) -> str:
    """A UTF-8 text file: a regular file (a FIFO or /dev/zero is refused at once) of at most MAX_TEXT_BYTES,
    whose indexing fits in memory."""
    if not os.path.exists(path):
        raise DatasetError(f"text: file not found: {path}")
    try:
        with open_regular(path, "text", MAX_TEXT_BYTES) as f:
            size = os.fstat(f.fileno()).st_size
            check_memory(f"text: {path} ({size:,} bytes)", _BYTES_PER_CHAR * size, "use a shorter text")
            data = f.read(size + 1)
    except OSError as exc:  # PermissionError, ...; a FIFO, a device or a huge file is an InputFileError
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > size:
        raise DatasetError(f"text: {path} grew past its {size:,} bytes while it was read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _char_ids(text: str, where: str) -> tuple[np.ndarray, str]:
    """Each character's id (its rank among the text's distinct characters) and the vocabulary."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    # A table over all of Unicode (1.1 MB) instead of np.unique: linear, and a text of every code point
    # takes milliseconds, not seconds, to be refused.
    present = np.zeros(sys.maxunicode + 1, dtype=bool)
    present[codes] = True
    vocab_codes = np.flatnonzero(present)
    check_classes(where, f"a vocabulary of {len(vocab_codes):,} distinct characters", len(vocab_codes),
                  "a character-level model needs a smaller alphabet")
    rank = np.cumsum(present, dtype=np.int64) - 1
    return rank[codes], "".join(map(chr, vocab_codes.tolist()))


def _windows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    # Views, not copies: a 1 MB text with stride 1 would otherwise take gigabytes; the DataLoader's
    # fancy indexing copies one batch at a time.
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    return windows[:, :-1], windows[:, 1:]


@register_dataset("text", usage="text[:FILE]", arg="optional-path",
                  options={"seq_len": integer(minimum=1), "stride": integer(minimum=1)})
def _load_text(path: str | None, seed: int, *, seq_len: int = 32, stride: int | None = None) -> Splits:
    """Character-level LM: windows x = ids[i:i+seq_len], y = ids[i+1:i+seq_len+1], every ``stride``
    characters (default seq_len // 4); the last 10% of the text is the test split.

    ``text`` is Python's own documentation (pydoc_data.topics, 100,000 characters), ``text:zen`` the
    Zen of Python (tiny: a model memorises it), ``text:FILE`` a UTF-8 file.
    """
    if stride is None:
        stride = max(1, seq_len // 4)
    if path is None:
        text, where, name = _python_docs(), "Python's documentation topics", "text"
    elif os.path.basename(path) == "zen" and not os.path.exists(path):  # (a file named zen wins)
        text, where, name = _zen_of_python(), "the Zen of Python", "text:zen"
    else:
        text, where, name = _read_text(path), path, f"text:{path}"
    n_test = len(text) // 10
    n_train = len(text) - n_test
    if min(n_train, n_test) < seq_len + 1:
        raise DatasetError(f"text: {where} has {len(text)} characters, too short for seq_len {seq_len}: the test "
                           f"split (last 10%, {n_test} characters) and the training split ({n_train}) each need "
                           f"at least seq_len + 1 = {seq_len + 1}; use a longer text or a smaller seq_len")
    ids, vocab = _char_ids(text, where)
    x_train, y_train = _windows(ids[:n_train], seq_len, stride)
    x_test, y_test = _windows(ids[n_train:], seq_len, stride)
    return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), "lm", len(vocab), (seq_len,),
                  name, vocab=vocab)
