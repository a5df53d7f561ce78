"""Checkpoints: pickle-free files holding everything a run needs to continue exactly.

A checkpoint is one ``.npz`` (``allow_pickle=False``) written atomically by rank 0: every array
(model parameters and buffers under ``model/``, optimizer state under ``optimizer/``) plus one JSON
metadata document (format tag, dtrain version, world size, config, optimizer hyperparameters and
scalars, scheduler state, every rank's RNG state, the Trainer's loop position with the epoch sums of
all ranks). Nested state is split generically: arrays go to the npz and are replaced in the JSON by
``{"__array__": key}``; dicts with integer keys (optimizer state by parameter index) are tagged so
they come back with integer keys. Loading never unpickles or executes anything.

This module knows files, not the Trainer: what goes in is ``Trainer.state_dict(...)`` and what comes
out goes back through ``Trainer.load_state_dict(...)``.

``CheckpointManager`` names files ``ckpt-{step:08d}.npz``, keeps the newest ``keep`` and maintains
``latest.json``, a manifest listing every kept file with its size and SHA-256, so ``--resume``
finds the newest one and verifies it, and ``--resume last-good`` finds the newest one that verifies.

Every file here is input a user (or an attacker) can replace, so reading is bounded: only regular files
are opened (a FIFO or a device is refused at once, never read), ``latest.json`` is read up to
:data:`MAX_MANIFEST_BYTES`, a checkpoint's archive members must be uncompressed and its metadata at most
:data:`MAX_METADATA_BYTES` and :data:`MAX_METADATA_DEPTH` levels deep, and the trainer and RNG state in
it are checked field by field (:mod:`.state`). Every refusal is a CheckpointError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from ..backend import is_bfloat16, to_device
from ..data.filetype import looks_like
from ..files import InputFileError, MiB, open_regular, read_json, size_of
from ..files import atomic_write as _atomic_write  # a name tests monkeypatch
from ..nn.utils.serialization import SerializationError, load_npz, save_npz
from ..spec import check_int, is_int
from .state import check_saved_state

__all__ = ["CheckpointError", "CheckpointManager", "load_checkpoint", "param_checksum", "save_checkpoint"]

FORMAT = "dtrain-checkpoint"
FORMAT_VERSION = 1
MANIFEST_FORMAT = "dtrain-checkpoint-manifest"
MANIFEST_VERSION = 2
RESUME_HINT = "resume from it with --resume last-good (or --resume PATH)"
_NAME = re.compile(r"ckpt-(\d+)\.npz")
MAX_MANIFEST_BYTES = 4 * MiB  # a manifest lists the kept files, ~200 bytes each
MAX_METADATA_BYTES = 64 * MiB  # config, optimizer scalars, RNG states, the metrics history
MAX_METADATA_DEPTH = 32  # what dtrain writes nests about 8 levels deep


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model/optimizer (the message names the file)."""


