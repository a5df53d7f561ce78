"""TensorBoard event files beside ``metrics.jsonl`` (``dtrain train --tensorboard``; TOML ``tensorboard = true``).

The writer is a collaborator of :class:`~dtrain.train.reporting.Reporter`: every record the reporter writes
to ``metrics.jsonl`` also goes, as scalars, to ``OUT/tensorboard/events.out.tfevents.*`` through
`tensorboardX <https://pypi.org/project/tensorboardX/>`_ (torch-free; an optional dependency, the
``tensorboard`` extra). View them with ``tensorboard --logdir OUT/tensorboard``.

    writer = TensorBoardWriter("runs/a/tensorboard", resumed=False)
    writer.record({"epoch": 1, "test_accuracy": 0.93, "grad_norms": {"0": 0.5}})   # scalars at step 1
    writer.close()

Scalars are per epoch (``global_step`` is the epoch number, as in metrics.jsonl): every number of the
record under its own name (``train_loss``, ``test_accuracy``, ``lr``, ``grad_norm``, ...), and the
per-layer dictionaries as ``grad_norms/<layer>`` and ``dead_relu/<layer>``; ``epoch``, ``step`` and
``epoch_complete`` are the record's position, not scalars. A resumed run purges the earlier run's events
from the resumed epoch on (tensorboardX's ``purge_step``), as the reporter cuts ``metrics.jsonl`` back.
"""

from __future__ import annotations

import glob
import math
import os

from ..spec import is_real
from .config import require_tensorboardx

__all__ = ["TensorBoardWriter", "scalars"]

_POSITION = frozenset({"epoch", "step", "epoch_complete"})


def scalars(record: dict) -> dict[str, float]:
    """The record's scalars by tag: finite numbers (not bools) at the top level and one level down in dicts
    (``grad_norms/0``); None (a metric this run does not have), lists and strings are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _POSITION:
            continue
        items = value.items() if isinstance(value, dict) else ((None, value),)
        for sub, v in items:
            if not is_real(v) or not math.isfinite(float(v)):
                continue
            out[key if sub is None else f"{key}/{sub}"] = float(v)
    return out


class TensorBoardWriter:
    """Scalars of each metrics record into event files in ``logdir`` (made if missing).

    A new run (``resumed`` False) removes the event files a previous run left in ``logdir`` (the reporter
    replaces that run's metrics.jsonl the same way); a resumed run keeps them and purges their events from
    its first record's epoch on. The event file is opened at the first record.
    """

    def __init__(self, logdir: str, resumed: bool):
        self._tbx = require_tensorboardx()
        self.logdir, self.resumed = logdir, resumed
        self._writer = None
        os.makedirs(logdir, exist_ok=True)
        if not resumed:
            for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
                os.remove(path)

    def record(self, record: dict) -> None:
        """Write the record's :func:`scalars` at ``global_step = record["epoch"]`` and flush them to disk."""
        epoch = int(record["epoch"])
        if self._writer is None:
            # tensorboardX names the file events.out.tfevents.<seconds>.<host><suffix> and opens it for writing:
            # a resumed run started within the same second would overwrite the earlier run's file.
            suffix = f".{os.getpid()}.{len(glob.glob(os.path.join(self.logdir, 'events.out.tfevents.*')))}"
            self._writer = self._tbx.SummaryWriter(self.logdir, purge_step=epoch if self.resumed else None,
                                                   filename_suffix=suffix)
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=epoch)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a no-op when nothing was written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
