"""ZeroRedundancyOptimizer on the virtual cluster (2 nodes x 2 ranks): the shared-window algorithm needs every
rank on one node, and says so on every rank."""

from __future__ import annotations

import sys

from vcluster import REPO, needs_root, rank_env

pytestmark = needs_root

N, M = 4, 2  # ranks, ranks per node


def test_zero_in_a_shared_window_is_refused_across_nodes(cluster):
    """ZeroRedundancyOptimizer(..., algorithm='shm') with its 4 ranks on 2 nodes: a ValueError on every rank
    saying every rank must be on one node and to use algorithm='ring' (the model left as it was), and the
    ring's ZeRO then steps (tests/distributed/ranks/mpi_zero.py across-nodes)."""
    done = cluster.run(N, [sys.executable, str(REPO / "tests" / "distributed" / "ranks" / "mpi_zero.py"),
                           "across-nodes"], ppn=M, env=rank_env(), capture=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "across-nodes OK on 4 ranks" in done.stdout
