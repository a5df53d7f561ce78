"""Stress: many more ranks than cores (default 8 ranks) for many optimizer steps (default 1000).

    python tests/stress/stress_oversubscribed.py [--ranks 8] [--steps 1000] [--timeout 900]

Launches ``mpiexec -n RANKS`` of this same file in worker mode; each rank builds a tiny job through
dtrain's Python API (config.resolve_config -> job.run: an MLP with one hidden layer of 16 on digits,
global batch 64) and prints ``rank R checksum C steps S``. Passes (exit 0) when mpiexec exits 0 within
the time limit, every rank printed once, every checksum is the same and every rank took exactly STEPS
steps; otherwise prints what went wrong and exits 1. A hang past --timeout kills the whole process
group. Not collected by pytest (no test_ prefix): run it by hand or from a nightly job.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_LINE = re.compile(r"^rank (\d+) checksum (\S+) steps (\d+)$", re.MULTILINE)
DIGITS_TRAIN_SAMPLES = 1437


def _load(path: Path, name: str):
    """A helper module of the test suite by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(steps: int) -> None:
    """One rank: train the tiny job for ``steps`` optimizer steps and print its checksum."""
    import dtrain.distributed as dist
    from dtrain.train.config import resolve_config
    from dtrain.train.job import model_defaults, run

    steps_per_epoch = -(-DIGITS_TRAIN_SAMPLES // 64)
    flags = {"model": "mlp", "dataset": "digits", "hidden": "16", "batch_size": 64, "max_steps": steps,
             "epochs": -(-steps // steps_per_epoch) + 1, "monitor": False, "progress": False,
             "check_every": 50, "timeout": 120.0}
    summary = run(resolve_config(flags, None, model_defaults))
    print(f"rank {dist.get_rank()} checksum {summary['param_checksum']} steps {summary['steps']}", flush=True)


def launch(ranks: int, steps: int, timeout: float) -> int:
    launch_helpers = _load(HERE.parent / "distributed" / "conftest.py", "_dtrain_tests_mpi_launch")
    mpiexec = launch_helpers.find_mpiexec()
    if mpiexec is None:
        print("stress: no mpiexec found (pip install mpich, or put an MPI launcher on PATH)", file=sys.stderr)
        return 1
    cmd = [mpiexec, *launch_helpers._launcher_flags(mpiexec), "-n", str(ranks), sys.executable, str(Path(__file__)),
           "--worker", "--steps", str(steps)]
    print(f"stress: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launch_helpers.mpi_env(), cwd=str(HERE.parents[1]), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        hung = True
    wall = time.perf_counter() - start

    results = {}
    problems = []
    for rank, checksum, rank_steps in RESULT_LINE.findall(out):
        if int(rank) in results:
            problems.append(f"rank {rank} printed its result twice")
        results[int(rank)] = (checksum, int(rank_steps))
    if hung:
        problems.append(f"hung: no exit within {timeout:.0f} s (process group killed)")
    elif proc.returncode != 0:
        problems.append(f"mpiexec exit status {proc.returncode}")
    missing = sorted(set(range(ranks)) - set(results))
    if missing:
        problems.append(f"no result from rank(s) {missing}")
    checksums = {c for c, _ in results.values()}
    if len(checksums) > 1:
        problems.append("checksums differ: " + "; ".join(f"rank {r}: {c}" for r, (c, _) in sorted(results.items())))
    wrong_steps = {r: s for r, (_, s) in results.items() if s != steps}
    if wrong_steps:
        problems.append(f"expected {steps} steps, got {wrong_steps}")

    from dtrain.env import usable_cores

    cores = usable_cores()
    for r, (c, s) in sorted(results.items()):
        print(f"  rank {r} checksum {c} steps {s}")
    print(f"stress: {ranks} ranks on {cores} cores (oversubscription {ranks / cores:.1f}x), {steps} steps, "
          f"wall {wall:.1f} s (incl. start-up), {steps / wall:.1f} steps/s, "
          f"{steps * 64 / wall:.0f} samples/s")
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    if warnings:  # e.g. stall warnings: not failures, but worth seeing
        print(f"stress: {len(warnings)} warning line(s) on stderr, first: {warnings[0]}")
    if problems:
        tail = "\n".join(err.splitlines()[-40:])
        print("stress: FAILED\n  " + "\n  ".join(problems) + f"\n--- stderr (last 40 lines) ---\n{tail}",
              file=sys.stderr)
        return 1
    print(f"stress: OK (every rank took {steps} steps and ends with checksum {checksums.pop()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=8, help="MPI ranks to launch (default 8)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per rank (default 1000)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before the job counts as hung (default 900)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        harness = _load(HERE.parent / "distributed" / "ranks" / "mpi_harness.py", "_dtrain_tests_mpi_harness")
        harness.run_or_abort(lambda: worker(args.steps))  # one failing rank aborts the job, never a hang
        return 0
    return launch(args.ranks, args.steps, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
