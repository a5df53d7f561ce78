"""What every benchmark report shares: where results go, the command that made them, CSV and Markdown cells."""

from __future__ import annotations

import csv
import shlex
import sys
from pathlib import Path

__all__ = ["command_line", "command_section", "default_out", "fmt", "ranks_label", "verdict", "write_csv",
           "write_markdown"]


def default_out(sub: str = "") -> Path:
    """Where results go by default: the checkout's ``benchmarks/results[/sub]`` when dtrain runs from a
    checkout (so the committed tables are regenerated in place), else ``./benchmark-results[/sub]``."""
    checkout = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    base = checkout if checkout.is_dir() else Path("benchmark-results")
    return base / sub if sub else base


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
