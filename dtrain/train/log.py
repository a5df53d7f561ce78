"""A rank-aware logger: rank 0 speaks for the job, every rank can report its own errors.

Messages go through the standard ``logging`` module under the "dtrain" logger, so users can
redirect or silence them. On ranks other than 0, info-level output is dropped unless
``all_ranks=True``; warnings and errors are always shown and carry a ``[rank r]`` prefix, so a
failure on one rank names it.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["RankLogger"]


class RankLogger:
    """Log for one rank of a job.

    Args:
        rank: this process's rank; world_size: number of ranks (prefixes only when > 1).
        all_ranks: print info messages on every rank, not just rank 0.
        stream: where info goes (stdout by default); warnings/errors go to stderr.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, all_ranks: bool = False, stream=None,
                 quiet: bool = False):
        self.rank, self.world_size = rank, world_size
        self.speaks = (rank == 0 or all_ranks) and not quiet
        self._stream = stream
        self._log = logging.getLogger("dtrain")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _prefix(self) -> str:
        return f"[rank {self.rank}] " if self.world_size > 1 else ""

    def info(self, message: str) -> None:
        """A progress line (printed on rank 0, or everywhere with all_ranks)."""
        if self.speaks:
            stream = self._stream or sys.stdout
            print(self._prefix() + message if self.rank else message, file=stream, flush=True)

    def warning(self, message: str) -> None:
        """Shown on every rank, to stderr, with the rank."""
        sys.stderr.write(f"dtrain: warning: {self._prefix()}{message}\n")  # one write: ranks share stderr
        sys.stderr.flush()
        self._log.debug("warning on rank %d: %s", self.rank, message)

    def error(self, message: str) -> None:
        """Shown on every rank, to stderr, with the rank."""
        sys.stderr.write(f"dtrain: error: {self._prefix()}{message}\n")
        sys.stderr.flush()
