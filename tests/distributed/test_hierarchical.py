"""The hierarchical all-reduce under a real mpiexec: equal to the ring and to MPI_Allreduce for any
ranks-per-node layout, faked by splitting COMM_WORLD into nodes (DTRAIN_RANKS_PER_NODE)."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_hierarchical.py")


@pytest.mark.parametrize("n, ppn, nodes", [(4, 2, 2), (5, 2, 3), (3, 1, 3), (4, 4, 1), (2, None, 1)],
                         ids=["4-ranks-as-2x2", "5-ranks-as-2+2+1", "one-rank-per-node", "one-node", "real-layout"])
def test_hierarchical_equals_ring_and_mpi(run_mpi, n, ppn, nodes):
    env = {"DTRAIN_RANKS_PER_NODE": str(ppn)} if ppn else {}
    res = run_mpi(SCRIPT, n, timeout=240, env=env)
    for r in range(n):
        assert f"hierarchical OK rank {r} of {n}: {nodes} nodes" in res.stdout, res.stdout


def test_bad_ranks_per_node_is_a_clear_error(run_mpi):
    res = run_mpi(SCRIPT, 2, timeout=60, env={"DTRAIN_RANKS_PER_NODE": "zero"}, check=False)
    assert res.returncode != 0
    assert "DTRAIN_RANKS_PER_NODE must be a positive integer, got 'zero'" in res.stderr
