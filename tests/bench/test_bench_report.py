"""Where benchmarks write: a fresh folder unless told otherwise, never over the committed results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dtrain.bench.report import committed_results, default_out

CHECKOUT = Path(__file__).resolve().parents[2]
COMMITTED = CHECKOUT / "benchmarks" / "results"


def test_default_out_is_a_fresh_folder_outside_the_committed_results():
    first, second = default_out(), default_out()
    assert first != second
    for path in (first, second):
        assert path.parent == Path("bench-results")
        assert not path.exists()
        assert COMMITTED not in path.resolve().parents and path.resolve() != COMMITTED


def test_default_out_with_a_subfolder_is_fresh_too():
    first, second = default_out("scaling"), default_out("scaling")
    assert first.name == second.name == "scaling" and first.parent != second.parent
    assert first.parent.parent == Path("bench-results")


def test_committed_results_are_found_for_reading():
    assert committed_results() == COMMITTED
    assert committed_results("scaling") == COMMITTED / "scaling"
    assert committed_results("no-such-folder") is None


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_a_benchmark_without_out_writes_a_new_folder_and_says_where(tmp_path):
    before = _snapshot(COMMITTED)
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "dtrain", "bench", "simulate", "--max-workers", "64"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (stamp,) = (tmp_path / "bench-results").iterdir()
    assert (stamp / "costmodel" / "costmodel.md").is_file() and (stamp / "costmodel" / "prediction.csv").is_file()
    assert f"results written to {stamp} (pass --out DIR to choose the folder)" in res.stdout
    assert _snapshot(COMMITTED) == before  # the committed tables were read, not rewritten


def test_an_explicit_out_is_used_as_given_and_not_announced(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "mine"
    res = subprocess.run([sys.executable, "-m", "dtrain", "bench", "simulate", "--max-workers", "64", "--out",
                          str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "costmodel.md").is_file()
    assert not (tmp_path / "bench-results").exists() and "results written to" not in res.stdout
