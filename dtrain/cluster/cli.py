"""``dtrain cluster up|run|fault|status|down``: drive a virtual cluster from the shell.

Every subcommand takes ``--name`` (default ``dt``), so several clusters can be up at once. A problem
(not root, no namespaces, no such cluster, a bad rate) is one line on stderr and exit status 2; ``run``
exits with the job's status (124 when ``--deadline`` ended it).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..launch import non_negative_int_arg, positive_int_arg

__all__ = ["add_parser", "link_of_arg", "rate_arg"]

EPILOG = """examples:
  dtrain cluster up --nodes 4 --link 1gbit                    4 nodes, every link shaped to 1 Gbit/s
  dtrain cluster up --nodes 4 --link 1gbit --link-of 3=250mbit  ... node 3 a straggler at a quarter of it
  dtrain cluster run -n 8 -- dtrain train --allreduce hierarchical   2 ranks per node
  dtrain cluster fault --node 1 --down                         pull node 1's cable (--up puts it back)
  dtrain cluster status                                        links, rates and tc byte counters
  dtrain cluster down                                          kill the ranks, remove every namespace and link

Needs root, iproute2 (ip, tc) and, for --drop, nftables. docs/cluster.md: a scaling study on it."""


def rate_arg(text: str) -> str:
    """argparse type of a link rate (``1gbit``, ``250mbit``): the text, once :func:`~.net.parse_rate` accepts it."""
    from .net import parse_rate

    try:
        parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def link_of_arg(text: str) -> tuple[int, str]:
    """argparse type of ``--link-of NODE=RATE``: (node index, rate text)."""
    node, sep, rate = text.partition("=")
    if not sep or not node.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected NODE=RATE (e.g. 3=250mbit), got {text!r}")
    return int(node), rate_arg(rate)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(subparsers, supervise=None) -> argparse.ArgumentParser:
    """Add ``cluster`` and its subcommands to the ``dtrain`` parser. ``supervise(args, argv) -> status``: what
    ``run --max-restarts`` calls (the elastic layer above this one; without it the option is not offered)."""
    cl = subparsers.add_parser(
        "cluster", help="a virtual cluster on this machine: namespaces as nodes, shaped links (root)",
        description="A virtual cluster: K network namespaces joined by veth links to a bridge, each link shaped "
                    "by tc tbf, MPI ranks started inside the nodes so that bytes between nodes cross the links.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = cl.add_subparsers(dest="cluster_command", required=True, metavar="{up,run,fault,status,down}")
    up = sub.add_parser("up", help="build the cluster (idempotent: up again resets the link rates)")
    up.add_argument("--nodes", type=positive_int_arg, required=True, metavar="K", help="number of nodes")
    up.add_argument("--link", default="1gbit", metavar="RATE", help="every link's rate, tc units (default 1gbit)")
    up.add_argument("--link-of", type=link_of_arg, action="append", default=[], metavar="NODE=RATE",
                    help="one node's link rate (repeatable), e.g. 3=250mbit")
    run = sub.add_parser("run", help="run a command on N ranks across the nodes (MPICH's or Open MPI's mpiexec)")
    run.add_argument("-n", "--np", dest="np", type=positive_int_arg, required=True, metavar="N", help="ranks")
    run.add_argument("--ppn", type=positive_int_arg, default=None, metavar="M",
                     help="ranks per node (default: N spread evenly, ceil(N / nodes))")
    run.add_argument("--deadline", type=_seconds, default=None, metavar="S",
                     help="kill the job after S seconds (exit status 124)")
    run.add_argument("--mpiexec", default=None, metavar="PATH",
                     help="MPICH's or Open MPI's mpiexec (default: this Python's, else PATH's); Open MPI needs a "
                          "Python whose mpi4py loads Open MPI in the command")
    run.add_argument("--dry-run", action="store_true", help="print the mpiexec command and exit")
    if supervise is not None:
        run.add_argument("--max-restarts", type=non_negative_int_arg, default=None, metavar="R",
                         help="supervise dtrain train: after a failure (a rank or node lost, a deadline) relaunch "
                              "it on the nodes whose link is up, from the last good checkpoint, up to R times")
        run.add_argument("--min-ranks", type=positive_int_arg, default=1, metavar="K",
                         help="with --max-restarts: give up when fewer than K ranks can be started (default 1)")
        run.set_defaults(supervise=supervise)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command each rank runs")
    fault = sub.add_parser("fault", help="break, mend or reshape one node's link")
    fault.add_argument("--node", type=int, required=True, metavar="I", help="node index")
    what = fault.add_mutually_exclusive_group(required=True)
    what.add_argument("--down", dest="action", action="store_const", const="down", help="link down (no carrier)")
    what.add_argument("--drop", dest="action", action="store_const", const="drop",
                      help="link up, every packet dropped both ways (needs nftables)")
    what.add_argument("--up", dest="action", action="store_const", const="up", help="undo --down and --drop")
    what.add_argument("--rate", default=None, metavar="RATE", help="shape the link to RATE")
    status = sub.add_parser("status", help="nodes, link rates and states, tc byte counters, processes")
    status.add_argument("--json", action="store_true", help="one JSON object per node")
    sub.add_parser("down", help="kill every process in the nodes and remove the cluster (idempotent)")
    for p in sub.choices.values():
        p.add_argument("--name", default="dt", help="which cluster (default dt): 1-6 lowercase letters/digits")
    cl.set_defaults(func=main)
    return cl


def main(args) -> int:
    """Run one ``dtrain cluster`` subcommand; problems are one line on stderr and exit status 2."""
    from .net import ClusterError

    try:
        return _COMMANDS[args.cluster_command](args)
    except (ClusterError, ValueError) as exc:
        sys.stderr.write(f"dtrain cluster {args.cluster_command}: error: {exc}\n")
        return 2


def _up(args) -> int:
    from .cluster import VirtualCluster, state_dir

    existed = (state_dir() / f"{args.name}.json").exists()
    cluster = VirtualCluster.up(args.nodes, args.link, dict(args.link_of), name=args.name)
    verb = "is already up (link rates set again)" if existed else "is up"
    print(f"virtual cluster {cluster.name!r} {verb}: {len(cluster.nodes)} nodes on 198.18.{cluster.subnet}.0/24, "
          f"mpiexec reaches them from {cluster.bridge_address}")
    return _status(args, cluster)


def _run(args) -> int:
    from .cluster import VirtualCluster
    from .launcher import describe

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    cluster = VirtualCluster.attach(args.name)
    if args.dry_run:
        print(describe(cluster, args.np, argv, args.ppn, args.mpiexec))
        return 0
    if getattr(args, "max_restarts", None) is not None:
        if args.deadline is not None:
            raise ValueError("--deadline and --max-restarts do not go together (a supervised job ends by itself; "
                             "dtrain train --timeout bounds each collective)")
        return args.supervise(args, argv)
    return cluster.run(args.np, argv, ppn=args.ppn, timeout=args.deadline, mpiexec=args.mpiexec).returncode


def _fault(args) -> int:
    from .cluster import VirtualCluster

    cluster = VirtualCluster.attach(args.name)
    action = args.action or "rate"
    node = cluster.fault(args.node, action, args.rate)
    from .net import format_rate

    print(f"node {node.index} ({node.hostname}): link {node.link_state}, {format_rate(node.rate_bps)}")
    return 0


def _status(args, cluster=None) -> int:
    from .cluster import VirtualCluster

    if cluster is None:
        cluster = VirtualCluster.attach(args.name)
    rows = cluster.status()
    if getattr(args, "json", False):
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'node':>4}  {'hostname':<10} {'address':<14} {'rate':>8}  {'link':<5} {'MB to node':>11} "
          f"{'MB from node':>12} {'procs':>5}")
    for r in rows:
        print(f"{r['node']:>4}  {r['hostname']:<10} {r['address']:<14} {r['rate']:>8}  {r['link']:<5} "
              f"{r['bytes_to_node'] / 1e6:>11.1f} {r['bytes_from_node'] / 1e6:>12.1f} {r['processes']:>5}")
    return 0


def _down(args) -> int:
    from .cluster import VirtualCluster

    VirtualCluster.teardown(args.name)
    print(f"virtual cluster {args.name!r} is down")
    return 0


_COMMANDS = {"up": _up, "run": _run, "fault": _fault, "status": _status, "down": _down}
