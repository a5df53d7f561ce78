"""Shared by the elastic tests: a supervised job run in the background and a fault injector that waits for
rank 0's progress file to reach a step, then signals one rank of one attempt (by the PID its record names)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dtrain.train.elastic import read_progress

REPO = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """The supervisor's environment: the checkout importable, one BLAS thread per rank."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def attempt_dir(out: Path, attempt: int) -> Path:
    return out / "elastic" / f"attempt-{attempt}"


def start(argv: list[str]) -> subprocess.Popen:
    """``python -m dtrain ARGV`` in the background, output captured."""
    return subprocess.Popen([sys.executable, "-m", "dtrain", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())


def wait_for_step(folder: Path, step: int, timeout: float = 180.0) -> int:
    """Block until rank 0 of the attempt in ``folder`` reports ``step`` steps done; the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = read_progress(str(folder))
        if progress is not None and progress["step"] >= step:
            return progress["step"]
        time.sleep(0.02)
    raise AssertionError(f"{folder}: step {step} not reached within {timeout} s")


def signal_rank(folder: Path, rank: int, signum: int) -> dict:
    """Send ``signum`` to rank ``rank`` of the attempt in ``folder``; its record."""
    record = json.loads((folder / f"rank-{rank}.json").read_text())
    os.kill(int(record["pid"]), signum)
    return record


class Injector(threading.Thread):
    """In the background: for each attempt in ``attempts``, wait for ``step`` and send ``signum`` to ``rank``."""

    def __init__(self, out: Path, attempts, step: int, rank: int, signum: int = signal.SIGKILL):
        super().__init__(daemon=True)
        self.out, self.attempts, self.step, self.rank, self.signum = out, list(attempts), step, rank, signum
        self.hits: list[tuple[int, int]] = []  # (attempt, step at the signal)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for attempt in self.attempts:
                folder = attempt_dir(self.out, attempt)
                seen = wait_for_step(folder, self.step)
                signal_rank(folder, self.rank, self.signum)
                self.hits.append((attempt, seen))
        except BaseException as exc:  # reported by the test
            self.error = exc


_KILLED = re.compile(r"^rank (\d+) \(PID (\d+) on \S+\) killed by SIGKILL$")


def assert_names_a_killed_rank(cause: str, ranks: list[int], folder: Path) -> int:
    """``cause`` names a rank killed by SIGKILL by the PID that rank recorded, and ``ranks`` is that rank.

    Not necessarily the rank the test killed: MPICH's Hydra reports the first bad exit it collects, and
    when the others are inside a collective that can be a rank its clean-up killed a moment later (3 of 8
    trials with a bare mpi4py program on this 2-core machine), so this checks the supervisor's reading of
    the launcher's report."""
    m = _KILLED.match(cause)
    assert m, f"not 'rank R (PID P on HOST) killed by SIGKILL': {cause!r}"
    rank, pid = int(m.group(1)), int(m.group(2))
    record = json.loads((folder / f"rank-{rank}.json").read_text())
    assert record["pid"] == pid, (cause, record)
    assert ranks == [rank], (cause, ranks)
    return rank


def finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the supervised job did not end within {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, out, err


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def events(out: Path) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in recs if "event" in r]
