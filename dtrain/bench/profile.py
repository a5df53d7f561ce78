"""The cProfile summary two benchmarks print: self time grouped into areas, and the top functions."""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["profile_calls", "profile_tables", "short_name"]


def short_name(filename: str, line: int, name: str) -> str:
    """``autograd/engine.py:12(backward)`` for dtrain code, ``file.py:12(f)`` elsewhere, the bare name for C
    functions."""
    if filename == "~":
        return name
    short = filename.replace("\\", "/").split("/dtrain/", 1)[1] if "/dtrain/" in filename else Path(filename).name
    return f"{short}:{line}({name})"


def profile_calls(fn: Callable[[int], object], steps: int, area: Callable[[str, str], str], top: int = 10) -> dict:
    """Run ``fn(i)`` for ``i < steps`` under cProfile (this thread only) and summarise the self time.

    ``area(filename, funcname)`` names where a function's self time belongs. Returns ``steps``,
    ``ms_per_step`` (wall, under the profiler), ``self_ms_per_step``, ``areas`` (``[share, area]``, largest
    first) and ``funcs`` (the ``top`` functions by self time: ``[share, calls per step, where]``).
    """
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for i in range(steps):
        fn(i)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1e-12
    areas: dict[str, float] = {}
    funcs = []
    for (filename, line, name), (_cc, ncalls, tt, _ct, _callers) in st.stats.items():
        label = area(filename, name)
        areas[label] = areas.get(label, 0.0) + tt
        funcs.append((tt, ncalls / steps, short_name(filename, line, name)))
    funcs.sort(reverse=True)
    return {"steps": steps, "ms_per_step": wall / steps * 1e3, "self_ms_per_step": total / steps * 1e3,
            "areas": sorted(([v / total, k] for k, v in areas.items()), reverse=True),
            "funcs": [[tt / total, calls, where] for tt, calls, where in funcs[:top]]}


def profile_tables(p: dict, area_header: str = "share of main-thread time") -> list[str]:
    """Markdown: the areas table, then the top functions by self time."""
    lines = [f"| where | {area_header} |", "|---|---:|"]
    lines += [f"| {name} | {s * 100:.1f}% |" for s, name in p["areas"]]
    lines += ["", "Top functions by self time:", "", "| function | calls/step | share |", "|---|---:|---:|"]
    lines += [f"| `{where}` | {calls:.1f} | {s * 100:.1f}% |" for s, calls, where in p["funcs"]]
    return lines
