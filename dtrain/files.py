"""Reading the files a user names: only regular files, never more bytes than the format implies, and
parsers that fail with one line instead of a traceback.

Every file input of dtrain (a ``--config`` TOML, a ``--dataset`` file, a checkpoint, its ``latest.json``
and metadata, a safetensors header) goes through here, so that

* a FIFO, a socket or a device (``/dev/zero``) is refused at once instead of blocking the job or reading
  until memory runs out (a symlink is followed: what it points to must be a regular file);
* a file larger than its format can sensibly be is refused before it is read;
* deeply nested JSON/TOML (``'[' * 200000``) is an error naming the file, not a ``RecursionError``.

The errors are :class:`InputFileError` (a ValueError: the ranks agree on it and exit 2) naming the path.

    >>> with open_regular("/dev/zero", "--config") as f:   # doctest: +SKIP
    InputFileError: --config /dev/zero is a character device, not a regular file
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = ["InputFileError", "MiB", "GiB", "OutputError", "check_writable_dir", "open_regular", "parse_guarded",
           "read_limited", "read_json", "size_of", "atomic_write", "human_size", "write_atomic"]

MiB = 1 << 20
GiB = 1 << 30

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class InputFileError(ValueError):
    """A file the user named cannot be used; the message names it and says why. ``reason`` is the why alone
    ("is a FIFO (named pipe), not a regular file"), for callers that word the file their own way."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason if reason is not None else message


class OutputError(OSError):
    """A file dtrain writes cannot be written; the message names it and says why (``No space left``...).
    ``errno`` is the system's (28: ENOSPC); ``str()`` is the message alone."""

    def __init__(self, errno: int | None, message: str):
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _kind(mode: int) -> str:
    for test, what in _KINDS:
        if test(mode):
            return what
    return "not a regular file"


def _label(what: str, path: str) -> str:
    return f"{what} {path}" if what else str(path)


def open_regular(path: str, what: str = "", max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for binary reading; InputFileError unless it is a regular file (after symlinks) of at
    most ``max_bytes``. The open cannot block: a FIFO is opened non-blocking, seen for what it is and closed.
    FileNotFoundError / PermissionError pass through (their callers already word those)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            reason = f"is {_kind(st.st_mode)}, not a regular file"
            raise InputFileError(f"{_label(what, path)} {reason}", reason)
        if max_bytes is not None and st.st_size > max_bytes:
            reason = f"is {st.st_size:,} bytes, more than the {human_size(max_bytes)} such a file can sensibly be"
            raise InputFileError(f"{_label(what, path)} {reason}", reason)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def size_of(path: str, what: str = "") -> int:
    """The size of the regular file ``path`` (InputFileError if it is not one)."""
    with open_regular(path, what) as f:
        return os.fstat(f.fileno()).st_size


def read_limited(path: str, what: str, max_bytes: int) -> bytes:
    """All of the regular file ``path``, refused when over ``max_bytes`` (checked again while reading, in
    case the file grows)."""
    with open_regular(path, what, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        reason = f"grew past {human_size(max_bytes)} while it was read"
        raise InputFileError(f"{_label(what, path)} {reason}", reason)
    return data


def parse_guarded(parse: Callable[[Any], Any], data: Any, where: str) -> Any:
    """``parse(data)``, with a nesting too deep for the parser reported as an InputFileError naming
    ``where`` (Python's json and tomllib recurse once per level)."""
    try:
        return parse(data)
    except RecursionError:
        raise InputFileError(f"{where}: nested too deeply to parse") from None


def read_json(path: str, what: str, max_bytes: int = 16 * MiB) -> Any:
    """The JSON document in ``path``: InputFileError for anything that is not a regular file of at most
    ``max_bytes`` holding UTF-8 JSON of sane nesting, named in the message."""
    data = read_limited(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{_label(what, path)} is not UTF-8 text (byte {exc.start})") from None
    try:
        return parse_guarded(json.loads, text, _label(what, path))
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{_label(what, path)} is not valid JSON: {exc}") from None


def human_size(n: int) -> str:
    """``n`` bytes for a message: ``'512 bytes'``, ``'3.2 MiB'``, ``'6.5 TiB'``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows, where a directory cannot be opened like this
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and platforms) refuse fsync on a directory: the rename still happened
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary ``.tmp-*`` file in the same folder, which is
    fsynced and renamed over ``path``, then the folder is fsynced so the rename survives a power cut.
    On any failure the temporary file is removed and ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed however the block ends
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file what open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def write_atomic(path: str, data: bytes | str) -> None:
    """:func:`atomic_write` of ``data``, with a failure (a full disk) as an OutputError naming ``path``: a reader
    never sees half a file, a full disk never leaves a 0-byte one."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        atomic_write(path, lambda f: f.write(raw))
    except OSError as exc:
        raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None


def check_writable_dir(path: str, what: str, need_bytes: int = 0) -> None:
    """Create the folder ``path`` if needed and prove it takes a file (a probe written, synced and removed),
    with at least ``need_bytes`` free: an OutputError naming ``what`` and the folder at the start of a run,
    not after hours of training."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(exc.errno, f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    probe = os.path.join(path, f".dtrain-write-probe-{os.getpid()}")
    try:
        write_atomic(probe, b"dtrain checks that this folder takes a file\n")
        os.remove(probe)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OutputError(exc.errno, f"{what} {path} is not writable: {why}") from None
    free = _free_bytes(path)
    if need_bytes and free is not None and free < need_bytes:
        raise OutputError(28, f"{what} {path} has {human_size(free)} free, less than the {human_size(need_bytes)} "
                              "a checkpoint of this run needs")


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize
