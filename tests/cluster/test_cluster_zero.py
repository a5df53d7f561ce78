"""ZeroRedundancyOptimizer on the virtual cluster (2 nodes x 2 ranks): the shared-window algorithm needs every
rank on one node, and says so on every rank; ``dtrain train --zero`` over the ring trains across the nodes."""

from __future__ import annotations

import json
import sys

from vcluster import REPO, needs_root, python, rank_env

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


def test_dtrain_train_zero_across_nodes(cluster, tmp_path):
    """`dtrain train --zero --allreduce shm` on 2 nodes: exit status 2 on every rank, one message naming --zero
    and the ring; `--zero` over the ring then trains across the nodes to DDP's result (to rounding)."""
    common = ("train", "--epochs", "2", "--dtype", "float64", "--hidden", "16", "--timeout", "60", "--no-progress",
              "--no-monitor")
    refused = cluster.run(N, python("dtrain", *common, "--zero", "--allreduce", "shm"), ppn=M, env=rank_env(),
                          capture=True, timeout=120)
    assert refused.returncode == 2, f"{refused.stdout}\n{refused.stderr}"
    assert refused.stderr.count("error:") == 1, refused.stderr  # said once, by rank 0, for every rank
    assert "--zero --allreduce shm: ZeroRedundancyOptimizer with algorithm='shm' (rank 0): every rank must be on one " \
           "node, but this rank shares memory with 2 of the 4 ranks" in refused.stderr
    assert "(on the command line: --zero --allreduce ring)" in refused.stderr
    results = []
    for extra in ((), ("--zero",)):
        out = tmp_path / ("zero" if extra else "ddp")
        done = cluster.run(N, python("dtrain", *common, "--out", out, *extra), ppn=M, env=rank_env(), capture=True,
                           timeout=120)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        results.append(json.loads((out / "summary.json").read_text()))
    ddp, zero = results
    assert zero["world_size"] == ddp["world_size"] == N and zero["steps"] == ddp["steps"] == 46
    assert abs(zero["test_loss"] - ddp["test_loss"]) <= 1e-9 and zero["test_accuracy"] == ddp["test_accuracy"]
