"""What every benchmark report shares: where results go, the command that made them, CSV and Markdown cells."""

from __future__ import annotations

import csv
import shlex
import sys
from datetime import datetime
from pathlib import Path

__all__ = ["OUT_HELP", "command_line", "command_section", "committed_results", "default_out", "fmt", "ranks_label",
           "verdict", "write_csv", "write_markdown", "written_outputs"]


OUT_HELP = ("output folder (default: a new bench-results/DATE-TIME/ under the current folder, printed at the "
            "end; pass --out benchmarks/results in a checkout to regenerate the committed results)")
"""The help text of every benchmark's ``--out``."""

_issued: list[Path] = []  # default folders handed out by this process, reported by written_outputs()


def default_out(sub: str = "") -> Path:
    """A fresh folder for results no one asked to put elsewhere: ``bench-results/YYYYmmdd-HHMMSS-micro[/sub]``
    under the current folder, new on every call and not yet on disk (the benchmark creates it when it
    writes). Never the checkout's committed ``benchmarks/results``: those are regenerated only on request
    (``--out benchmarks/results``), so a benchmark run from a checkout cannot overwrite them."""
    while True:
        base = Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        if base not in _issued and not base.exists():
            break
    _issued.append(base)
    return base / sub if sub else base


def written_outputs() -> list[Path]:
    """The folders from :func:`default_out` that this process really wrote results into (a rank that only
    measured wrote none)."""
    return [p for p in _issued if p.is_dir()]


def committed_results(sub: str = "") -> Path | None:
    """The checkout's committed ``benchmarks/results[/sub]`` to read from (e.g. the scaling measurements
    ``dtrain bench simulate`` calibrates on), or None when dtrain is not run from a checkout."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / sub
    return path if path.is_dir() else None


def command_line() -> str:
    """This process's command line as a reader would retype it: ``dtrain bench ...`` when started by the
    ``dtrain`` console script, else ``PYTHON benchmarks/NAME.py ...``."""
    argv = list(sys.orig_argv[1:])
    if argv and Path(argv[0]).name == "dtrain":
        return shlex.join(["dtrain", *argv[1:]])
    if argv[:2] == ["-m", "dtrain"]:
        return shlex.join(["dtrain", *argv[2:]])
    return shlex.join([Path(sys.executable).as_posix(), *sys.argv])


def command_section(command: str) -> list[str]:
    """Markdown lines recording the exact command that produced a result file."""
    return ["## Command", "", "```", command, "```", ""]


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or an em dash for a value not measured (None or NaN)."""
    return "—" if value is None or value != value else format(value, spec)


def ranks_label(n: int) -> str:
    """'1 rank', '2 ranks'."""
    return f"{n} rank{'s' if n > 1 else ''}"


def verdict(value, goal: float) -> str:
    """'met' / 'missed' for a value against a goal it should reach, 'not measured' without a value."""
    if value is None or value != value:
        return "not measured"
    return "met" if value >= goal else "missed"


def write_csv(path: Path, fields, rows) -> None:
    """Write ``rows`` (dicts) under the header ``fields`` (other keys ignored); floats to 6 significant
    digits, None as an empty cell."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in row.items()})


def write_markdown(out: Path, name: str, lines: list[str]) -> Path:
    """Write ``lines`` as ``out/name`` (creating ``out``), echo them to stdout, and return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
