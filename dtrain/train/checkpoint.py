"""Checkpoints: pickle-free files holding everything a run needs to continue exactly.

A checkpoint is one ``.npz`` (``allow_pickle=False``) written atomically by rank 0: every array
(model parameters and buffers under ``model/``, optimizer state under ``optimizer/``) plus one JSON
metadata document (format tag, dtrain version, config, optimizer hyperparameters and scalars,
scheduler state, RNG state, the Trainer's loop position). Nested state is split generically:
arrays go to the npz and are replaced in the JSON by ``{"__array__": key}``; dicts with integer
keys (optimizer state by parameter index) are tagged so they come back with integer keys.

``CheckpointManager`` names files ``ckpt-{step:08d}.npz``, keeps the last ``keep`` and maintains a
``latest.json`` manifest with the newest file and its SHA-256, so ``--resume`` finds it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

import numpy as np

from .. import backend
from ..backend import to_device
from ..nn.utils.serialization import SerializationError, _atomic_write, load_npz, save_npz

__all__ = ["CheckpointError", "CheckpointManager", "load_checkpoint", "param_checksum", "restore_trainer",
           "save_checkpoint"]

FORMAT = "dtrain-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model/optimizer (the message names the file)."""


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


def _join(obj, arrays: dict, path: str):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if key not in arrays:
                raise CheckpointError(f"{path}: metadata refers to array {key!r}, which the file does not contain")
            return arrays[key]
        if set(obj) == {"__intdict__"}:
            return {int(k): _join(v, arrays, path) for k, v in obj["__intdict__"]}
        return {k: _join(v, arrays, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays, path) for v in obj]
    return obj


def save_checkpoint(path: str, trainer, rng_states: list | None = None, compression_states: list | None = None) -> None:
    """Write the trainer's full state (model, optimizer, scheduler, RNG, loop position) to ``path``.

    ``rng_states``: every rank's default-generator state, in rank order (default: this process's);
    ``compression_states``: every rank's compressor state (error-feedback memories, PowerSGD Qs).
    """
    from .. import __version__

    arrays: dict[str, Any] = {}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dtrain_version": __version__,
        "config": trainer.config,
        "model": _split(dict(trainer.model.state_dict()), "model", arrays),
        "optimizer": _split(trainer.optimizer.state_dict(), "optimizer", arrays),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "rng": rng_states if rng_states is not None else [backend.default_generator.get_state()],
        "trainer": trainer.state.to_json(),
        "compression": _split(list(compression_states or []), "compression", arrays),
    }
    save_npz(arrays, path, metadata=json.loads(json.dumps(meta, default=_json_default)))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"checkpoint metadata cannot hold a {type(o).__name__}")


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint written by save_checkpoint: {"model", "optimizer", "scheduler", "rng", "trainer",
    "config", ...} with arrays restored. Raises CheckpointError naming the file if it is not one."""
    try:
        arrays, meta = load_npz(path, with_metadata=True)
    except SerializationError as exc:
        raise CheckpointError(f"cannot load checkpoint: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dtrain checkpoint (format tag {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')!r}; this dtrain "
                              f"reads version {FORMAT_VERSION}")
    return _join(meta, arrays, path)


def restore_trainer(trainer, path: str) -> None:
    """Load ``path`` into the trainer's model, optimizer, scheduler, default RNG and loop state."""
    from .trainer import TrainState

    ck = load_checkpoint(path)
    states = ck.get("rng") or []
    rank, world = trainer.sync.rank, trainer.sync.world_size
    if len(states) != world:
        raise CheckpointError(f"checkpoint {path} holds the random state of {len(states)} rank(s) but this run has "
                              f"{world}; resume with mpiexec -n {len(states)}")
    try:
        trainer.model.load_state_dict(ck["model"])
        trainer.optimizer.load_state_dict(ck["optimizer"])
        if trainer.scheduler is not None and ck.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(ck["scheduler"])
        backend.default_generator.set_state(states[rank])
        compression = ck.get("compression") or []
        if compression and len(compression) == world and compression[rank]:
            trainer.sync.load_compressor_state(compression[rank])
        trainer.state = TrainState.from_json(ck["trainer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {exc}") from None


class CheckpointManager:
    """Numbered checkpoints in ``directory``: keeps the newest ``keep``, records the latest in latest.json."""

    MANIFEST = "latest.json"

    def __init__(self, directory: str, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        self.directory, self.keep = directory, keep

    def save(self, trainer, rng_states: list | None = None, compression_states: list | None = None) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"ckpt-{trainer.state.step:08d}.npz")
        save_checkpoint(path, trainer, rng_states, compression_states)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        manifest = {"latest": os.path.basename(path), "step": trainer.state.step, "sha256": digest}
        _atomic_write(os.path.join(self.directory, self.MANIFEST), lambda f: f.write(json.dumps(manifest).encode()))
        for old in sorted(glob.glob(os.path.join(self.directory, "ckpt-*.npz")))[:-self.keep]:
            os.unlink(old)
        return path

    def latest(self) -> str | None:
        """Path of the newest checkpoint (from the manifest, verified by checksum), or None if none exist."""
        manifest = os.path.join(self.directory, self.MANIFEST)
        if not os.path.exists(manifest):
            found = sorted(glob.glob(os.path.join(self.directory, "ckpt-*.npz")))
            return found[-1] if found else None
        try:
            with open(manifest) as f:
                m = json.load(f)
            path = os.path.join(self.directory, m["latest"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint manifest {manifest} is unreadable: {exc}") from None
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            raise CheckpointError(f"the manifest names {path}, which cannot be read: {exc.strerror}") from None
        if digest != m.get("sha256"):
            raise CheckpointError(f"checkpoint {path} does not match the SHA-256 in {manifest}: the file is corrupt")
        return path