def _short(value) -> str:
    """``repr(value)``, cut to one readable piece of an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def param_checksum(model) -> str:
    """SHA-256 over the model's state_dict (names, dtypes, shapes, bytes): equal iff bitwise equal."""
    h = hashlib.sha256()
    for name, a in model.state_dict().items():
        a = np.ascontiguousarray(to_device(a, "cpu"))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _split(obj, prefix: str, arrays: dict):
    """A JSON-able copy of ``obj`` with arrays moved into ``arrays`` under keys starting with prefix."""
    if hasattr(obj, "__array_interface__") or hasattr(obj, "__cuda_array_interface__"):
        if obj.ndim == 0 and not hasattr(obj, "__cuda_array_interface__") and isinstance(obj, np.generic):
            return obj.item()
        arrays[prefix] = to_device(obj, "cpu")
        return {"__array__": prefix}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, (int, np.integer)) for k in obj):
            return {"__intdict__": [[int(k), _split(v, f"{prefix}/{k}", arrays)] for k, v in obj.items()]}
        return {str(k): _split(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj, arrays: dict, path: str, where: str = ""):
    """``obj`` with its ``{"__array__": key}`` references replaced by the arrays and ``__intdict__`` pairs
    turned back into dicts; CheckpointError naming ``where`` for a reference that is not one. Recursive:
    call it on metadata whose depth :func:`_check_depth` bounded."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if not isinstance(key, str) or key not in arrays:
                raise CheckpointError(f"checkpoint {path}: {where or 'metadata'} refers to array {_short(key)}, "
                                      "which the file does not contain")
            return arrays[key]
        if set(obj) == {"__intdict__"}:
            pairs = obj["__intdict__"]
            if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and is_int(p[0])
                                                    for p in pairs)):
                raise CheckpointError(f"checkpoint {path}: {where} must be a list of [integer, value] pairs, "
                                      f"got {_short(pairs)}")
            return {int(k): _join(v, arrays, path, f"{where}[{k}]") for k, v in pairs}
        return {k: _join(v, arrays, path, f"{where}.{k}" if where else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays, path, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _check_depth(meta, path: str) -> None:
    """CheckpointError when the metadata nests deeper than MAX_METADATA_DEPTH (walked without recursion, so
    that everything after it, which recurses, cannot hit Python's recursion limit)."""
    stack = [(meta, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise CheckpointError(f"checkpoint {path}: its metadata nests more than {MAX_METADATA_DEPTH} levels "
                                  "deep; dtrain writes about 8 (the file is corrupt or was not written by dtrain)")
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)


def _check_contents(state: dict, arrays: dict, path: str) -> None:
    """Real-number arrays only; the entries have their JSON types and the trainer and RNG state are valid
    field by field (:func:`.state.check_saved_state`)."""
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf" and not is_bfloat16(a.dtype):
            raise CheckpointError(f"checkpoint {path}: array {name!r} has dtype {a.dtype}; a checkpoint holds "
                                  "real numbers only")
    try:
        check_saved_state(state, f"checkpoint {path}")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def save_checkpoint(path: str, state: dict) -> None:
    """Write a training state (``Trainer.state_dict(...)``: model, optimizer, scheduler, RNG, loop position,
    compression state, config) to ``path``, atomically.

    Arrays anywhere in ``state`` go to the npz under their path (``model/...``, ``optimizer/...``); the rest
    is the JSON metadata, with the format tag and the dtrain version added.

    Raises OSError (ENOSPC...) if the file cannot be written; ``path`` is then left as it was.
    """
    from .. import __version__

    arrays: dict[str, Any] = {}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtrain_version": __version__}
    meta.update({key: _split(value, key, arrays) for key, value in state.items()})
    save_npz(arrays, path, metadata=json.loads(json.dumps(meta, default=_json_default)))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"checkpoint metadata cannot hold a {type(o).__name__}")


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint written by save_checkpoint: {"model", "optimizer", "scheduler", "rng", "trainer",
    "config", "world_size", ...} with arrays restored.

    Never unpickles anything, never opens anything but a regular file, never reads more than the file
    holds. Raises CheckpointError naming the file if it is missing, damaged, not a dtrain checkpoint, or
    holds a field of the wrong type or range (the message names the field and the value).
    """
    try:
        size_of(path)  # a FIFO, a device or a folder is refused before anything reads it
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except InputFileError as exc:
        raise CheckpointError(f"checkpoint {path} {exc.reason}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    try:
        arrays, meta = load_npz(path, with_metadata=True, max_metadata_bytes=MAX_METADATA_BYTES,
                                allow_compressed=False)
    except SerializationError as exc:
        detail = str(exc)
        detail = detail[len(path) + 2:] if detail.startswith(f"{path}: ") else detail
        try:  # NumPy calls any text file "pickled data": say what the file looks like instead
            what = looks_like(path)
        except OSError:
            what = None
        if what is not None:
            raise CheckpointError(f"checkpoint {path} is not a dtrain checkpoint: it looks like {what}, not an .npz "
                                  "archive (checkpoints are the ckpt-*.npz files dtrain writes)") from None
        raise CheckpointError(f"checkpoint {path} is not a dtrain checkpoint (or is damaged): {detail}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        tag = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"checkpoint {path} is not a dtrain checkpoint (format tag {_short(tag)}, expected "
                              f"{FORMAT!r})")
    version = meta.get("format_version")
    if not is_int(version) or version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {_short(version)}; this dtrain reads version "
                              f"{FORMAT_VERSION}")
    _check_depth(meta, path)
    state = _join(meta, arrays, path)
    _check_contents(state, arrays, path)
    return state


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open_regular(path, "checkpoint") as f:  # never blocks on a FIFO
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _step_of(name: str) -> int | None:
    m = _NAME.fullmatch(name)
    return int(m.group(1)) if m else None


class CheckpointManager:
    """Numbered checkpoints in ``directory`` with a manifest (``latest.json``) of the ones kept.

    The manifest (version 2) is ``{"format": "dtrain-checkpoint-manifest", "version": 2, "latest":
    file, "checkpoints": [{"file", "step", "sha256", "bytes"}, ...]}``, oldest first. A save writes the
    new checkpoint atomically, then the manifest atomically, and only then deletes the files that
    fell out of the newest ``keep``. Reading and verifying never writes or deletes anything. The
    version-1 manifest (``{"latest", "step", "sha256"}``) and folders without one are still read.
    """

    MANIFEST = "latest.json"

    def __init__(self, directory: str, keep: int = 3):
        check_int("keep", keep, 1)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise CheckpointError(f"checkpoint directory {directory} exists and is not a directory")
        self.directory, self.keep = directory, keep

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the ``.tmp-*`` files an earlier run left when it was killed in the middle of a write (each as
        big as a checkpoint: repeated preemptions would fill the disk). Call it before this run writes
        anything (rank 0, at start and on resume); returns the names removed."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        removed = []
        for name in sorted(names):
            path = os.path.join(self.directory, name)
            if name.startswith(".tmp-") and os.path.isfile(path) and not os.path.islink(path):
                try:
                    os.unlink(path)
                    removed.append(name)
                except OSError:
                    pass
        return removed

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, self.MANIFEST)

    def _path(self, entry: dict) -> str:
        return os.path.join(self.directory, entry["file"])

    # -- reading -------------------------------------------------------------------------------
    def _scan(self) -> list[dict]:
        """The ckpt-*.npz files in the folder, oldest step first (for folders without a v2 manifest)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"cannot list checkpoint directory {self.directory}: {exc.strerror}") from None
        found = sorted((_step_of(n), n) for n in names if _step_of(n) is not None)
        return [{"file": n, "step": s, "sha256": None, "bytes": None} for s, n in found]

    def _read_manifest(self) -> list[dict] | None:
        """The manifest's entries, oldest first (the last is the latest), or None without a manifest.

        Raises CheckpointError naming the manifest if it is unreadable or malformed.
        """
        path = self.manifest_path
        if not os.path.exists(path):
            return None
        try:  # regular files only, of a manifest's size, of sane nesting
            m = read_json(path, "checkpoint manifest", MAX_MANIFEST_BYTES)
        except InputFileError as exc:
            raise CheckpointError(str(exc)) from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint manifest {path} is unreadable ({exc.strerror or exc})") from None

        def bad(why: str) -> CheckpointError:
            return CheckpointError(f"checkpoint manifest {path} is malformed: {why}")

        if not isinstance(m, dict):
            raise bad(f"expected a JSON object, got {type(m).__name__}")
        if "format" not in m:  # version 1: {"latest", "step", "sha256"}; the other kept files are unlisted
            name = m.get("latest")
            if not _plain_name(name):
                raise bad(f"'latest' must be a file name in the folder, got {_short(name)}")
            entries = [e for e in self._scan() if e["file"] != name]
            step = m.get("step")
            step = step if is_int(step) else _step_of(name)
            return [*entries, {"file": name, "step": step, "sha256": m.get("sha256"), "bytes": None}]
        if m.get("format") != MANIFEST_FORMAT:
            raise bad(f"format tag {_short(m.get('format'))}, expected {MANIFEST_FORMAT!r}")
        if not is_int(m.get("version")) or m.get("version") != MANIFEST_VERSION:
            raise CheckpointError(f"checkpoint manifest {path} has version {_short(m.get('version'))}; this dtrain "
                                  f"reads versions 1 and {MANIFEST_VERSION}")
        entries = m.get("checkpoints")
        if not isinstance(entries, list):
            raise bad("'checkpoints' must be a list")
        for e in entries:
            if not (isinstance(e, dict) and _plain_name(e.get("file")) and is_int(e.get("step"))
                    and isinstance(e.get("sha256"), str) and is_int(e.get("bytes"))):
                raise bad(f"entry {_short(e)} is not {{'file': name, 'step': int, 'sha256': hex, 'bytes': int}}")
        if entries and m.get("latest") != entries[-1]["file"]:
            raise bad(f"'latest' is {_short(m.get('latest'))} but the newest listed checkpoint is "
                      f"{entries[-1]['file']!r}")
        return [dict(e) for e in entries]

    def _verify(self, entry: dict) -> str | None:
        """None if the file is there with the size and SHA-256 the manifest records, else the problem."""
        path = self._path(entry)
        try:
            size = size_of(path)  # a FIFO or a device is named, never opened for reading
        except FileNotFoundError:
            return f"is missing (named by {self.manifest_path})"
        except InputFileError as exc:
            return exc.reason
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        expected = entry.get("bytes")
        if expected is not None and size < expected:
            return f"is truncated ({size} of {expected} bytes)"
        if expected is not None and size > expected:
            return f"has {size} bytes but {self.manifest_path} records {expected} (the file is corrupt)"
        if entry.get("sha256") is not None:
            try:
                digest = _sha256(path)
            except InputFileError as exc:  # replaced by something else since the size was read
                return exc.reason
            except OSError as exc:
                return f"cannot be read ({exc.strerror})"
            if digest != entry["sha256"]:
                return (f"is corrupt (checksum mismatch): its SHA-256 does not match the SHA-256 in "
                        f"{self.manifest_path}")
        return None

    @staticmethod
    def _loads(path: str) -> str | None:
        """None if ``path`` loads as a dtrain checkpoint, else why not."""
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            return f"does not load: {exc}"
        return None

    def _newest_good(self, entries: list[dict]) -> tuple[str | None, list[tuple[str, str]]]:
        skipped = []
        for entry in reversed(entries):
            path = self._path(entry)
            problem = self._verify(entry) or self._loads(path)
            if problem is None:
                return path, skipped
            skipped.append((path, problem))
        return None, skipped

    def latest(self) -> str | None:
        """Path of the newest checkpoint, verified against the manifest's size and SHA-256; None if none exist.

        Raises CheckpointError naming the file and its problem (missing, truncated, checksum mismatch)
        and the newest earlier checkpoint that verifies, with how to resume from it.
        """
        try:
            entries = self._read_manifest()
        except CheckpointError as exc:
            good, _ = self.last_good()
            raise CheckpointError(f"{exc}; " + self._fallback_hint(good, "the newest good checkpoint")) from None
        if entries is None:
            entries = self._scan()
            return self._path(entries[-1]) if entries else None  # no manifest: nothing to verify against
        if not entries:
            return None
        path = self._path(entries[-1])
        problem = self._verify(entries[-1])
        if problem is None:
            return path
        good, _ = self._newest_good(entries[:-1])
        hint = self._fallback_hint(good, "the previous good checkpoint")
        raise CheckpointError(f"checkpoint {path} {problem}; {hint}")

    def _fallback_hint(self, good: str | None, what: str) -> str:
        if good is None:
            return f"no other checkpoint in {self.directory} verifies"
        return f"{what} is {good}: {RESUME_HINT}"

    def last_good(self) -> tuple[str | None, list[tuple[str, str]]]:
        """The newest checkpoint that matches its manifest entry (size, SHA-256) and loads as a dtrain
        checkpoint: ``(path or None, skipped)``, where ``skipped`` lists ``(path, reason)`` for every
        newer one that does not (an unreadable manifest is listed too, and the files are then checked
        by loading them). Reads only; nothing is deleted or rewritten."""
        skipped: list[tuple[str, str]] = []
        try:
            entries = self._read_manifest()
        except CheckpointError as exc:
            skipped.append((self.manifest_path, f"{exc}; checking the checkpoint files themselves"))
            entries = None
        if entries is None:
            entries = self._scan()
        good, bad = self._newest_good(entries)
        return good, skipped + bad

    # -- writing -------------------------------------------------------------------------------
    def save(self, state: dict) -> str:
        """Write ``state`` (``Trainer.state_dict(...)``, see save_checkpoint) as ``ckpt-{step:08d}.npz``, record
        it in the manifest, then delete the checkpoints beyond the newest ``keep``. Returns the new file's path.

        Raises CheckpointError naming the file and the OS reason (ENOSPC...) if the checkpoint or the
        manifest cannot be written; the previous checkpoints and manifest are then left as they were
        and no temporary file remains.
        """
        step = int(state["trainer"]["step"])
        name = f"ckpt-{step:08d}.npz"
        path = os.path.join(self.directory, name)
        try:
            previous = self._read_manifest()
        except CheckpointError:
            previous = None  # an unreadable manifest is replaced by one describing the files now present
        if previous is None:
            previous = self._scan()
        existed = os.path.exists(path)
        try:
            os.makedirs(self.directory, exist_ok=True)
            save_checkpoint(path, state)
            entry = {"file": name, "step": step, "sha256": _sha256(path), "bytes": os.path.getsize(path)}
            history = []
            for e in previous:
                if e["file"] == name or e["step"] is None or not os.path.isfile(self._path(e)):
                    continue  # replaced now, or nothing left to keep (or a FIFO, a folder: not ours to hash)
                if e["step"] > step:
                    # From a run that was resumed from an earlier checkpoint: out of the manifest (so
                    # last-good never prefers it to this one), but the file is not deleted.
                    continue
                if e["sha256"] is None:  # found without a manifest (older folders): record what it holds now
                    e["sha256"] = _sha256(self._path(e))
                if e["bytes"] is None:  # a version-1 entry: its recorded SHA-256 still guards it
                    e["bytes"] = os.path.getsize(self._path(e))
                history.append(e)
        except (OSError, InputFileError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise CheckpointError(f"cannot write checkpoint {path}: {reason}; the previous "
                                  f"checkpoints and {self.MANIFEST} are unchanged") from None
        history.append(entry)
        kept, dropped = history[-self.keep:], history[:-self.keep]
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "latest": name,
                    "checkpoints": [{k: e[k] for k in ("file", "step", "sha256", "bytes")} for e in kept]}
        try:
            _atomic_write(self.manifest_path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        except OSError as exc:
            if not existed:  # not recorded anywhere: take it back so the folder is as before
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise CheckpointError(f"cannot write the checkpoint manifest {self.manifest_path}: "
                                  f"{exc.strerror or exc}; checkpoint {path} was not recorded") from None
        for e in dropped:  # the manifest no longer names them
            if _step_of(e["file"]) is not None:
                try:
                    os.unlink(self._path(e))
                except OSError:
                    pass  # already gone, or not ours to remove: the manifest is what counts
        return path


def _plain_name(name) -> bool:
    """A file name inside the checkpoint folder (no separators, no '..'): the manifest cannot point elsewhere."""
    return (isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name
            and "/" not in name and "\\" not in name)
