"""The shared-memory all-reduce (``algorithm="shm"``): multi-rank checks under mpiexec (ranks/mpi_shm.py) and
what a world of one and the registry say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dtrain.distributed as dist
from dtrain.distributed.algorithms import ALGORITHMS, SharedMemoryAllreduce

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_shm.py")


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shm_allreduce_under_mpiexec(run_mpi, n):
    res = run_mpi(SCRIPT, n, timeout=240)
    for r in range(n):
        assert f"shm OK rank {r} of {n}" in res.stdout, res.stdout


def test_shm_is_registered_and_a_world_of_one_needs_no_window():
    assert isinstance(ALGORITHMS["shm"], SharedMemoryAllreduce)
    world = dist.init()
    a = np.arange(5.0)
    assert dist.allreduce(a, op="sum", algorithm="shm") is a and np.array_equal(a, np.arange(5.0))
    assert "shm" not in world.cache  # nothing to share with: no window made
