"""Fault injection for dtrain jobs under a real mpiexec: start a job, kill or signal one rank from
outside, and collect what every rank said. Used by tests/distributed/test_faults.py and by
tests/stress/kill_trials.py (the 20-trial version).

Each rank runs tests/distributed/ranks/fault_driver.py, which records its PID and, with ``split_output``, writes
its stdout/stderr to per-rank files (as cluster jobs do), so the ranks' last words survive the
launcher tearing the job down.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DRIVER = Path(__file__).parent / "ranks" / "fault_driver.py"


def _load_conftest():
    # tests/ is not a package: load the mpiexec helpers of tests/distributed/conftest.py by path (the same
    # file the run_mpi fixture comes from), so the stress scripts can use them outside pytest too.
    spec = importlib.util.spec_from_file_location("dtrain_dist_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest = _load_conftest()
find_mpiexec, mpi_env, _launcher_flags = _conftest.find_mpiexec, _conftest.mpi_env, _conftest._launcher_flags


def is_mpich(mpiexec: str) -> bool:
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "HYDRA" in (out.stdout + out.stderr).upper()


@dataclass
class Job:
    """A launched job: the mpiexec process and its folder (pid.R, rank.R.out/err)."""

    proc: subprocess.Popen
    folder: Path
    nprocs: int
    started: float = field(default_factory=time.monotonic)

    def pid(self, rank: int) -> int | None:
        try:
            return int((self.folder / f"pid.{rank}").read_text())
        except (OSError, ValueError):
            return None

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the job ended (exit {self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.output()}")

    def rank_text(self, rank: int, stream: str = "err") -> str:
        try:
            return (self.folder / f"rank.{rank}.{stream}").read_text(errors="replace")
        except OSError:
            return ""

    def output(self) -> str:
        parts = [f"--- mpiexec output ---\n{getattr(self, 'launcher_output', '')}"]
        for r in range(self.nprocs):
            for stream in ("out", "err"):
                text = self.rank_text(r, stream)
                if text:
                    parts.append(f"--- rank {r} std{stream} ---\n{text[-3000:]}")
        return "\n".join(parts)

    def finish(self, timeout: float) -> tuple[int | None, float]:
        """Wait up to ``timeout`` s; return (exit status or None if it had to be killed, seconds waited)."""
        t0 = time.monotonic()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
            self.launcher_output = out
            return self.proc.returncode, time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.proc.communicate()
            self.launcher_output = out
            return None, time.monotonic() - t0

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def launch(folder: Path, nprocs: int, train_args: list[str], *, split_output: bool = True,
           unseen_death: bool = False) -> Job:
    """Start ``mpiexec -n nprocs fault_driver.py folder -- train_args`` in its own process group.

    ``unseen_death``: the launcher does not learn of a rank's death (see fault_driver.py)."""
    mpiexec = find_mpiexec()
    flags = list(_launcher_flags(mpiexec))
    folder.mkdir(parents=True, exist_ok=True)
    options = (["--split-output"] if split_output else []) + (["--unseen-death"] if unseen_death else [])
    driver = [sys.executable, str(DRIVER), str(folder), *options, "--"]
    cmd = [mpiexec, *flags, "-n", str(nprocs), *driver, *train_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mpi_env(),
                            start_new_session=True)
    return Job(proc, folder, nprocs)


@dataclass
class KillTrial:
    seed: int
    nprocs: int
    victim: int
    delay: float
    status: int | None = None
    seconds: float = 0.0
    report: str = ""
    ok: bool = False
    problem: str = ""

    def row(self) -> str:
        report = self.report.split("] ", 1)[-1].split("; aborting the job")[0]  # without rank prefix and suffix
        return (f"| {self.seed} | {self.nprocs} | {self.victim} | {self.delay:.2f} | {self.status} | "
                f"{self.seconds:.2f} | {'yes' if self.ok else 'NO: ' + self.problem.splitlines()[0]} | {report} |")


TRIAL_TIMEOUT = 3.0  # --timeout of the trial jobs (seconds)


def kill_trial(folder: Path, seed: int, timeout: float = TRIAL_TIMEOUT, extra: tuple[str, ...] = ()) -> KillTrial:
    """Train a tiny MLP on 3 or 4 ranks, SIGKILL one rank at a random moment of training, and check that
    the job ends non-zero within timeout + 10 s with a report naming the missing rank and the collective.

    The launcher is not told of the death (fault_driver.py --unseen-death), as when a node vanishes:
    then dtrain's deadline is what ends the job. (With MPICH's default clean-up the launcher ends the
    job itself within a second; test_faults.py checks that path too.)
    """
    rng = random.Random(seed)
    nprocs = rng.choice((3, 4))
    victim = rng.randrange(nprocs)
    delay = rng.uniform(0.0, 1.5)
    trial = KillTrial(seed, nprocs, victim, delay)
    args = ["--epochs", "100000", "--hidden", "16", "--batch-size", "64", "--no-monitor", "--check-every", "25",
            "--timeout", str(timeout), "--seed", str(seed), *extra]
    job = launch(folder, nprocs, args, unseen_death=True)
    try:
        # Training has started when rank 0 has printed its first epoch line.
        job.wait_for(lambda: "epoch   1" in job.rank_text(0, "out") and all(job.pid(r) for r in range(nprocs)),
                     60, "the first epoch")
        time.sleep(delay)
        os.kill(job.pid(victim), signal.SIGKILL)
        trial.status, trial.seconds = job.finish(timeout + 10)
    finally:
        job.kill()
    errors = [line for r in range(nprocs) if r != victim for line in job.rank_text(r).splitlines()
              if "dtrain: error:" in line and "timed out" in line]
    trial.report = errors[0] if errors else ""
    if trial.status is None:
        trial.problem = f"still running {timeout + 10:g} s after the kill (hang)"
    elif trial.status == 0:
        trial.problem = "exit status 0"
    elif not errors:
        trial.problem = "no rank reported the timed-out collective"
    elif not any(re.search(rf"missing ranks? (\d+, )*{victim}\b", e) for e in errors):
        trial.problem = f"the report does not name rank {victim} as missing"
    elif not any("collective '" in e for e in errors):
        trial.problem = "the report does not name the collective"
    else:
        trial.ok = True
    if not trial.ok:
        trial.problem += "\n" + job.output()
    return trial


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())
