"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import platform
from pathlib import Path


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
