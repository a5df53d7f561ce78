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


def test_common_power_of_two_folds_only_equal_power_of_two_weights():
    from dtrain.distributed.algorithms.base import common_power_of_two

    assert common_power_of_two(256.0, 2 * 128.0**2, 2) == 128.0  # both ranks 128
    assert common_power_of_two(200.0, 2 * 100.0**2, 2) == 0.0  # equal, not a power of two
    assert common_power_of_two(256.0, 100.0**2 + 156.0**2, 2) == 0.0  # a power-of-two mean, unequal weights
    assert common_power_of_two(0.0, 0.0, 2) == 0.0  # no samples
    assert common_power_of_two(3 * 2.0**26, 3 * 2.0**52, 3) == 0.0  # past where the test is exact
