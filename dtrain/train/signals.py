"""SIGINT/SIGTERM: stop every rank at the same step boundary, after a final checkpoint.

A signal reaches one rank (or some). :class:`SignalStop` records it; the Trainer sends "a signal asked
me to stop" as a vote with the next step's gradient sync, so every rank learns of it in the same step
and all stop together. A second signal on the same rank interrupts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["SecondSignal", "SignalStop", "TrainingInterrupted"]


class SecondSignal(KeyboardInterrupt):
    """A second SIGINT/SIGTERM during a graceful stop: stop at once; the exit status is 128 + ``signum``
    (143 for SIGTERM, 130 for SIGINT), as a shell reports a process the signal killed."""

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = int(signum)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training at a step boundary on every rank (after the final checkpoint).

    Attributes: signum, step (steps completed), checkpoint (the path written, or None).
    """

    collective = True  # every rank stops at the same step and raises it together

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        saved = (f"checkpoint {checkpoint} written; continue with --resume {checkpoint}" if checkpoint
                 else "no checkpoint written (no --checkpoint-dir or --out)")
        super().__init__(f"interrupted by {name} after step {step}: {saved}")

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class SignalStop:
    """Turn SIGINT/SIGTERM into a stop agreed by every rank.

    Attributes:
        received: the first signal this process received (None before any).
        stopping: every rank agreed to stop after the current step.
    """

    def __init__(self, enabled: bool, log):
        self.enabled, self.log = enabled, log
        self.received: int | None = None
        self.stopping = False
        self._restore = lambda: None

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
        """Handle SIGINT/SIGTERM inside the block (only in the main thread, where Python allows it)."""
        previous = {}
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    previous[sig] = signal.signal(sig, self._on_signal)
                except (ValueError, OSError):  # not allowed here (e.g. an embedded interpreter)
                    pass

        def restore():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._restore = restore
        try:
            yield self
        finally:
            restore()

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None:  # the second signal: stop now
            self._restore()
            raise SecondSignal(signum)
        self.received = signum
        self.log.warning(f"received {signal.Signals(signum).name}: stopping after the current step on every rank; "
                         "rank 0 writes a checkpoint (send it again to stop at once)")

    def vote(self) -> float:
        """This rank's vote to stop (1.0 after a signal), sent with the step's gradient sync."""
        return float(self.received is not None)

    def tally(self, votes: float) -> None:
        """The sum of every rank's vote for this step: any vote stops every rank after this step."""
        if votes > 0 and not self.stopping:
            self.stopping = True
            self.received = self.received or signal.SIGTERM  # a peer's signal: stop together

    def interrupted(self, step: int, checkpoint: str | None) -> TrainingInterrupted:
        """The exception that ends an interrupted fit (after the final checkpoint)."""
        return TrainingInterrupted(self.received, step, checkpoint)
