"""Elastic on the virtual cluster: 3 nodes, one node's link dies for good mid-training; `dtrain cluster run
--max-restarts` sees the deadline fire, relaunches on the 2 nodes whose link is up from the last good
checkpoint, and the job finishes there with the same global batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from vcluster import LINK, PROBLEM, leftovers, needs_nft, needs_root

from dtrain.cluster import VirtualCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "elastic"))
from elastic_jobs import attempt_dir, events, finish, start, summary, wait_for_step

NAME = "he"  # this test's own 3-node cluster

pytestmark = [needs_root, needs_nft]


@pytest.fixture
def three_nodes():
    if PROBLEM is not None:
        pytest.skip(PROBLEM)
    VirtualCluster.teardown(NAME)
    try:
        with VirtualCluster.up(3, LINK, name=NAME) as cluster:
            yield cluster
    finally:
        VirtualCluster.teardown(NAME)
    assert not leftovers(NAME)


def test_a_node_lost_for_good_the_job_continues_on_the_other_two(tmp_path, three_nodes):
    out = tmp_path / "run"
    job = start(["cluster", "run", "--name", NAME, "-n", "3", "--max-restarts", "2", "--min-ranks", "2", "--",
                 sys.executable, "-m", "dtrain", "train", "--epochs", "12", "--hidden", "512,512", "--seed", "3",
                 "--no-monitor", "--out", str(out), "--checkpoint-every", "30", "--timeout", "5"])
    wait_for_step(attempt_dir(out, 1), 45)
    three_nodes.fault(2, "drop")  # node 2 (rank 2) cut off for good
    status, _, err = finish(job, timeout=240)
    assert status == 0, err[-4000:]
    s = summary(out)
    assert s["world_size"] == 2 and s["restarts"] == 1 and s["steps"] == 12 * 23
    # at most one checkpoint interval redone; 0 when the link died just after a checkpoint (the ranks then hang
    # in the next step's collective and resume from exactly where they stopped)
    assert 0 <= s["steps_redone"] <= 30
    (event,) = events(out)
    assert event["ranks"] == [2] and event["previous_world_size"] == 3 and event["world_size"] == 2, event
    assert event["cause"].startswith("collective deadline: rank 2 on host he-node2"), event
    assert "attempt 2: 2 rank(s) on nodes 0, 1, from the last good checkpoint" in err
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == 64  # the global batch, now 32 per rank
