"""Deadlines for collectives: no rank waits forever for a peer that died, hung or vanished.

Every collective dtrain runs is entered through :meth:`Watchdog.watch` (``with comm.watch(name):``),
which records what this thread is waiting in: the operation's name, the communicator, its sequence
number on that communicator (every rank runs the same collectives in the same order, so sequence
numbers line up across ranks), the training step and the DDP bucket. A daemon thread looks at those
records a few times a second:

* after ``stall_warning`` seconds in one collective it logs a warning naming the late ranks;
* after ``timeout`` seconds it prints an error naming the operation (name, step, bucket) and the
  missing ranks, then aborts the whole job with ``MPI_Abort`` (exit status :data:`ABORT_EXIT_CODE`),
  so the launcher tears every rank down instead of leaving them blocked.

To name the late ranks, the stuck rank asks every peer "where are you?" over a control communicator
of its own (a ``Dup`` of the world, so these messages never match training traffic). Each rank's
watchdog thread answers from its records: the collective it is in, or the last one it finished.
A peer that does not answer within a short grace period is reported as not responding (dead, hung or
unreachable); a peer that has not yet entered the collective is reported with where it is instead.
Answering needs ``MPI_THREAD_MULTIPLE``; below it the deadline still holds, with a shorter report.

Status messages are JSON in fixed-size byte buffers: nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from ..env import timeout_from_env
from ..spec import is_real

__all__ = ["ABORT_EXIT_CODE", "DEFAULT_TIMEOUT", "Watchdog", "default_timeout"]

ABORT_EXIT_CODE = 3  # the status mpiexec reports when a deadline aborts the job
ABORT_GRACE_S = 0.5  # time for the launcher to forward the error line before MPI_Abort
DEFAULT_TIMEOUT = 300.0
_TAG_QUERY, _TAG_REPLY = 7101, 7102
_REPLY_BYTES = 4096


def default_timeout() -> float:
    """DTRAIN_TIMEOUT from the environment if set (seconds, 0 disables), else 300."""
    return timeout_from_env(DEFAULT_TIMEOUT)


class _Op:
    __slots__ = ("bucket", "label", "name", "seq", "start", "step", "warned")

    def __init__(self, name, label, seq, step, bucket, start):
        self.name, self.label, self.seq, self.step, self.bucket, self.start = name, label, seq, step, bucket, start
        self.warned = False

    def describe(self) -> str:
        where = [f"step {self.step}"] if self.step is not None else []
        if self.bucket is not None:
            where.append(f"bucket {self.bucket}")
        return f"'{self.name}'" + (f" ({', '.join(where)})" if where else "")


class _Watch:
    """The context manager :meth:`Watchdog.watch` returns (entering and leaving cost ~1 us)."""

    __slots__ = ("bucket", "label", "name", "wd")

    def __init__(self, wd, name, label, bucket):
        self.wd, self.name, self.label, self.bucket = wd, name, label, bucket

    def __enter__(self):
        self.wd._enter(self.name, self.label, self.bucket)
        return self

    def __exit__(self, *exc):
        self.wd._leave()
        return False


class Watchdog:
    """Deadline, stall warning and peer inspection for the collectives of one MPI world.

    Args:
        ctl: an mpi4py communicator private to the watchdog (a ``Dup`` of the world), or None for no
            peer inspection (a world of 1, or MPI below THREAD_MULTIPLE).
        rank, size: this process's rank and the world size.
        timeout: seconds a collective may take before the job is aborted (0: never).
        stall_warning: seconds before a warning naming the late ranks (None: timeout / 2; 0: never).
        abort: what to call with an exit status on timeout (default: MPI_Abort on COMM_WORLD).
        hosts: every rank's host name (the world's ``Communicator.hosts``): a job on several hosts names the
            host of each missing or late rank ("every rank on host h2" points at a node or its link).
    """

    def __init__(self, ctl, rank: int, size: int, timeout: float = DEFAULT_TIMEOUT, stall_warning: float | None = None,
                 abort=None, hosts=None):
        self.ctl, self.rank, self.size = ctl, rank, size
        self.hosts = tuple(hosts) if hosts is not None else None  # every rank's host name, when known
        self._stacks: dict[int, list[_Op]] = {}
        self._seq: dict[str, int] = {}
        self._last: tuple[str, Any, float] | None = None  # (operation, step, when it finished)
        self.step: int | None = None  # the training step, set by the training loop
        self._abort_fn = abort
        self.suspects: list[int] = []  # the ranks the last inspection found missing or behind
        self.on_deadline = None  # called (ranks, hosts, step, message) just before a deadline aborts the job
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._query_id = 0
        self._sends: list = []  # replies in flight (request, buffer)
        self._qreq = None
        self._qbuf = np.zeros(2, dtype=np.int64)
        self.timeout, self.stall_warning = 0.0, None
        self.configure(timeout, stall_warning)

    # -- configuration -------------------------------------------------------------------------
    def configure(self, timeout: float, stall_warning: float | None = None) -> None:
        """Set the deadline (seconds, 0: none) and the stall warning (None: half the deadline)."""
        if not is_real(timeout) or not timeout >= 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a number of seconds >= 0 (0: no deadline), got {timeout!r}")
        if stall_warning is not None and (not is_real(stall_warning) or not stall_warning >= 0
                                          or not math.isfinite(stall_warning)):
            raise ValueError(f"stall_warning must be a number of seconds >= 0 or None, got {stall_warning!r}")
        self.timeout = float(timeout)
        self.stall_warning = float(stall_warning) if stall_warning is not None else self.timeout / 2
        if self.size > 1 and (self.timeout > 0 or self.stall_warning > 0):
            self._start()
        self._wake.set()

    @property
    def grace(self) -> float:
        """Seconds to wait for peers' answers when inspecting."""
        base = self.timeout if self.timeout > 0 else self.stall_warning
        return min(5.0, max(0.5, 0.1 * base))

    @property
    def interval(self) -> float:
        limits = [t for t in (self.timeout, self.stall_warning) if t > 0]
        return min([0.1] + [t / 20 for t in limits]) if limits else 0.1

    # -- what threads are waiting in -----------------------------------------------------------
    def watch(self, name: str, label: str = "world", bucket: int | None = None) -> _Watch:
        """Context manager around one collective: ``with wd.watch("allreduce ring", "world"):``."""
        return _Watch(self, name, label, bucket)

    def _enter(self, name, label, bucket) -> None:
        tid = threading.get_ident()
        stack = self._stacks.get(tid)
        if stack is None:
            stack = self._stacks[tid] = []
        seq = self._seq.get(label, 0) + 1
        self._seq[label] = seq
        if stack and bucket is None:
            bucket = stack[-1].bucket
        stack.append(_Op(name, label, seq, self.step, bucket, time.monotonic()))

    def _leave(self) -> None:
        stack = self._stacks.get(threading.get_ident())
        if stack:
            op = stack.pop()
            if not stack:
                self._last = (op.name, op.step, time.monotonic())

    def active(self) -> list[list[_Op]]:
        """The stacks of operations the threads of this process are in (outermost first)."""
        return [list(s) for s in list(self._stacks.values()) if s]

    # -- the thread ----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None:
            return
        if self.ctl is not None:
            from mpi4py import MPI

            self._qreq = self.ctl.Irecv([self._qbuf, MPI.INT64_T], source=MPI.ANY_SOURCE, tag=_TAG_QUERY)
        self._thread = threading.Thread(target=self._loop, name=f"dtrain-watchdog-{self.rank}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread and cancel the posted receive (before MPI_Finalize)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._qreq is not None:
            try:
                self._qreq.Cancel()
                self._qreq.Wait()
            except Exception:
                pass
            self._qreq = None
        for req, _ in self._sends:
            try:
                req.Free()
            except Exception:
                pass
        self._sends.clear()

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._serve()
                self._check(time.monotonic())
            except Exception as exc:  # the watchdog must never take the job down by itself
                _write(f"dtrain: warning: [rank {self.rank}] collective watchdog: {type(exc).__name__}: {exc}")

    def _check(self, now: float) -> None:
        for stack in self.active():
            outer, inner = stack[0], stack[-1]
            waited = now - outer.start
            if self.timeout > 0 and waited >= self.timeout:
                self._expire(outer, inner, waited)
                return
            if self.stall_warning > 0 and waited >= self.stall_warning and not outer.warned:
                outer.warned = True
                late = self.inspect(inner)
                _write(f"dtrain: warning: [rank {self.rank}] {_what(outer, inner)} has waited {waited:.1f} s for "
                       f"its peers: {late}" + (f"; the job is aborted at {self.timeout:g} s (--timeout)"
                                               if self.timeout > 0 else ""))

    def _expire(self, outer: _Op, inner: _Op, waited: float) -> None:
        report = self.inspect(inner)
        message = (f"[rank {self.rank}] {_what(outer, inner)} timed out after {waited:.1f} s (--timeout "
                   f"{self.timeout:g}): {report}")
        _write(f"dtrain: error: {message}; aborting the job (MPI_Abort, exit status {ABORT_EXIT_CODE})")
        if self.on_deadline is not None:
            hosts = [self.hosts[r] for r in self.suspects] if self.hosts is not None else []
            try:
                self.on_deadline(self.suspects, hosts, inner.step, message)
            except Exception:  # the abort must happen whatever the hook does
                pass
        self.abort(ABORT_EXIT_CODE)

    def abort(self, code: int) -> None:
        """End the whole job now: MPI_Abort (and, should that not return or not exit, os._exit).

        Waits ABORT_GRACE_S first: the launcher forwards a rank's output through a pipe, and a line
        written just before MPI_Abort is otherwise sometimes lost when the job is torn down."""
        threading.Timer(10.0, os._exit, (code,)).start()  # fallback if MPI_Abort hangs
        time.sleep(ABORT_GRACE_S)
        if self._abort_fn is not None:
            self._abort_fn(code)
            return
        try:
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        finally:
            os._exit(code)

    # -- peer inspection -----------------------------------------------------------------------
    def _status(self) -> dict:
        now = time.monotonic()
        ops = [[[o.label, o.seq, o.name, o.step, o.bucket, round(now - o.start, 3)] for o in s] for s in self.active()]
        last = None if self._last is None else [self._last[0], self._last[1], round(now - self._last[2], 3)]
        return {"rank": self.rank, "step": self.step, "ops": ops, "seq": dict(self._seq), "last": last}

    def _serve(self) -> None:
        """Answer the status queries that arrived (and forget finished replies)."""
        if self._qreq is None:
            return
        from mpi4py import MPI

        self._sends = [(r, b) for r, b in self._sends if not r.Test()]
        status = MPI.Status()
        while self._qreq.Test(status):
            src, qid = status.Get_source(), int(self._qbuf[0])
            payload = dict(self._status(), query=qid)
            buf = np.zeros(_REPLY_BYTES, dtype=np.uint8)
            raw = json.dumps(payload).encode()[:_REPLY_BYTES]
            buf[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            self._sends.append((self.ctl.Isend([buf, MPI.BYTE], src, _TAG_REPLY), buf))
            self._qreq = self.ctl.Irecv([self._qbuf, MPI.INT64_T], source=MPI.ANY_SOURCE, tag=_TAG_QUERY)

    def query_peers(self, grace: float | None = None) -> dict[int, dict | None]:
        """Ask every other rank for its status; {rank: status dict, or None if it did not answer in time}."""
        if self.ctl is None:
            return {}
        from mpi4py import MPI

        grace = self.grace if grace is None else grace
        self._query_id += 1
        qid = self._query_id
        query = np.array([qid, self.rank], dtype=np.int64)
        peers = [r for r in range(self.size) if r != self.rank]
        bufs = {r: np.zeros(_REPLY_BYTES, dtype=np.uint8) for r in peers}
        recvs = {r: self.ctl.Irecv([bufs[r], MPI.BYTE], source=r, tag=_TAG_REPLY) for r in peers}
        for r in peers:
            self._sends.append((self.ctl.Isend([query, MPI.INT64_T], r, _TAG_QUERY), query))
        answers: dict[int, dict | None] = {r: None for r in peers}
        deadline = time.monotonic() + grace
        pending = set(peers)
        while pending and time.monotonic() < deadline:
            self._serve()  # a peer inspecting at the same moment waits for our answer too
            for r in list(pending):
                if recvs[r].Test():
                    try:
                        msg = json.loads(bytes(bufs[r]).rstrip(b"\0").decode())
                    except ValueError:
                        msg = None
                    if msg is not None and msg.get("query") != qid:  # a late answer to an earlier query
                        recvs[r] = self.ctl.Irecv([bufs[r], MPI.BYTE], source=r, tag=_TAG_REPLY)
                        continue
                    answers[r] = msg
                    pending.discard(r)
            time.sleep(0.01)
        for r in pending:  # no answer: stop listening (the request completes as cancelled)
            try:
                recvs[r].Cancel()
                recvs[r].Wait()
            except Exception:
                pass
        return answers

    def inspect(self, inner: _Op) -> str:
        """A sentence naming the ranks that have not reached ``inner`` (and where they are)."""
        if self.ctl is None:
            return ("peer status unavailable (the MPI library does not provide MPI_THREAD_MULTIPLE); some rank has not "
                    "reached this collective")
        answers = self.query_peers()
        silent = [r for r, a in answers.items() if a is None]
        behind, waiting = [], []
        for r, a in answers.items():
            if a is None:
                continue
            if a.get("seq", {}).get(inner.label, 0) >= inner.seq:
                waiting.append(r)
            else:
                behind.append((r, _where(a)))
        self.suspects = sorted(silent + [r for r, _ in behind])
        parts = []
        if silent:
            where = _on_hosts(self.hosts, silent)
            parts.append(f"missing rank{'s' if len(silent) > 1 else ''} {_ranks(silent)}{where} did not answer within "
                         f"{self.grace:g} s (dead, hung or unreachable)")
        if behind:
            parts.append("late: " + "; ".join(f"rank {r}{_on_hosts(self.hosts, [r])} {w}" for r, w in behind))
        if not silent and not behind:
            parts.append("every rank is inside it, so the collective itself is slow or stuck (a slow or failed "
                         "link, or mismatched operations across ranks)")
        elif waiting:
            parts.append(f"rank{'s' if len(waiting) > 1 else ''} {_ranks(waiting)} "
                         f"{'are' if len(waiting) > 1 else 'is'} waiting in it too")
        return "; ".join(parts)


def _on_hosts(hosts, ranks) -> str:
    """`` (every rank on host h1; ranks 3 of h2)``: where ``ranks`` run, when the job spans several hosts."""
    if hosts is None or len(set(hosts)) < 2:
        return ""
    parts = []
    for host in dict.fromkeys(hosts[r] for r in sorted(ranks)):
        mine = [r for r in ranks if hosts[r] == host]
        whole = len(mine) == sum(1 for h in hosts if h == host)
        parts.append(f"every rank on host {host}" if whole else f"rank{'s' if len(mine) > 1 else ''} "
                     f"{_ranks(mine)} of host {host}")
    return " (" + "; ".join(parts) + ")"


def _what(outer: _Op, inner: _Op) -> str:
    text = f"collective {outer.describe()}"
    if inner is not outer:
        text += f" (inside '{inner.name}')"
    return text


def _where(status: dict) -> str:
    ops = status.get("ops") or []
    if ops:
        outer = ops[0][0]
        step = f", step {outer[3]}" if outer[3] is not None else ""
        return f"is in '{outer[2]}'{step} for {outer[5]:.1f} s"
    last = status.get("last")
    if last:
        step = f" (step {last[1]})" if last[1] is not None else ""
        return f"is not in a collective; it last finished '{last[0]}'{step} {last[2]:.1f} s ago"
    return "has not run any collective yet"


def _ranks(ranks) -> str:
    ranks = sorted(ranks)
    return ", ".join(map(str, ranks))


def _write(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")  # one write: ranks share stderr under mpiexec
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
