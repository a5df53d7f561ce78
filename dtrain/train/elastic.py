"""The ranks' side of an elastic run: what ``dtrain launch --max-restarts`` (the supervisor,
:mod:`dtrain.elastic`) reads after a failure, and the record a restarted run writes.

The supervisor gives every attempt a folder in ``DTRAIN_ELASTIC_DIR`` (on a file system the ranks share
with it, as their checkpoints are); the ranks write there:

* ``rank-R.json`` at start: ``{"rank", "pid", "host"}``, so that a launcher's "process PID died" names
  a rank;
* ``progress``: 32 bytes rank 0 rewrites in place (a memory-mapped file, no system call per step): the
  last step finished, when (Unix time), and the step and time of the last checkpoint written;
* ``failure-R.json`` when rank R's collective deadline fires: ``{"rank", "ranks", "hosts", "step",
  "message"}``, the ranks it found missing or behind.

A restarted attempt also gets ``DTRAIN_ELASTIC_RESTART``: JSON with the failed attempt's number, cause,
ranks, failure time and last step, and the totals of the restarts before it. Its Trainer writes one
``{"event": "restart", ...}`` record to ``metrics.jsonl`` when it has resumed (``steps_redone``: steps
between the checkpoint and the failure; ``seconds_lost``: from that checkpoint's writing to the moment
training continues, i.e. the work redone plus detection and relaunch), and ``summary.json`` gets
``restarts``, ``steps_redone`` and ``seconds_lost`` summed over the run.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import time

from ..files import write_atomic

__all__ = ["DIR_VARIABLE", "PROGRESS_FILE", "RESTART_VARIABLE", "ElasticRank", "read_progress", "write_json"]

DIR_VARIABLE = "DTRAIN_ELASTIC_DIR"
RESTART_VARIABLE = "DTRAIN_ELASTIC_RESTART"
PROGRESS_FILE = "progress"
_PROGRESS = struct.Struct("<qdqd")  # step, its time, checkpoint step, its time (-1 / 0.0: none yet)


def write_json(path: str, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one, never half)."""
    write_atomic(path, json.dumps(data))


def read_progress(folder: str) -> dict | None:
    """What rank 0 last wrote to ``folder/progress``: ``{"step", "time", "checkpoint_step",
    "checkpoint_time"}`` (a checkpoint step of -1: none written), or None when there is no such file."""
    try:
        with open(os.path.join(folder, PROGRESS_FILE), "rb") as f:
            raw = f.read(_PROGRESS.size)
    except OSError:
        return None
    if len(raw) < _PROGRESS.size:
        return None
    step, at, ck_step, ck_at = _PROGRESS.unpack(raw)
    return {"step": step, "time": at, "checkpoint_step": ck_step, "checkpoint_time": ck_at}


class ElasticRank:
    """One rank's writer of the files above; :meth:`from_env` returns None outside a supervised run."""

    def __init__(self, folder: str, rank: int, restart: dict | None = None):
        self.folder, self.rank, self.restart = folder, rank, restart
        self._map = None
        self._ck = (-1, 0.0)

    @classmethod
    def from_env(cls, rank: int, environ=None) -> ElasticRank | None:
        environ = os.environ if environ is None else environ
        folder = environ.get(DIR_VARIABLE)
        if not folder:
            return None
        restart = None
        text = environ.get(RESTART_VARIABLE)
        if text:
            try:
                restart = json.loads(text)
            except ValueError:
                raise ValueError(f"{RESTART_VARIABLE} is not JSON: {text[:200]!r}") from None
        return cls(folder, rank, restart)

    def register(self, host: str | None = None) -> None:
        """Write ``rank-R.json`` (and, on rank 0, create the progress file)."""
        os.makedirs(self.folder, exist_ok=True)
        write_json(os.path.join(self.folder, f"rank-{self.rank}.json"),
                   {"rank": self.rank, "pid": os.getpid(), "host": host or socket.gethostname()})
        if self.rank == 0:
            path = os.path.join(self.folder, PROGRESS_FILE)
            with open(path, "wb") as f:
                f.write(_PROGRESS.pack(0, time.time(), -1, 0.0))
            with open(path, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), _PROGRESS.size)

    def step(self, step: int) -> None:
        """Rank 0: ``step`` steps are done (called after every optimizer step; a memory write)."""
        if self._map is not None:
            self._map[:] = _PROGRESS.pack(step, time.time(), *self._ck)

    def checkpointed(self, step: int) -> None:
        """Rank 0: a checkpoint of ``step`` was written."""
        self._ck = (step, time.time())
        self.step(step)

    def resumed(self, step: int) -> None:
        """Rank 0: this attempt resumed from the checkpoint of ``step`` (its last checkpoint until it writes
        one: a failure now loses the steps since ``step``, not since 0)."""
        if step > 0:
            r = self.restart or {}
            at = r.get("checkpoint_time") if r.get("checkpoint_step") == step else None
            self._ck = (step, float(at or time.time()))
            self.step(step)

    def deadline_fired(self, ranks, hosts, step, message: str) -> None:
        """This rank's collective deadline fired: record whom it found missing (before the job is aborted)."""
        try:
            write_json(os.path.join(self.folder, f"failure-{self.rank}.json"),
                       {"rank": self.rank, "ranks": sorted(int(r) for r in ranks), "hosts": sorted(set(hosts)),
                        "step": step, "message": message})
        except OSError:
            pass  # the abort must happen anyway

    def restart_record(self, resumed_step: int, world_size: int) -> dict | None:
        """The ``metrics.jsonl`` record of the restart that led to this attempt (None on a first attempt)."""
        r = self.restart
        if not r:
            return None
        last = int(r.get("last_step", resumed_step))
        ck_time = r.get("checkpoint_time")
        if ck_time and r.get("checkpoint_step") == resumed_step:
            since = ck_time  # the checkpoint this attempt resumed from
        elif resumed_step == 0 and r.get("started_at"):
            since = r["started_at"]  # no checkpoint yet: the failed attempt's work is all lost
        else:  # an older checkpoint than the last one written (the newest did not verify): a lower bound
            since = r.get("failed_at", time.time())
        return {"event": "restart", "attempt": int(r.get("attempt", 1)), "cause": r.get("cause"),
                "ranks": r.get("ranks", []), "resumed_step": resumed_step, "world_size": world_size,
                "previous_world_size": r.get("world_size"),
                "steps_redone": max(0, last - resumed_step), "seconds_lost": round(time.time() - since, 3)}

    def summary_fields(self, record: dict | None) -> dict:
        """``restarts``, ``steps_redone`` and ``seconds_lost`` over the run (earlier restarts' totals from the
        supervisor, plus this attempt's record)."""
        r = self.restart or {}
        totals = r.get("totals") or {}
        restarts = int(totals.get("restarts", 0))
        redone = int(totals.get("steps_redone", 0))
        lost = float(totals.get("seconds_lost", 0.0))
        if record is not None:
            restarts, redone, lost = restarts + 1, redone + record["steps_redone"], lost + record["seconds_lost"]
        return {"restarts": restarts, "steps_redone": redone, "seconds_lost": round(lost, 3)}

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
