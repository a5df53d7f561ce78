"""Shared by the scripts tests/distributed runs under mpiexec: a failure on any rank prints that rank's
traceback and aborts the whole job (MPI_Abort), so no rank is left waiting in a collective."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

import numpy as np


def run_or_abort(main: Callable[[], object]) -> None:
    try:
        main()
    except BaseException:
        from mpi4py import MPI

        from dtrain.distributed.watchdog import ABORT_GRACE_S

        print(f"rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()} failed:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        # As dtrain's own abort does: the launcher forwards this output through a pipe, and a line written just
        # before MPI_Abort is sometimes lost when the job is torn down (seen: a test reading an empty stderr).
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(1)


def segments(flat: np.ndarray, shapes) -> list[tuple[str, np.ndarray]]:
    """``(name, view of flat in that shape)`` for consecutive ``(name, shape)`` pairs: a bucket's segments."""
    out, lo = [], 0
    for name, shape in shapes:
        hi = lo + int(np.prod(shape))
        out.append((name, flat[lo:hi].reshape(shape)))
        lo = hi
    return out
