"""Asynchronous operations: the :class:`Handle` an ``async_op=True`` collective returns, and the background
thread (:class:`Worker`) that runs a Communicator's submitted operations in order."""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["Handle", "Worker"]



class Handle:
    """The pending result of an ``async_op=True`` collective.

    ``wait()`` blocks until the operation finished and returns its result (what the synchronous call
    returns), or re-raises the exception it failed with, its message prefixed with the operation and
    the rank. ``done()`` says whether it finished, without blocking.
    """

    __slots__ = ("_error", "_event", "_result", "name", "rank")

    def __init__(self, name: str, rank: int):
        self.name = name
        self.rank = rank
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def _run(self, fn, comm, *args) -> None:
        try:
            self._result = fn(comm, *args)
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            self._error = exc
        finally:
            self._event.set()

    def done(self) -> bool:
        """True once the operation finished (successfully or not)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None):
        """Block until done and return the result; re-raise the operation's error naming it.

        ``timeout`` (seconds) bounds the wait: TimeoutError when the operation is still running then
        (it keeps running; waiting again is allowed).
        """
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self.name} (rank {self.rank}) still running after {timeout} s; a rank may "
                               "have stopped calling collectives or submitted async operations in another order")
        if self._error is not None:
            exc = self._error
            msg = f"async {self.name} failed on rank {self.rank}: {type(exc).__name__}: {exc}"
            try:
                new = type(exc)(msg)
            except Exception:  # an exception type whose constructor wants other arguments
                new = RuntimeError(msg)
            raise new from exc
        return self._result

    def __repr__(self) -> str:
        state = "failed" if self._error is not None else ("done" if self.done() else "pending")
        return f"<Handle {self.name} rank {self.rank} {state}>"


class Worker:
    """The daemon thread that runs a Communicator's async operations in order."""

    _STOP = object()

    def __init__(self, comm, name: str):
        self.comm = comm
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._STOP:
                return
            handle, fn, args = item
            handle._run(fn, self.comm, *args)

    def stop(self) -> None:
        """Let the queued operations finish, then end the thread."""
        self.queue.put(self._STOP)
        self.thread.join()
