"""Elastic runs: ``dtrain launch --max-restarts N`` (and ``dtrain cluster run --max-restarts N``) supervise
the job and relaunch it from its last good checkpoint when a rank or a node fails.

MPI cannot shrink a running communicator, so recovery is a relaunch. The supervisor:

1. asks the front end how many ranks it can start now (``dtrain launch``: ``-n``, or the hosts and slots
   ``--hosts-cmd`` prints; the virtual cluster: its nodes whose link is up), at most the ``-n`` asked for
   and at least ``--min-ranks``;
2. runs the job (mpiexec in its own session, stderr passed through and read), every rank told where to
   write its records (``DTRAIN_ELASTIC_DIR``, see :mod:`dtrain.train.elastic`);
3. on success exits 0; on exit status 2 (a configuration or data error: it would fail again) exits 2 at
   once; on SIGINT/SIGTERM to the supervisor passes one SIGTERM to the job (every rank stops after the
   current step, rank 0 writes a checkpoint) and exits with the job's status, without a restart;
4. on any other failure (a rank killed, a deadline fired, a node lost) works out the cause and the ranks
   from the ranks' records and the launcher's report, and relaunches with ``--resume last-good`` (from
   scratch when no checkpoint was written yet), at the new world size: ``--batch-size`` is the global
   batch, so each rank's share changes and the learning dynamics do not. Past ``--max-restarts``
   restarts it exits with the last failure's status and one line per attempt.

The run needs checkpoints: ``--checkpoint-dir`` (default ``OUT/checkpoints`` with ``--out OUT``) and a
periodic ``--checkpoint-every`` (default ``60s``), so a restart redoes a bounded amount of work.
Per-rank gradient-compression memories are dropped when the world size changes (as with any resume).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..train.elastic import DIR_VARIABLE, RESTART_VARIABLE, read_progress

__all__ = ["DEFAULT_CHECKPOINT_EVERY", "Attempt", "ElasticError", "Launch", "checkpoint_dir", "diagnose",
           "supervise", "train_args_for"]

DEFAULT_CHECKPOINT_EVERY = "60s"
RESTART_PAUSE_S = 1.0  # between a failure and the relaunch (the launcher's cleanup, ports)
_TAIL_LINES = 400


class ElasticError(ValueError):
    """Bad input to the supervisor (exit status 2, no job started)."""


@dataclass
class Launch:
    """What a front end starts for one attempt: the command, its environment, and what to do after it."""

    cmd: list[str]
    env: dict[str, str]
    cleanup: Callable[[], None] = lambda: None
    where: str = ""  # e.g. "on hosts a:2,b:1", for messages


@dataclass
class Attempt:
    """One launch of the job and how it ended."""

    number: int  # 1, 2, ...
    ranks: int
    where: str
    resumed: str  # "from the start", "from the last good checkpoint"
    started: float = field(default_factory=time.time)
    status: int | None = None
    ended: float | None = None
    cause: str = ""
    failed_ranks: list[int] = field(default_factory=list)
    last_step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None

    @property
    def steps_lost(self) -> int | None:
        if self.last_step is None:
            return None
        return max(0, self.last_step - max(self.checkpoint_step or 0, 0))

    def line(self) -> str:
        """``attempt 2 (3 ranks ...): exit status 9: rank 1 killed by SIGKILL; ranks 1; 14 steps lost``."""
        head = f"attempt {self.number} ({self.ranks} rank{'s' if self.ranks != 1 else ''}{self.where}, {self.resumed})"
        if self.status == 0:
            return f"{head}: finished"
        parts = [f"exit status {self.status}", self.cause or "cause unknown"]
        parts.append(f"ranks {', '.join(map(str, self.failed_ranks))}" if self.failed_ranks else "ranks unknown")
        lost = self.steps_lost
        parts.append(f"{lost} step{'s' if lost != 1 else ''} lost (step {self.last_step} reached, last checkpoint "
                     f"at step {max(self.checkpoint_step or 0, 0)})" if lost is not None else "steps lost unknown")
        return f"{head}: " + "; ".join(parts)


# -- the train arguments ----------------------------------------------------------------------------------

def _without_resume(args: Sequence[str]) -> list[str]:
    """``args`` without ``--resume [VALUE]`` and ``--overwrite`` (the supervisor chooses them per attempt)."""
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in ("--overwrite",) or a.startswith("--resume="):
            continue
        if a == "--resume":
            skip = i + 1 < len(args) and not args[i + 1].startswith("-")
            continue
        out.append(a)
    return out


def train_args_for(args: Sequence[str], cfg: Mapping, *, restart: bool, have_checkpoint: bool) -> list[str]:
    """The ``dtrain train`` arguments of an attempt: the user's, with the checkpoint folder and a periodic
    schedule when they were not given, and on a restart ``--resume last-good`` (or, with no checkpoint yet,
    ``--overwrite`` of the failed attempt's partial results)."""
    args = list(args)
    if not cfg.get("checkpoint_dir"):
        args += ["--checkpoint-dir", checkpoint_dir(cfg)]
    if str(cfg.get("checkpoint_every", "0")).strip() == "0":
        args += ["--checkpoint-every", DEFAULT_CHECKPOINT_EVERY]
    if not restart:
        return args
    args = _without_resume(args)
    if have_checkpoint:
        return args + ["--resume", "last-good"]
    return args + (["--overwrite"] if cfg.get("out") else [])


def checkpoint_dir(cfg: Mapping) -> str:
    """Where the run's checkpoints go: ``--checkpoint-dir``, else ``OUT/checkpoints``; ElasticError without either."""
    if cfg.get("checkpoint_dir"):
        return str(cfg["checkpoint_dir"])
    if cfg.get("out"):
        return os.path.join(str(cfg["out"]), "checkpoints")
    raise ElasticError("--max-restarts needs checkpoints to restart from: give dtrain train --out DIR or "
                       "--checkpoint-dir DIR (after --)")


def _have_checkpoint(folder: str) -> bool:
    from ..train.checkpoint import CheckpointError, CheckpointManager

    try:
        return CheckpointManager(folder).last_good()[0] is not None
    except (CheckpointError, OSError, ValueError):
        return False


# -- what went wrong --------------------------------------------------------------------------------------

_MPICH_PID = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_MPICH_SIGNAL = re.compile(r"\(signal (\d+)\)")
_OMPI_RANK = re.compile(r"process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+)")
_DTRAIN_ERROR = re.compile(r"dtrain( \w+)?: error: (.*)")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _majority(failures: list[dict]) -> tuple[list[int], list[str]]:
    """The missing ranks (and their hosts) most deadline reports agree on. A rank cut off from the others
    fires its own deadline too and names all of them: the larger group's view wins (on a tie, the one that
    names fewer ranks)."""
    groups: dict[tuple[int, ...], list[dict]] = {}
    for f in failures:
        groups.setdefault(tuple(sorted(int(x) for x in f.get("ranks", []))), []).append(f)
    ranks, reports = max(groups.items(), key=lambda kv: (len(kv[1]), -len(kv[0])))
    return list(ranks), sorted({h for f in reports for h in f.get("hosts", [])})


def diagnose(folder: str, status: int, stderr_tail: Sequence[str]) -> tuple[str, list[int]]:
    """(cause, ranks) of a failed attempt, from the ranks' records in ``folder`` and the launcher's report."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    by_pid = {}
    for name in names:
        if name.startswith("rank-") and name.endswith(".json"):
            rec = _read_json(os.path.join(folder, name))
            if rec and "pid" in rec:
                by_pid[int(rec["pid"])] = rec
    failures = [r for r in (_read_json(os.path.join(folder, n)) for n in sorted(names)
                            if n.startswith("failure-")) if r]
    if failures:  # a collective deadline fired: its report names the missing ranks
        ranks, hosts = _majority(failures)
        where = f" on host{'s' if len(hosts) > 1 else ''} {', '.join(hosts)}" if hosts else ""
        what = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}{where} missing or hung" \
            if ranks else "a collective stuck"
        return f"collective deadline: {what} at step {failures[0].get('step')}", ranks
    text = "\n".join(stderr_tail)
    m = _OMPI_RANK.search(text)
    if m:
        return (f"rank {m.group(1)} (PID {m.group(2)} on {m.group(3)}) killed by {_signal_name(int(m.group(4)))}",
                [int(m.group(1))])
    m = _MPICH_PID.search(text)
    if m:
        pid, host = int(m.group(1)), m.group(2)
        sig = _MPICH_SIGNAL.search(text)
        how = f"killed by {_signal_name(int(sig.group(1)))}" if sig else "ended abnormally"
        rec = by_pid.get(pid)
        if rec is not None:
            return f"rank {rec['rank']} (PID {pid} on {rec.get('host', host)}) {how}", [int(rec["rank"])]
        return f"a process (PID {pid} on {host}) {how}", []
    for line in stderr_tail:
        m = _DTRAIN_ERROR.search(line)
        if m:
            rank = re.match(r"\[rank (\d+)\]", m.group(2))
            return m.group(2)[:300], [int(rank.group(1))] if rank else []
    if status > 128:
        return f"the launcher ended by {_signal_name(status - 128)}", []
    return "the job failed", []


# -- running one attempt ----------------------------------------------------------------------------------

class _Job:
    """One attempt's process: in its own session (a terminal's Ctrl-C reaches the supervisor alone, which
    passes on exactly one SIGTERM); its stdout and stderr passed through line by line and their tail kept
    (MPICH reports a dead rank on stdout, Open MPI on stderr)."""

    def __init__(self, launch: Launch):
        sys.stdout.flush()
        self.proc = subprocess.Popen(launch.cmd, env=launch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", start_new_session=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, sink) -> None:
        for line in stream:
            sink.write(line)
            sink.flush()
            self.tail.append(line.rstrip("\n"))

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        status = self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5.0)
        return 128 - status if status < 0 else status


def _say(text: str) -> None:
    sys.stderr.write(f"dtrain elastic: {text}\n")
    sys.stderr.flush()


class _Supervisor:
    """The loop of :func:`supervise`, one attempt per :meth:`attempt` call."""

    def __init__(self, start, capacity, train_args, cfg, ranks: int, max_restarts: int, min_ranks: int):
        self.start, self.capacity, self.train_args, self.cfg = start, capacity, list(train_args), cfg
        self.ranks, self.max_restarts, self.min_ranks = ranks, max_restarts, min_ranks
        self.ck_dir = checkpoint_dir(cfg)
        self.root = os.path.join(str(cfg.get("out") or self.ck_dir), "elastic")
        self.attempts: list[Attempt] = []
        self.totals = {"restarts": 0, "steps_redone": 0, "seconds_lost": 0.0}
        self.stop: list[int] = []
        self.job: _Job | None = None

    def on_signal(self, signum, _frame) -> None:
        if self.stop:  # a second signal: stop now
            if self.job is not None:
                self.job.signal(signal.SIGKILL)
            return
        self.stop.append(signum)
        _say(f"received {_signal_name(signum)}: stopping the job after the current step (checkpoint, no restart)")
        if self.job is not None:
            self.job.signal(signal.SIGTERM)

    def run(self) -> int:
        shutil.rmtree(self.root, ignore_errors=True)  # a previous supervised run's records
        while True:
            status = self.attempt()
            if status is not None:
                return status
            time.sleep(RESTART_PAUSE_S)

    def _restart_env(self) -> str:
        last = self.attempts[-1]
        return json.dumps({
            "attempt": len(self.attempts), "cause": last.cause, "ranks": last.failed_ranks, "world_size": last.ranks,
            "started_at": last.started, "failed_at": last.ended,
            "last_step": last.last_step if last.last_step is not None else 0,
            "checkpoint_step": last.checkpoint_step, "checkpoint_time": last.checkpoint_time, "totals": self.totals})

    def attempt(self) -> int | None:
        """Run one attempt; the exit status when the supervisor is done, None to go again."""
        restart = bool(self.attempts)
        n = min(self.ranks, self.capacity())
        if n < self.min_ranks:
            _say(f"only {n} rank(s) can be started now (--min-ranks {self.min_ranks}): giving up")
            _report(self.attempts)
            return self.attempts[-1].status if self.attempts else 1
        have = restart and _have_checkpoint(self.ck_dir)
        args = train_args_for(self.train_args, self.cfg, restart=restart, have_checkpoint=have)
        folder = os.path.join(self.root, f"attempt-{len(self.attempts) + 1}")
        os.makedirs(folder, exist_ok=True)
        env = {DIR_VARIABLE: os.path.abspath(folder)}
        if restart:
            env[RESTART_VARIABLE] = self._restart_env()
        launch = self.start(n, args, env)
        a = Attempt(len(self.attempts) + 1, n, launch.where, "from the start" if not restart else
                    "from the last good checkpoint" if have else "from the start: no checkpoint yet")
        self.attempts.append(a)
        if restart:
            _say(f"attempt {a.number}: {n} rank(s){launch.where}, {a.resumed}: dtrain train {shlex.join(args)}")
        self.job = _Job(launch)
        try:
            a.status = self.job.wait()
        finally:
            tail, self.job = list(self.job.tail), None
            launch.cleanup()
        a.ended = time.time()
        return self._judge(a, folder, tail)

    def _judge(self, a: Attempt, folder: str, tail: list[str]) -> int | None:
        if a.status == 0:
            if len(self.attempts) > 1:
                _say(f"finished after {len(self.attempts) - 1} restart(s)")
            return 0
        progress = read_progress(folder)
        if progress is not None:
            a.last_step, a.checkpoint_step = progress["step"], progress["checkpoint_step"]
            a.checkpoint_time = progress["checkpoint_time"] or None
        if self.stop:
            _say(f"stopped by {_signal_name(self.stop[0])} (exit status {a.status}); no restart")
            return a.status
        if a.status == 2:
            _say("exit status 2: a configuration or data error, which a restart would repeat; no restart")
            return 2
        a.cause, a.failed_ranks = diagnose(folder, a.status, tail)
        self.totals = _restarts_so_far(self.cfg)
        if len(self.attempts) > self.max_restarts:
            _say(f"the job failed {len(self.attempts)} time(s), more than --max-restarts {self.max_restarts} allows:")
            _report(self.attempts)
            return a.status
        _say(f"{a.line()}; restarting ({len(self.attempts)} of {self.max_restarts})")
        return None


def supervise(start: Callable[[int, list[str], dict[str, str]], Launch], capacity: Callable[[], int],
              train_args: Sequence[str], cfg: Mapping, *, ranks: int, max_restarts: int, min_ranks: int = 1) -> int:
    """Run the job until it succeeds, fails for good, or is stopped; returns the exit status.

    Args:
        start: ``start(n, train_args, extra_env) -> Launch`` builds an attempt on ``n`` ranks.
        capacity: how many ranks can be started now (hosts alive x slots); called before every attempt.
        train_args: the user's ``dtrain train`` arguments; cfg: them resolved (``dtrain.train.config``).
        ranks: the ranks asked for (``-n``): no attempt uses more. max_restarts: relaunches allowed.
        min_ranks: fewer ranks alive than this ends the job instead of a relaunch.
    """
    if max_restarts < 0 or min_ranks < 1 or ranks < min_ranks:
        raise ElasticError(f"--max-restarts {max_restarts} / --min-ranks {min_ranks} / -n {ranks}: expected "
                           "max-restarts >= 0 and 1 <= min-ranks <= -n")
    sup = _Supervisor(start, capacity, train_args, cfg, ranks, max_restarts, min_ranks)
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, sup.on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(attempts: Sequence[Attempt]) -> None:
    for a in attempts:
        _say("  " + a.line())


def _restarts_so_far(cfg: Mapping) -> dict:
    """The restarts recorded so far in metrics.jsonl (each restarted attempt writes one when it resumed)."""
    out = cfg.get("out")
    path = os.path.join(str(out), "metrics.jsonl") if out else None
    restarts, redone, lost = 0, 0, 0.0
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("event") == "restart":
                    restarts += 1
                    redone += int(rec.get("steps_redone") or 0)
                    lost += float(rec.get("seconds_lost") or 0.0)
    return {"restarts": restarts, "steps_redone": redone, "seconds_lost": round(lost, 3)}
