"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: dtrain importable when run in place
from dtrain.bench.machine import busy_cpu_s, own_cpu_s
from dtrain.launch import local_launch_flags as launcher_flags
from dtrain.launch import local_mpiexec as find_mpiexec

__all__ = ["LAUNCHER_VARS", "CycledStep", "blas_info", "busy_cpu_s", "command_section", "cpu_model", "find_mpiexec",
           "fmt_load", "launcher_flags", "own_cpu_s", "under_mpiexec"]

LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_load(load) -> str:
    """A load-average triple as '0.88/0.67/0.32'."""
    return "/".join(f"{x:.2f}" for x in load)


def command_section(command: str) -> list[str]:
    """Markdown lines recording the exact command that produced a result file."""
    return ["## Command", "", "```", command, "```", ""]


def under_mpiexec() -> bool:
    """Whether this process was started by an MPI launcher."""
    return any(v in os.environ for v in LAUNCHER_VARS)


def blas_info() -> str:
    """NumPy's BLAS as 'name version'."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown"


class CycledStep:
    """One training step on pre-made batches, cycled by step index: forward through ``self.net``,
    ``self.loss_fn(out, y)``, zero_grad, backward, optimizer step. dtrain and PyTorch peers both use it
    (the two APIs spell the step the same way): subclasses set ``net``, ``loss_fn``, ``opt``, ``batches``."""

    net = loss_fn = opt = batches = None

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        loss = self.loss_fn(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss

    def loss_value(self, i: int) -> float:
        return float(self.step(i).item())
