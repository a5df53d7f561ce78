"""Run on the virtual cluster by tests/cluster: where each rank runs, then REPEATS all-reduces of MIB MiB of
float32 with dtrain's ALGORITHM, each checked exactly on every rank.

    python allreduce.py ALGORITHM MIB REPEATS

Every rank prints ``rank R host H node L/S nodes K`` (its hostname, its rank and count in its node's
communicator, the number of nodes); rank 0 then prints ``allreduce ALGORITHM OK ...``. The values are small
integers, so every summation order gives the same float32 sum and the check is exact. A failure on any rank
aborts the job (tests/distributed/ranks/mpi_harness.py).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "distributed" / "ranks"))
from mpi_harness import run_or_abort

import dtrain.distributed as dist


def contribution(rank: int, count: int, repeat: int) -> np.ndarray:
    """What ``rank`` adds in all-reduce number ``repeat``: integers below 2**10, exact in float32 sums."""
    return (np.arange(count, dtype=np.float32) % 97) + np.float32(3 * rank + repeat)


def say(line: str) -> None:
    """One write per line: print() writes the text and its newline separately when Python is unbuffered
    (PYTHONUNBUFFERED), and the lines of the ranks interleave in mpiexec's merged stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    algorithm, mib, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    world = dist.init()
    say(f"rank {world.rank} host {socket.gethostname()} node {world.local_rank}/{world.local_size} "
        f"nodes {world.node_count}")
    count = int(mib * 2**20) // 4
    for repeat in range(repeats):
        x = contribution(world.rank, count, repeat)
        dist.allreduce(x, op="sum", algorithm=algorithm)
        expected = sum(contribution(r, count, repeat) for r in range(world.size))
        if not np.array_equal(x, expected):
            bad = int(np.flatnonzero(x != expected)[0])
            raise AssertionError(f"{algorithm} all-reduce {repeat}: element {bad} is {x[bad]}, expected "
                                 f"{expected[bad]} on rank {world.rank}")
    world.barrier()
    if world.rank == 0:
        say(f"allreduce {algorithm} OK: {repeats} x {count * 4} bytes on {world.size} ranks")


if __name__ == "__main__":
    run_or_abort(main)
