"""The bounds every data set loader checks before it allocates: how many classes a data set may declare, how
large a text corpus may be, and how much memory one load may need.

A file the user names (``npz:FILE``, ``text:FILE``, ``mnist:DIR``) or a ``synthetic:`` option can ask for any
amount of memory with a few bytes: a label of 3e8 makes the model's output layer 3e8 wide, a compressed member
of zeros decompresses to gigabytes, an IDX header declares 2**96 bytes. The loaders compare what a file
declares with these limits first, and fail with a :class:`DatasetError` naming the file, the value and the
limit, before anything that size exists.

    >>> check_memory("synthetic: n=4000000000, features=64", 28 * 4_000_000_000 * 64)   # doctest: +SKIP
    DatasetError: synthetic: n=4000000000, features=64 needs about 6.5 TiB of memory, more than the 21 GiB ...
"""

from __future__ import annotations

from ... import env
from ...files import GiB, human_size

__all__ = ["DatasetError", "FALLBACK_MEMORY", "MAX_CLASSES", "MAX_TEXT_BYTES", "check_classes", "check_memory",
           "human_size", "memory_limit", "one_line"]

# More classes than any real classification data set has (extreme-classification benchmarks stop near
# 700,000 labels), and still an output layer a machine can hold: a label of 3e8 is a corrupt file, not a task.
MAX_CLASSES = 1_000_000
# A character corpus beyond 1 GiB needs ~24 bytes a character to index (str, UTF-32 codes, ids): ~24 GiB.
MAX_TEXT_BYTES = 1 * GiB
# What one load may use where neither /proc/meminfo nor a cgroup says (macOS, some containers).
FALLBACK_MEMORY = 16 * GiB


class DatasetError(ValueError):
    """A data set cannot be loaded or is invalid (the message names the file or data set and the problem).

    Defined here, at the bottom of the data sets package, so that the registry and every loader can raise it;
    ``dtrain.data.DatasetError`` is this class."""


def _address_space_limit() -> int | None:
    """The soft RLIMIT_AS of this process (``ulimit -v``), None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def memory_limit() -> int:
    """Bytes one data set load may need: the memory available to this process (MemAvailable or a cgroup limit,
    shared by the ranks on this node; ``ulimit -v``; whichever is least), or FALLBACK_MEMORY where none of
    them is known."""
    known = [n for n in (env.memory_per_rank(), _address_space_limit()) if n is not None]
    return min(known) if known else FALLBACK_MEMORY


def check_memory(what: str, need: int, hint: str = "") -> None:
    """DatasetError unless ``need`` bytes fit in :func:`memory_limit`; the message starts with ``what`` (the
    file or the options that ask for it) and ends with ``hint`` (what to do instead)."""
    limit = memory_limit()
    if need > limit:
        tail = f"; {hint}" if hint else ""
        raise DatasetError(f"{what} needs about {human_size(need)} of memory ({need:,} bytes), more than the "
                           f"{human_size(limit)} available to this process{tail}")


def check_classes(where: str, what: str, count: int, hint: str = "labels must be class indices 0..C-1") -> None:
    """DatasetError unless a data set's ``count`` classes (``what``: "label 300000000 in 'y'", "a vocabulary of
    1,112,064 characters") stay within MAX_CLASSES; ``where`` names the file."""
    if count > MAX_CLASSES:
        raise DatasetError(f"{where}: {what} means {count:,} classes, more than the {MAX_CLASSES:,} dtrain allows "
                           f"(the model's output layer has one row per class); {hint}")


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (NumPy's messages span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
