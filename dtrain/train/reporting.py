"""What a run reports: one log line and one ``metrics.jsonl`` record per evaluation, a progress bar, and at
the end ``summary.json``, ``config.json`` and the PNG plots (rank 0 writes; every rank computes the same).

Outputs never clobber: a new run refuses an ``--out`` folder that holds a previous run's results unless
told to ``--overwrite`` them (:func:`check_out_dir`), and a resumed run drops the records that the earlier
run wrote past the resumed position before it appends its own, so no epoch appears twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from ..env import launched_by_mpi
from ..files import write_atomic
from .config import ConfigError
from .plots import plot_grad_flow, plot_learning_curves

__all__ = ["RESULT_FILES", "SUMMARY_KEYS", "ReportOptions", "Reporter", "check_out_dir", "jsonable",
           "previous_results", "progress_stream", "show_progress"]

RESULT_FILES = ("metrics.jsonl", "summary.json", "config.json", "learning_curves.png", "grad_flow.png")
# Process names of the MPI launchers whose terminal the ranks' forwarded output reaches (/proc comm, <= 15 chars).
_LAUNCHERS = frozenset({"mpiexec", "mpirun", "mpiexec.hydra", "orterun", "prterun", "prun", "srun",
                        "mpiexec.openmpi", "mpirun.openmpi", "mpiexec.mpich", "mpirun.mpich"})

SUMMARY_KEYS = ("test_accuracy", "test_loss", "epochs", "steps", "world_size", "wall_s", "samples_per_s",
                "compression", "compression_ratio", "param_checksum")


@dataclass
class ReportOptions:
    """What the Trainer reports and where.

    Attributes:
        out_dir: write metrics.jsonl, summary.json, config.json and PNG plots there (rank 0).
        progress: show a tqdm progress bar on rank 0 (None: when rank 0's output reaches a terminal, see
            :func:`progress_stream`).
        monitor: record gradient flow, weight and activation statistics once per epoch.
        tensorboard: also write each record's scalars as TensorBoard events to ``out_dir/tensorboard``
            (rank 0; needs tensorboardX, see :mod:`dtrain.train.tensorboard`).
    """

    out_dir: str | None = None
    progress: bool | None = None
    monitor: bool = True
    tensorboard: bool = False


def jsonable(obj):
    """``obj`` with NumPy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Reporter:
    """Writes what :class:`ReportOptions` asks for; ``log`` is the run's RankLogger (rank 0 speaks)."""

    def __init__(self, options: ReportOptions, log):
        self.options, self.log = options, log
        self._metrics_file = None
        self._resume_pending = False  # resumed: metrics.jsonl is cut back at the first record
        self._tensorboard = None  # a TensorBoardWriter with ReportOptions.tensorboard (rank 0)

    @property
    def out_dir(self) -> str | None:
        return self.options.out_dir

    def open(self, resumed: bool) -> None:
        """Start ``metrics.jsonl``. A new run replaces a previous run's results in ``out_dir`` whole (the CLI
        has refused the folder unless --overwrite); a resumed run keeps the earlier records up to the resumed
        position and appends after them (the cut is made at its first record, which names that position)."""
        if not (self.out_dir and self.log.is_main):
            return
        os.makedirs(self.out_dir, exist_ok=True)
        if self.options.tensorboard:
            from .tensorboard import TensorBoardWriter

            self._tensorboard = TensorBoardWriter(os.path.join(self.out_dir, "tensorboard"), resumed)
        self._resume_pending = resumed
        if resumed:
            return
        for name in RESULT_FILES[1:]:  # a plot this run does not draw must not stay behind from the last one
            path = os.path.join(self.out_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        self._metrics_file = open(self._metrics_path, "w")

    @property
    def _metrics_path(self) -> str:
        return os.path.join(self.out_dir, "metrics.jsonl")

    def _continue_metrics(self, epoch: int) -> None:
        """Resumed at ``epoch`` (the first record this run writes): rewrite metrics.jsonl atomically without
        the earlier run's records of that epoch and later (they described a future this run replaces, and an
        interrupted write's half line), then append from there."""
        kept, dropped = [], []
        if os.path.exists(self._metrics_path):
            with open(self._metrics_path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        rec = None
                    is_earlier = isinstance(rec, dict) and (  # events (restarts) are history: always kept
                        (isinstance(rec.get("epoch"), int) and rec["epoch"] < epoch) or "event" in rec)
                    (kept if is_earlier else dropped).append(line if line.endswith("\n") else line + "\n")
        tmp = f"{self._metrics_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self._metrics_path)
        if dropped:
            self.log.info(f"metrics.jsonl: dropped {len(dropped)} record(s) of epoch {epoch} and later that the "
                          f"earlier run wrote past the resumed position")
        self._metrics_file = open(self._metrics_path, "a")
        self._resume_pending = False

    def close(self) -> None:
        """Close ``metrics.jsonl`` (and the TensorBoard event file)."""
        if self._metrics_file is not None:
            with contextlib.suppress(OSError):  # its last flush failed: already warned
                self._metrics_file.close()
            self._metrics_file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def progress_bar(self, total: int, initial: int, desc: str):
        """A tqdm bar on rank 0 when :func:`show_progress` says so (and tqdm is installed), else None."""
        stream = progress_stream() if self.log.is_main else None
        if not show_progress(self.options.progress, self.log.is_main, stream is not None):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="batch", dynamic_ncols=True,
                    file=stream or sys.stderr)

    def record(self, r: dict) -> None:
        """One evaluation: a log line, and a line of ``metrics.jsonl``."""
        parts = [f"epoch {r['epoch']:3d}", f"step {r['step']:6d}", f"train_loss {r['train_loss']:.4f}"]
        if r["test_loss"] is not None:
            parts.append(f"test_loss {r['test_loss']:.4f}")
        if r["test_accuracy"] is not None:
            parts.append(f"test_accuracy {r['test_accuracy']:.4f}")
        if r["samples_per_s"] is not None:
            parts.append(f"{r['samples_per_s']:.0f} samples/s")
        self.log.info("  ".join(parts))
        if self._resume_pending:
            self._continue_metrics(int(r["epoch"]))
        self._append(r)
        if self._tensorboard is not None:
            self._tensorboard.record(r)

    def event(self, r: dict, epoch: int) -> None:
        """A line of ``metrics.jsonl`` that is not an evaluation (``{"event": ...}``, e.g. a restart), written
        during ``epoch`` (a resumed run first cuts the file back to it). Events are kept by later resumes."""
        if self._resume_pending:
            self._continue_metrics(int(epoch))
        self._append(r)

    def _append(self, r: dict) -> None:
        """One line of metrics.jsonl. A record that cannot be written (a full disk) is a warning, once, as a
        periodic checkpoint's is: training goes on, later records are not written (summary.json, at the end,
        is an error if it cannot be written)."""
        if self._metrics_file is None:
            return
        try:
            self._metrics_file.write(json.dumps(jsonable(r)) + "\n")
            self._metrics_file.flush()
        except OSError as exc:
            self.log.warning(f"{self._metrics_path}: cannot write: {exc.strerror or exc}; training continues "
                             "without further metrics records")
            with contextlib.suppress(OSError):
                self._metrics_file.close()
            self._metrics_file = None

    @staticmethod
    def summary(state, wall: float, world_size: int, sync, checksum: str) -> dict:
        """The run's summary (keys :data:`SUMMARY_KEYS`) from the final :class:`TrainState`."""
        last = state.history[-1] if state.history else {}
        summary = {
            "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "epochs": state.epoch + (0 if not state.history or last.get("epoch_complete", True) else 1),
            "steps": state.step, "world_size": world_size, "wall_s": wall,
            "samples_per_s": last.get("samples_per_s"),
            "compression": sync.compression, "compression_ratio": sync.compression_ratio(),
            "param_checksum": checksum,
        }
        assert tuple(summary) == SUMMARY_KEYS
        return summary

    def finish(self, summary: dict, config: dict, state) -> None:
        """Write summary.json, config.json and the plots to ``out_dir`` (rank 0)."""
        if not (self.out_dir and self.log.is_main):
            return
        # Whole or not at all (a full disk used to leave a 0-byte summary.json); OutputError names the file.
        write_atomic(os.path.join(self.out_dir, "summary.json"), json.dumps(jsonable(summary), indent=2))
        if config:
            write_atomic(os.path.join(self.out_dir, "config.json"), json.dumps(jsonable(config), indent=2))
        try:  # the plots only draw what metrics.jsonl holds: a warning if they cannot be written
            plot_learning_curves(state.history, os.path.join(self.out_dir, "learning_curves.png"))
            if state.grad_flow:
                plot_grad_flow(state.grad_flow, os.path.join(self.out_dir, "grad_flow.png"))
        except OSError as exc:
            self.log.warning(f"{self.out_dir}: plots not written: {exc.strerror or exc}")


def previous_results(out_dir: str | None) -> list[str]:
    """The names of :data:`RESULT_FILES` that ``out_dir`` already holds (empty when it does not exist)."""
    if not out_dir or not os.path.isdir(out_dir):
        return []
    return [name for name in RESULT_FILES if os.path.exists(os.path.join(out_dir, name))]


def check_out_dir(out_dir: str | None, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a previous run's results (ConfigError naming the folder, the files and
    the ways out); ``resume`` continues them, ``overwrite`` replaces them, and the two contradict each other."""
    if resume and overwrite:
        raise ConfigError("--overwrite replaces a previous run's results and --resume continues them: pass one, "
                          "not both")
    found = [] if resume or overwrite else previous_results(out_dir)
    if found:
        raise ConfigError(f"--out {out_dir} already holds a previous run's results ({', '.join(found)}): pass "
                          "--overwrite to replace them, --resume to continue that run, or choose another --out")


def show_progress(flag: bool | None, is_main: bool, on_terminal: bool) -> bool:
    """Whether this process draws the progress bar: only rank 0 does; an explicit ``--progress`` /
    ``--no-progress`` (``flag``) wins; otherwise when its output reaches a terminal (``on_terminal``)."""
    if not is_main:
        return False
    return on_terminal if flag is None else bool(flag)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _launcher_on_terminal() -> bool:
    """Whether the MPI launcher that started this process (the nearest mpiexec/mpirun/srun among its
    ancestors, read from /proc) has its stderr on a terminal. MPICH's Hydra hands the ranks pipes and
    writes what they print to its own stderr as it comes, so a bar drawn there reaches the user's terminal."""
    pid = os.getppid()
    for _ in range(8):  # rank -> proxy/daemon -> launcher: a few levels at most
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            if name in _LAUNCHERS:
                return os.readlink(f"/proc/{pid}/fd/2").startswith(("/dev/pts/", "/dev/tty"))
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the (name) is the parent's pid
        except (OSError, ValueError, IndexError):
            return False  # no /proc (not Linux), or the process is gone or not ours to read
        if pid <= 1:
            return False
    return False


def progress_stream():
    """The stream on which a progress bar reaches a terminal, or None: stderr or stdout when one of them is a
    terminal (Open MPI gives its ranks a pseudo-terminal for stdout when mpirun runs on one); under an MPI
    launcher that pipes the ranks' output (MPICH's Hydra), stderr when the launcher's own stderr is a
    terminal, since it forwards what the ranks write as they write it."""
    for stream in (sys.stderr, sys.stdout):
        if _isatty(stream):
            return stream
    if launched_by_mpi() and _launcher_on_terminal():
        return sys.stderr
    return None
