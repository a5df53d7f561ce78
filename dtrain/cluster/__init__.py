"""A virtual cluster on one machine: network namespaces as nodes, veth links shaped by ``tc tbf``, MPI
ranks started inside the nodes so that every byte between nodes crosses a rate-limited TCP link.

Modules, bottom-up: :mod:`~dtrain.cluster.net` (the ``ip``/``tc``/``nft`` commands),
:mod:`~dtrain.cluster.launcher` (placing ranks and running an MPICH job on the nodes),
:mod:`~dtrain.cluster.cluster` (:class:`VirtualCluster`: up, fault, counters, status, down),
:mod:`~dtrain.cluster.cli` (``dtrain cluster up|run|fault|status|down``).

Example::

    from dtrain.cluster import VirtualCluster

    with VirtualCluster.up(nodes=2, link="1gbit") as cluster:          # taken down on exit
        done = cluster.run(4, ["dtrain", "train", "--epochs", "1"])    # 2 ranks per node
        print(done.returncode, cluster.link_bytes())                   # bytes that crossed the links

Needs root and iproute2 (:func:`support_problem` says why not, in one line); ``fault --drop`` needs nftables.
What it does not model: latency (this kernel has no netem) and separate CPUs (the nodes share this
machine's cores). docs/cluster.md says how to run a scaling study on it.
"""

from .cluster import Node, VirtualCluster, state_dir
from .launcher import TRANSPORT_ENV, job_command, placement, run_job
from .net import ClusterError, format_rate, parse_rate, support_problem

__all__ = ["TRANSPORT_ENV", "ClusterError", "Node", "VirtualCluster", "format_rate", "job_command", "parse_rate",
           "placement", "run_job", "state_dir", "support_problem"]
