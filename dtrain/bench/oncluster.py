"""Running a benchmark's ranks on a virtual cluster (:mod:`dtrain.cluster`): ``--cluster KxM --link RATE``.

A benchmark that takes these options brings up a cluster of K nodes (every link shaped to RATE, one
node slower with ``--link-of``) for its run, starts M ranks per node through it (MPICH over TCP, so the
bytes between nodes cross the shaped links) and takes it down at the end, also on failure. The cluster is
named ``bench`` (``DTRAIN_BENCH_CLUSTER`` names another, so that two benchmarks can run at once); one of
that name already up is taken down first. Without ``--cluster`` nothing changes: ranks share memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..cluster.cli import link_of_arg, rate_arg

__all__ = ["BENCH_CLUSTER", "ClusterShape", "add_cluster_arguments", "bench_cluster_name", "cluster_label",
           "cluster_session", "parse_shape"]

BENCH_CLUSTER = "bench"


def bench_cluster_name() -> str:
    """The benchmark cluster's name: ``DTRAIN_BENCH_CLUSTER``, else ``bench``."""
    return os.environ.get("DTRAIN_BENCH_CLUSTER", BENCH_CLUSTER)


@dataclass(frozen=True)
class ClusterShape:
    """K nodes with M ranks each."""

    nodes: int
    ppn: int

    def __str__(self) -> str:
        return f"{self.nodes}x{self.ppn}"


def parse_shape(text: str) -> ClusterShape:
    """argparse type of ``--cluster``: ``KxM`` (K nodes, M ranks per node), e.g. ``4x1``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"expected KxM (K nodes, M ranks per node), e.g. 4x1, got {text!r}")
    return ClusterShape(int(m.group(1)), int(m.group(2)))


def add_cluster_arguments(p: argparse.ArgumentParser, default_link: str = "1gbit",
                          default_shape: str | None = None) -> None:
    """``--cluster KxM``, ``--link RATE`` and ``--link-of NODE=RATE``. ``default_shape`` (e.g. ``"4x1"``): the
    benchmark only runs on a virtual cluster, of this shape unless told otherwise."""
    g = p.add_argument_group("virtual cluster (root; see docs/cluster.md)")
    if default_shape is None:
        shape_help = ("run the ranks on a virtual cluster of K nodes, M ranks per node (default: this host's "
                      "shared memory)")
    else:
        shape_help = f"K nodes, M ranks per node of the virtual cluster (default {default_shape})"
    g.add_argument("--cluster", type=parse_shape, metavar="KxM", help=shape_help,
                   default=None if default_shape is None else parse_shape(default_shape))
    g.add_argument("--link", type=rate_arg, default=default_link, metavar="RATE",
                   help=f"with --cluster: every node's link rate, tc units (default {default_link})")
    g.add_argument("--link-of", type=link_of_arg, action="append", default=[], metavar="NODE=RATE",
                   help="with --cluster: one node's link rate (repeatable), e.g. 3=250mbit for a straggler")


@contextlib.contextmanager
def cluster_session(args, nodes: int | None = None) -> Iterator:
    """The benchmark's cluster for the ``with`` block (None without ``--cluster``): ``nodes`` (default K of
    ``--cluster``) nodes at ``--link``, taken down at the end whatever happens."""
    shape = getattr(args, "cluster", None)
    if shape is None:
        yield None
        return
    from ..cluster import VirtualCluster

    VirtualCluster.teardown(bench_cluster_name())  # a left-over of an interrupted run may have another size
    cluster = VirtualCluster.up(nodes or shape.nodes, args.link, dict(args.link_of), name=bench_cluster_name())
    try:
        yield cluster
    finally:
        cluster.down()


def cluster_label(args) -> str:
    """``"4x1 nodes x ranks, 1gbit links (node 3: 250mbit)"``, or ``"shared memory"`` without --cluster."""
    shape = getattr(args, "cluster", None)
    if shape is None:
        return "shared memory (one host)"
    slow = ", ".join(f"node {i}: {r}" for i, r in args.link_of)
    return f"virtual cluster {shape} (nodes x ranks per node), {args.link} links" + (f" ({slow})" if slow else "")
