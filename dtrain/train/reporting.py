"""What a run reports: one log line and one ``metrics.jsonl`` record per evaluation, a progress bar, and at
the end ``summary.json``, ``config.json`` and the PNG plots (rank 0 writes; every rank computes the same).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from .plots import plot_grad_flow, plot_learning_curves

__all__ = ["SUMMARY_KEYS", "ReportOptions", "Reporter", "jsonable"]

SUMMARY_KEYS = ("test_accuracy", "test_loss", "epochs", "steps", "world_size", "wall_s", "samples_per_s",
                "compression", "compression_ratio", "param_checksum")


@dataclass
class ReportOptions:
    """What the Trainer reports and where.

    Attributes:
        out_dir: write metrics.jsonl, summary.json, config.json and PNG plots there (rank 0).
        progress: show a tqdm progress bar on rank 0 (None: only when stderr is a terminal).
        monitor: record gradient flow, weight and activation statistics once per epoch.
    """

    out_dir: str | None = None
    progress: bool | None = None
    monitor: bool = True


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

    @property
    def out_dir(self) -> str | None:
        return self.options.out_dir

    def open(self, resumed: bool) -> None:
        """Start ``metrics.jsonl`` (appended to when the run resumes a checkpoint)."""
        if self.out_dir and self.log.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self._metrics_file = open(os.path.join(self.out_dir, "metrics.jsonl"), "a" if resumed else "w")

    def close(self) -> None:
        """Close ``metrics.jsonl``."""
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def progress_bar(self, total: int, initial: int, desc: str):
        """A tqdm bar on rank 0 when asked for (and tqdm is installed), else None."""
        show = self.options.progress if self.options.progress is not None else sys.stderr.isatty()
        if not show or not self.log.is_main:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

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
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(jsonable(r)) + "\n")
            self._metrics_file.flush()

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
        with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
            json.dump(jsonable(summary), f, indent=2)
        if config:
            with open(os.path.join(self.out_dir, "config.json"), "w") as f:
                json.dump(jsonable(config), f, indent=2)
        plot_learning_curves(state.history, os.path.join(self.out_dir, "learning_curves.png"))
        if state.grad_flow:
            plot_grad_flow(state.grad_flow, os.path.join(self.out_dir, "grad_flow.png"))
