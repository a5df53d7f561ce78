"""Kill one rank of a 3- or 4-rank job at a random moment, N times (default 20), and check every time that
the job ends non-zero within --timeout + 10 s with a report naming the missing rank and the collective.

    OMP_NUM_THREADS=1 python tests/stress/kill_trials.py [--trials 20] [--seed S] [--timeout 3]

Each trial is tests/distributed/faults.py's kill_trial (test_faults.py runs 5 of them in the suite): a tiny MLP
trains with --timeout T; the victim is SIGKILLed while the launcher is not told (as when a node
vanishes), so the ranks' collective deadline must end the job. Prints a markdown table and exits 1
if any trial failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))  # faults.py, conftest.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: dtrain

from faults import find_mpiexec, kill_trial


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(3), "little"))
    p.add_argument("--timeout", type=float, default=3.0, help="the jobs' --timeout (seconds)")
    args = p.parse_args()
    if find_mpiexec() is None:
        print("no mpiexec found (pip install mpich)", file=sys.stderr)
        return 2
    print(f"kill trials: {args.trials} trials, seed {args.seed}, --timeout {args.timeout:g} s, "
          f"{os.cpu_count()} cores\n")
    print("| seed | ranks | killed rank | delay s | exit status | s from kill to end | ok | report (first error) |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    failures, t0 = [], time.monotonic()
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            trial = kill_trial(Path(tmp), args.seed + i, timeout=args.timeout)
        print(trial.row(), flush=True)
        if not trial.ok or trial.seconds > args.timeout + 10:
            failures.append(trial)
    print(f"\n{args.trials - len(failures)} of {args.trials} trials ended the job with a report within "
          f"--timeout + 10 s ({time.monotonic() - t0:.0f} s in all)")
    for t in failures:
        print(f"\nFAILED trial seed {t.seed}: {t.problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
