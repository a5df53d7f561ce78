"""Rank-side checks for the collective watchdog and the divergence guard (run by test_watchdog.py).

    mpiexec -n 3 python tests/distributed/ranks/mpi_watchdog.py stall        # rank 2 is late: others warn, then finish
    mpiexec -n 3 python tests/distributed/ranks/mpi_watchdog.py hang         # rank 1 never arrives: the job is aborted
    mpiexec -n 3 python tests/distributed/ranks/mpi_watchdog.py divergence   # rank 1's weights differ: all raise
"""

from __future__ import annotations

import sys
import time

import numpy as np
from mpi_harness import run_or_abort

import dtrain
import dtrain.distributed as dist
from dtrain import nn
from dtrain.train.ddp_sync import MPICollectives
from dtrain.train.divergence import param_digests
from dtrain.train.sync import DistributedRunError


def stall(world):
    dist.set_timeout(30, stall_warning=0.5)
    world.watchdog.step = 7
    x = np.ones(1000)
    dist.allreduce(x, op="sum")
    if world.rank == 2:
        time.sleep(2.0)  # computing, not in any collective: the others should name it as late
    x[:] = 1
    dist.allreduce(x, op="sum")
    assert np.all(x == world.size)
    print(f"stall OK rank {world.rank}", flush=True)


def hang(world):
    dist.set_timeout(2.0)
    world.watchdog.step = 3
    x = np.ones(10)
    dist.allreduce(x, op="sum")  # everyone, once
    if world.rank == 1:
        time.sleep(600)  # hung (e.g. a deadlocked data loader): never reaches the next collective
    dist.allreduce(x, op="sum")
    print("hang: the collective completed without rank 1", flush=True)


def divergence(world):
    dtrain.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    sync = MPICollectives(world)
    sync.check_identical(param_digests(model), step=1)  # identical: passes
    if world.rank == 1:
        bias = model[2].bias.data
        bias.view(np.dtype(f"u{bias.itemsize}"))[0] ^= 1  # one flipped bit is enough
    try:
        sync.check_identical(param_digests(model), step=50)
    except DistributedRunError as exc:
        msg = str(exc)
        assert "at step 50" in msg and "'2.bias'" in msg and "rank 1 has its own value" in msg, msg
        assert "ranks 0, 2 agree" in msg and "1 of 4 parameters differ" in msg, msg
        print(f"divergence OK rank {world.rank}: {msg}", flush=True)
        return
    raise AssertionError("the divergence went unnoticed")


def main():
    world = dist.init()
    {"stall": stall, "hang": hang, "divergence": divergence}[sys.argv[1]](world)


if __name__ == "__main__":
    run_or_abort(main)
