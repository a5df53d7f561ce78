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

from ...spec import integer
from ..dataset import ArrayDataset
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
    if not os.path.exists(path):
        raise DatasetError(f"text: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


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
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.unique(codes)
    ids = np.searchsorted(vocab_codes, codes).astype(np.int64)
    vocab = "".join(map(chr, vocab_codes.tolist()))
    x_train, y_train = _windows(ids[:n_train], seq_len, stride)
    x_test, y_test = _windows(ids[n_train:], seq_len, stride)
    return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), "lm", len(vocab), (seq_len,),
                  name, vocab=vocab)
