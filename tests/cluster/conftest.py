"""Fixtures of the virtual-cluster tests.

``cluster``: the session's cluster ``ht`` (2 nodes, every link at vcluster.LINK), built once and taken
down at the end of the session even when tests fail; after each test its links are mended and reshaped,
so a test that broke one cannot break the next. At the end, nothing of ``ht`` or ``ht2`` (the lifecycle
tests' own cluster, which their ``spare`` fixture takes down) may be left.
"""

from __future__ import annotations

import pytest
from vcluster import LINK, NAME, PROBLEM, SPARE, leftovers

from dtrain.cluster import VirtualCluster, parse_rate


@pytest.fixture(scope="session")
def _session_cluster():
    if PROBLEM is not None:
        pytest.skip(PROBLEM)
    VirtualCluster.teardown(NAME)  # what an interrupted earlier run may have left
    try:
        with VirtualCluster.up(2, LINK, name=NAME) as cluster:
            yield cluster
    finally:
        VirtualCluster.teardown(NAME)
    left = leftovers(NAME) + leftovers(SPARE)
    assert not left, f"left behind after the cluster tests: {left}"


@pytest.fixture
def cluster(_session_cluster):
    """The session's 2-node cluster with every link up at LINK."""
    yield _session_cluster
    for node in _session_cluster.nodes:
        if node.down or node.drop:
            _session_cluster.fault(node.index, "up")
        if node.rate_bps != parse_rate(LINK):
            _session_cluster.set_rate(node.index, LINK)
