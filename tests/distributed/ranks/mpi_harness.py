"""Shared by the scripts tests/distributed runs under mpiexec: a failure on any rank prints that rank's
traceback and aborts the whole job (MPI_Abort), so no rank is left waiting in a collective."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import numpy as np


def run_or_abort(main: Callable[[], object]) -> None:
    try:
        main()
    except BaseException:
        from mpi4py import MPI

        print(f"rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()} failed:\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(1)


def segments(flat: np.ndarray, shapes) -> list[tuple[str, np.ndarray]]:
    """``(name, view of flat in that shape)`` for consecutive ``(name, shape)`` pairs: a bucket's segments."""
    out, lo = [], 0
    for name, shape in shapes:
        hi = lo + int(np.prod(shape))
        out.append((name, flat[lo:hi].reshape(shape)))
        lo = hi
    return out
