"""All-reduce bus bandwidth on the virtual cluster's shaped links: dtrain's ring, the hierarchical all-reduce
and MPI_Allreduce, against the bandwidth the links allow.

What is measured
    For every link rate (``--links``) and number of nodes K (``--shapes KxM``) a virtual cluster
    (:mod:`dtrain.cluster`) of K nodes comes up with every link shaped to that rate; for every M it runs
    K*M ranks (block placement: ranks 0..M-1 on node 0, ...) with MPICH over TCP, so every byte between
    nodes crosses a shaped link. The ranks time float32 sum all-reduces of each ``--sizes`` with
    ``algorithm="ring"``, ``"hierarchical"`` and ``"mpi"`` (MPI_Allreduce on the world), interleaved in each
    repeat, through :func:`dtrain.distributed.measure.measure_allreduce` (refill, barrier, slowest rank's
    time, median over the repeats after warm-up rounds). algbw = S / t, busbw = algbw * 2(N-1)/N
    (nccl-tests). ``--pipelines`` adds rings with other pipeline parameters at the largest size.

The link bound
    A flat ring over N ranks placed in blocks has one edge leaving each node, and every ring edge carries
    2(N-1)/N * S, so each node's link must send 2(N-1)/N * S: its fastest time is that over the link's
    goodput, and its busbw bound is the goodput itself. The goodput of TCP through ``tc tbf`` is the rate
    times 1448/1514: tbf counts whole Ethernet frames, and a full 1500-byte-MTU frame (14 bytes Ethernet +
    20 IP + 32 TCP with timestamps) carries 1448 bytes of payload (0.956; iperf-style measurements on these
    links gave 950 Mbit/s at 1gbit). The hierarchical all-reduce sends 2(K-1)/K * S per link (one ring over
    the node leaders), so its bound in bus terms is the goodput * ((N-1)/N) / ((K-1)/K). MPI_Allreduce's
    schedule is the library's own; it is held to the flat ring's bound. Besides the timings, the ranks read
    their node's tc counter (bytes the node sent on its link) around a few all-reduces of the largest
    size per algorithm: bytes per all-reduce per node against the model, the proof the bytes crossed the
    links. ``--reference-link 20gbit`` runs every shape once more at a rate the links never reach: the
    host's ceiling (all nodes share its CPUs), reported beside the verdicts.

How to run (root; see docs/cluster.md)
    dtrain bench cluster_allreduce --reference-link 20gbit     # the defaults: --shapes 2x1,2x2,4x1,4x2
        --links 1gbit,2gbit --sizes 4MiB,16MiB,64MiB; about 4 minutes on an idle 2-core machine
    dtrain bench cluster_allreduce --shapes 2x1,4x1 --sizes 16MiB --pipelines 256K:2,512K:2,4M:2,1M:4
        ring pipeline settings against the default (about a minute)
    DTRAIN_BENCH_CLUSTER=NAME ... uses another cluster name (default ``bench``).

Outputs ``cluster_allreduce.csv``, ``.json``, ``.md`` (tables, verdicts against the goal: ring >= 0.9x
the link bound and >= MPI_Allreduce at the largest size, exact command, machine) and ``busbw.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from ..cluster.cli import rate_arg
from .allreduce import _csv, _size
from .allreduce_report import MB, fmt_size
from .machine import load_avg, machine_info, mpi_library
from .oncluster import bench_cluster_name, parse_shape
from .ranks import launch_worker
from .report import OUT_HELP, command_line, default_out

HELP = "all-reduce busbw on the virtual cluster's shaped links: ring, hierarchical, MPI_Allreduce vs the link bound"
ALGORITHMS = ("ring", "hierarchical", "mpi")


def auto_repeats(nbytes: int) -> int:
    """Timed repeats per size: 4 at 32 MiB and above, 8 at 16 MiB, 10 at 8 MiB and below (the links are steady:
    the medians move by a few per cent; the whole default sweep stays near four minutes)."""
    return int(min(10, max(4, (128 * MB) // max(nbytes, 1))))


# ---------------------------------------------------------------------------------------------
# Rank side
# ---------------------------------------------------------------------------------------------


def _bytes(text: str) -> int:
    """argparse type of a size: what ``dtrain bench allreduce`` takes (4096, 4K, 4M, 4MB), also written 4MiB."""
    t = text.strip()
    return _size(t[:-2] + "B" if t[-3:-2].isalpha() and t[-2:].lower() == "ib" else t)


def _pipeline(text: str) -> tuple[int, int]:
    """argparse type of one ``--pipelines`` entry: ``BYTES:DEPTH``, e.g. ``4M:2``."""
    piece, sep, depth = text.partition(":")
    if not sep or not depth.strip().isdigit() or int(depth) < 1:
        raise argparse.ArgumentTypeError(f"expected PIECE:DEPTH, e.g. 4M:2 (piece bytes, pieces in flight), "
                                         f"got {text!r}")
    return _bytes(piece), int(depth)


def _node_sent_bytes(world) -> int:
    """Bytes this node has sent on its link (tc counter of eth0 in the node's namespace), read by the node's
    local rank 0; 0 on the other ranks."""
    from ..cluster.net import qdisc_bytes

    return qdisc_bytes("eth0") if world.local_rank == 0 else 0


def link_bytes_per_allreduce(world, nbytes: int, algorithms, rounds: int) -> dict[str, list[float]]:
    """Per algorithm, per node: bytes the node sent on its link per all-reduce of ``nbytes`` (``rounds`` of
    them between two reads of the node's tc counter; the barriers add a few hundred bytes)."""
    import numpy as np

    import dtrain.distributed as dist

    a = np.ones(max(1, nbytes // 4), np.float32)
    out = {}
    for alg in algorithms:
        world.barrier()
        before = _node_sent_bytes(world)
        for _ in range(rounds):
            dist.allreduce(a, op="sum", algorithm=alg, comm=world)
        world.barrier()
        sent = _node_sent_bytes(world) - before
        per_rank = world.comm.allgather(sent if world.local_rank == 0 else None)
        out[alg] = [b / rounds for b in per_rank if b is not None]
    return out


def _labelled(rows: list[dict], labels: list[str]) -> list[dict]:
    """measure_allreduce's rows (per size, one per algorithm in the order given) under our labels."""
    return [{**r, "algorithm": labels[i % len(labels)]} for i, r in enumerate(rows)]


def measure_world(args) -> dict:
    """The rank side: every size with every algorithm, the pipeline variants, the link bytes."""
    import dtrain.distributed as dist
    from dtrain.distributed.algorithms.ring import RingAllreduce
    from dtrain.distributed.measure import measure_allreduce

    world = dist.init()
    # Warm every connection (ring neighbours, node leaders, MPI's own) before the first timed size.
    measure_allreduce([1 * MB], ALGORITHMS, repeats=1, warmup=3, comm=world)
    rows = []
    for nbytes in args.sizes:
        repeats = args.repeats or auto_repeats(nbytes)
        rows += measure_allreduce([nbytes], ALGORITHMS, repeats=repeats, warmup=args.warmup, comm=world)
        if world.rank == 0:
            print(f"  N={world.size} {nbytes >> 10} KiB: " + ", ".join(
                f"{r['algorithm']} {r['busbw_GBps']:.3f}" for r in rows[-len(ALGORITHMS):]) + " GB/s busbw",
                flush=True)
    default = RingAllreduce()
    variants = []
    if args.pipelines:
        rings = [default, *(RingAllreduce(p, d) for p, d in args.pipelines)]
        labels = [f"ring {fmt_size(r.pipeline_bytes).replace(' ', '')}:{r.pipeline_depth}" for r in rings]
        biggest = max(args.sizes)
        variants = _labelled(measure_allreduce([biggest], rings, repeats=args.repeats or auto_repeats(biggest),
                                               warmup=args.warmup, comm=world), labels)
    counted = link_bytes_per_allreduce(world, max(args.sizes), ALGORITHMS, args.byte_rounds)
    return {"world_size": world.size, "node_count": world.node_count, "ppn": world.local_size,
            "rows": rows, "variants": variants, "node_bytes": counted, "byte_rounds": args.byte_rounds,
            "pipeline_bytes": default.pipeline_bytes, "pipeline_depth": default.pipeline_depth,
            "mpi_library": mpi_library(), "thread_level": world.thread_level}


def _worker(args) -> int:
    res = measure_world(args)
    import dtrain.distributed as dist

    if dist.get_rank() == 0:
        args.worker.write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------------
# Launcher side: one cluster per (link, K), one launch per M
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench cluster_allreduce`` / ``python benchmarks/cluster_allreduce.py``."""
    p.add_argument("--shapes", type=_csv(parse_shape), default=[parse_shape(s) for s in ("2x1", "2x2", "4x1", "4x2")],
                   help="cluster shapes KxM (K >= 2 nodes, M ranks per node), comma-separated (default "
                        "2x1,2x2,4x1,4x2)")
    p.add_argument("--links", type=_csv(rate_arg), default=["1gbit", "2gbit"],
                   help="link rates, tc units, comma-separated (default 1gbit,2gbit)")
    p.add_argument("--reference-link", type=rate_arg, default=None, metavar="RATE",
                   help="also run every shape at this rate, far above the others (e.g. 20gbit), as the host's "
                        "ceiling: what the CPUs can move when the links do not limit (default: none)")
    p.add_argument("--sizes", type=_csv(_bytes), default=[4 * MB, 16 * MB, 64 * MB],
                   help="message sizes, e.g. 4MiB,16MiB,64MiB (the default)")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed repeats per size (default 0: 10 up to 8 MiB, 8 at 16 MiB, 4 from 32 MiB)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds per size (default 1)")
    p.add_argument("--pipelines", type=_csv(_pipeline), default=[], metavar="PIECE:DEPTH,...",
                   help="also time rings with these pipeline parameters at the largest size, e.g. 256K:2,4M:2,1M:4 "
                        "(default: none; the library default is always measured)")
    p.add_argument("--byte-rounds", type=int, default=1,
                   help="all-reduces of the largest size per algorithm between two reads of the tc counters "
                        "(default 1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one launch may run (default 900)")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)


def check_arguments(args) -> None:
    """SystemExit naming the bad value: shapes need K >= 2 (a link bound needs links), counts >= their minimum."""
    one_node = [str(s) for s in args.shapes if s.nodes < 2]
    if one_node:
        raise SystemExit(f"cluster_allreduce benchmark: shapes {', '.join(one_node)} have one node (no link to "
                         "measure): expected K >= 2 in KxM")
    for name, value, least in (("--repeats", args.repeats, 0), ("--warmup", args.warmup, 0),
                               ("--byte-rounds", args.byte_rounds, 1)):
        if value < least:
            raise SystemExit(f"cluster_allreduce benchmark: {name} must be >= {least}, got {value}")
    if args.reference_link in args.links:
        raise SystemExit(f"cluster_allreduce benchmark: --reference-link {args.reference_link} is one of --links "
                         f"{','.join(args.links)}: expected a rate far above them (e.g. 20gbit)")
    if args.timeout <= 0:
        raise SystemExit(f"cluster_allreduce benchmark: --timeout must be > 0 seconds, got {args.timeout}")


def _worker_flags(args) -> list[str]:
    flags = ["--sizes", ",".join(map(str, args.sizes)), "--repeats", str(args.repeats), "--warmup",
             str(args.warmup), "--byte-rounds", str(args.byte_rounds)]
    if args.pipelines:
        flags += ["--pipelines", ",".join(f"{p}:{d}" for p, d in args.pipelines)]
    return flags


def _run_on(cluster, link: str, nodes: int, ppn: int, args, tmp: Path) -> dict:
    """One launch of K*M ranks on ``cluster``: the ranks' result plus the link and the host's byte counters."""
    path = tmp / f"{link}-{nodes}x{ppn}.json"
    print(f"cluster_allreduce: {nodes}x{ppn} at {link}", flush=True)
    before, t0 = cluster.link_bytes(), time.perf_counter()
    launch_worker(__name__, nodes * ppn, path, _worker_flags(args), args.timeout, cluster=cluster, ppn=ppn)
    res = json.loads(path.read_text())
    res.update(link=link, link_bps=cluster.nodes[0].rate_bps, nodes=nodes, shape=f"{nodes}x{ppn}",
               launch_link_bytes=cluster.link_bytes() - before, launch_s=time.perf_counter() - t0)
    return res


def sweep(args) -> list[dict]:
    """Every (link, K, M): one cluster per (link, K), brought up fresh and always taken down."""
    from ..cluster import ClusterError, VirtualCluster

    name = bench_cluster_name()
    by_nodes: dict[int, list[int]] = {}
    for s in args.shapes:
        by_nodes.setdefault(s.nodes, [])
        if s.ppn not in by_nodes[s.nodes]:
            by_nodes[s.nodes].append(s.ppn)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for link in args.links + ([args.reference_link] if args.reference_link else []):
            for nodes, ppns in sorted(by_nodes.items()):
                try:
                    VirtualCluster.teardown(name)  # a left-over of an interrupted run may have another size
                    cluster = VirtualCluster.up(nodes, link, name=name)
                except ClusterError as exc:
                    raise SystemExit(f"cluster_allreduce benchmark: {exc}") from None
                try:
                    for ppn in ppns:
                        res = _run_on(cluster, link, nodes, ppn, args, Path(tmp))
                        results.append({**res, "reference": link == args.reference_link})
                finally:
                    cluster.down()
    return results


def run(args) -> int:
    """``dtrain bench cluster_allreduce``: the sweep over links and shapes, then the report."""
    check_arguments(args)
    if args.worker is not None:
        return _worker(args)
    from ..cluster import support_problem

    problem = support_problem()
    if problem:
        raise SystemExit(f"cluster_allreduce benchmark: {problem}")
    from .cluster_allreduce_report import write_outputs

    out = args.out or default_out("cluster_allreduce")
    info = machine_info()
    load_start, t0 = load_avg(), time.perf_counter()
    results = sweep(args)
    meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": time.perf_counter() - t0, "machine": info,
            "cluster_name": bench_cluster_name()}
    write_outputs(out, results, command_line(), meta)
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.cluster_allreduce --worker FILE
    from .cli import main

    sys.exit(main("cluster_allreduce"))
