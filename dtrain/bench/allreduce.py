"""All-reduce bandwidth, nccl-tests style: dtrain's pipelined ring against MPI_Allreduce in the same run.

What is measured
    For message sizes 4 KB .. 256 MB (x4 steps), float32, op "sum", at each world size: the time of one
    ``dtrain.distributed.allreduce`` with ``algorithm="ring"`` (dtrain's ring: reduce-scatter + all-gather over
    mpi4py Isend/Irecv/Sendrecv, reduce steps pipelined in pieces of the ring's ``pipeline_bytes``) and with
    ``algorithm="mpi"`` (MPI_Allreduce of the MPI library, the reference). The measuring loop is
    ``dtrain.distributed.measure.measure_allreduce``: per size, warm-up rounds, then repeats in which the
    algorithms alternate; before each timed call the array is refilled (untimed) and all ranks meet
    at a barrier; a repeat's time is the slowest rank's; the table reports the median over the repeats
    (the CSV also has the best). As in nccl-tests, algbw = bytes / time and busbw = algbw * 2 (n - 1) / n
    (the bytes each rank must send and receive in a bandwidth-optimal all-reduce, so busbw is comparable
    across world sizes). GB/s are 1e9 bytes per second.

    Two diagnostics follow for 4 MB .. 64 MB (world size > 1): where the ring's time goes (its two
    phases, ``dist.reduce_scatter`` and ``dist.allgather``, timed separately, against the bare NumPy
    additions the reduce-scatter must do), and a sweep of the pipeline piece size
    (``RingAllreduce(pipeline_bytes=N)`` objects, interleaved, same timing rules), which is how the
    ring's default piece size was chosen.

How to run
    python benchmarks/allreduce.py                     # = dtrain bench allreduce: runs mpiexec -n 2 and -n 4 itself
    python benchmarks/allreduce.py --ranks 2,3,4 --out /tmp/res
    mpiexec -n 4 dtrain bench allreduce                # just the world it is launched in: prints the table
    mpiexec -n 4 dtrain bench allreduce --out /tmp/res # ... and writes the report

Outputs ``allreduce.md`` (tables, diagnostics, machine, exact command) and ``allreduce.csv`` in ``--out``
(launched runs default to a fresh ``bench-results/DATE-TIME/``; under mpiexec only with ``--out``), and an
nccl-tests style table on stdout. No assertion is made on timings (the measuring loop only checks each result equals the
world size).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .allreduce_report import KB, MB, fmt_size, result_tables, write_outputs
from .machine import load_avg, mpi_library
from .ranks import launch_worker, under_mpiexec
from .report import command_line, default_out

DEFAULT_SIZES = [4 * KB * 4**k for k in range(9)]  # 4 KB .. 256 MB
DIAG_SIZES = [4 * MB, 16 * MB, 64 * MB]
SWEEP_PIECES = [128 * KB, 256 * KB, 512 * KB, 1 * MB, 2 * MB, 4 * MB, 0]  # 0: no pipelining (one piece per step)
HELP = "nccl-tests style all-reduce table: size, time, algbw, busbw per algorithm (ring vs MPI_Allreduce)"


def auto_repeats(nbytes: int) -> int:
    """Enough repeats for a stable median without making 256 MB take minutes."""
    return int(min(50, max(7, 4e8 // nbytes)))


# ---------------------------------------------------------------------------------------------
# Rank side: measure in the world this process was launched in
# ---------------------------------------------------------------------------------------------


def _slowest(world, times) -> np.ndarray:
    """Per repeat, the slowest rank's time."""
    from mpi4py import MPI

    t = np.array(times, dtype=np.float64)
    world.comm.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
    return t


def _time_phases(world, a: np.ndarray, chunk: np.ndarray, scratch: np.ndarray) -> tuple[float, ...]:
    """One round: reduce-scatter, all-gather, the reduce-scatter's additions alone, a whole all-reduce."""
    import dtrain.distributed as dist

    n, pc = world.size, time.perf_counter
    counts = [hi - lo for lo, hi in dist.chunk_bounds(a.size, n)]
    a.fill(1.0)
    world.barrier()
    t0 = pc()
    mine = dist.reduce_scatter(a, op="sum", comm=world)  # the ring's two phases, called separately
    t1 = pc()
    dist.allgather(mine, counts=counts, comm=world)
    t2 = pc()
    for _ in range(n - 1):  # the additions of the reduce-scatter, without communication
        np.add(chunk, scratch, out=scratch)
    t3 = pc()
    world.barrier()
    a.fill(1.0)
    t4 = pc()
    dist.allreduce(a, op="sum", algorithm="ring", comm=world)
    return t1 - t0, t2 - t1, t3 - t2, pc() - t4


def phase_breakdown(world, sizes, repeats: int = 15) -> list[dict]:
    """Median times of the ring's two phases and of the local additions its reduce-scatter performs."""
    import dtrain.distributed as dist

    keys = ("reduce_scatter", "allgather", "add", "total")
    out = []
    for nbytes in sizes:
        a = np.ones(nbytes // 4, np.float32)
        lo, hi = dist.chunk_bounds(a.size, world.size)[0]
        chunk = a[lo:hi].copy()
        scratch = np.ones_like(chunk)
        rounds = [_time_phases(world, a, chunk, scratch) for _ in range(2 + repeats)][2:]
        med = {k: float(np.median(_slowest(world, [r[j] for r in rounds]))) for j, k in enumerate(keys)}
        out.append({"size_bytes": nbytes, "world_size": world.size, **{f"{k}_s": v for k, v in med.items()}})
    return out


def pipeline_sweep(world, sizes, pieces, repeats: int = 12) -> list[dict]:
    """Ring all-reduce time per pipeline piece size (one ``RingAllreduce`` object per size, interleaved
    within each repeat)."""
    import dtrain.distributed as dist
    from dtrain.distributed.algorithms.ring import RingAllreduce

    rings = {p: RingAllreduce(pipeline_bytes=p if p else 1 << 40) for p in pieces}
    out = []
    for nbytes in sizes:
        a = np.ones(nbytes // 4, np.float32)
        times = {p: [] for p in pieces}
        for i in range(2 + repeats):
            for p, ring in rings.items():
                a.fill(1.0)
                world.barrier()
                t0 = time.perf_counter()
                dist.allreduce(a, op="sum", algorithm=ring, comm=world)
                dt = time.perf_counter() - t0
                if i >= 2:
                    times[p].append(dt)
        out += [{"size_bytes": nbytes, "world_size": world.size, "pipeline_bytes": p,
                 "time_s": float(np.median(_slowest(world, times[p])))} for p in pieces]
    return out


def measure_world(args) -> dict:
    """Run every measurement in this process's MPI world; the result is the same dict on every rank."""
    import dtrain.distributed as dist
    from dtrain.distributed.algorithms.ring import RingAllreduce
    from dtrain.distributed.measure import measure_allreduce

    world = dist.init()
    ring = RingAllreduce()  # the defaults every plain algorithm="ring" call uses
    # Warm the whole path (connections between every pair of neighbours, MPI's internal buffers, caches)
    # before the first timed size, which would otherwise pay for it.
    measure_allreduce([args.sizes[0], 1 * MB], args.algorithms, repeats=1, warmup=20, comm=world)
    rows = []
    for nbytes in args.sizes:
        repeats = args.repeats or auto_repeats(nbytes)
        for row in measure_allreduce([nbytes], args.algorithms, repeats=repeats, warmup=args.warmup, comm=world):
            rows.append({**row, "pipeline_bytes": ring.pipeline_bytes})
            if world.rank == 0:
                print(f"n={world.size} {fmt_size(row['size_bytes']):>7} {row['algorithm']:5} "
                      f"{row['time_s'] * 1e6:11.1f} us  busbw {row['busbw_GBps']:6.2f} GB/s", flush=True)
    diag = [s for s in DIAG_SIZES if s <= max(args.sizes)] if world.size > 1 and args.diagnostics else []
    return {
        "world_size": world.size, "rows": rows, "phases": phase_breakdown(world, diag),
        "sweep": pipeline_sweep(world, diag, SWEEP_PIECES), "thread_level": world.thread_level,
        "node_count": world.node_count, "mpi_library": mpi_library(), "mpi4py": __import__("mpi4py").__version__,
        "pipeline_bytes": ring.pipeline_bytes, "pipeline_depth": ring.pipeline_depth,
    }


def nccl_table(res: dict) -> list[str]:
    """The nccl-tests style text table of one world size (what ``mpiexec -n N dtrain bench allreduce`` prints)."""
    lines = [f"# all-reduce, float32 sum, {res['world_size']} ranks (busbw = algbw * 2(n-1)/n)",
             f"{'size':>10} {'algorithm':>9} {'time_us':>11} {'algbw GB/s':>11} {'busbw GB/s':>11}"]
    for r in res["rows"]:
        lines.append(f"{r['size_bytes']:>10} {r['algorithm']:>9} {r['time_s'] * 1e6:>11.1f} {r['algbw_GBps']:>11.3f} "
                     f"{r['busbw_GBps']:>11.3f}")
    if res["world_size"] == 1:
        lines.append("note: a world of 1 rank moves no data; run under mpiexec -n N (e.g. mpiexec -n 2 dtrain bench "
                     "allreduce)")
    return lines


# ---------------------------------------------------------------------------------------------
# Entry point: under mpiexec measure this world; else one mpiexec per world size, then one report
# ---------------------------------------------------------------------------------------------


def _size(text: str) -> int:
    units = {"": 1, "K": KB, "M": MB, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size like 4096, 4K, 1M or 256M: {text!r}") from None
    if value < 4:
        raise argparse.ArgumentTypeError(f"a size must be at least 4 bytes, got {text!r}")
    return value


def _csv(kind):
    def parse(text: str) -> list:
        values = [kind(t) for t in text.split(",") if t.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench allreduce`` / ``python benchmarks/allreduce.py``."""
    p.add_argument("--ranks", type=_csv(_positive), default=[2, 4],
                   help="world sizes to launch with mpiexec when not already under mpiexec (default 2,4)")
    p.add_argument("--sizes", type=_csv(_size), default=None,
                   help="message sizes, comma-separated, e.g. 4096,1M (default 4K .. 256M, x4 steps)")
    p.add_argument("--min-bytes", type=_size, default=None, help="with --max-bytes: sizes from this (default 4K)")
    p.add_argument("--max-bytes", type=_size, default=None, help="... up to this, times --step-factor each step")
    p.add_argument("--step-factor", type=int, default=4, choices=(2, 4, 8), help="size multiplier (default 4)")
    p.add_argument("--algorithms", type=_csv(str), default=["ring", "mpi"],
                   help="comma-separated: ring, hierarchical, mpi (default ring,mpi)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per size (default 0: 7 to 50 by size)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds per size (default 3)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="skip the phase breakdown and the pipeline sweep")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new bench-results/DATE-TIME/ when it launches mpiexec itself; under "
                        "mpiexec no files unless given)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)


def _resolve_sizes(args) -> None:
    if args.sizes is None:
        lo = args.min_bytes or 4 * KB
        hi = args.max_bytes or (DEFAULT_SIZES[-1] if args.min_bytes is None else 64 * MB)
        args.sizes = []
        while lo <= hi:
            args.sizes.append(lo)
            lo *= args.step_factor
    if not args.sizes or args.repeats < 0 or args.warmup < 0:
        raise SystemExit(f"allreduce benchmark: need at least one size and repeats, warmup >= 0; got sizes "
                         f"{args.sizes}, repeats {args.repeats}, warmup {args.warmup}")


def _worker_flags(args) -> list[str]:
    flags = ["--sizes", ",".join(map(str, args.sizes)), "--algorithms", ",".join(args.algorithms),
             "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    return flags + ([] if args.diagnostics else ["--no-diagnostics"])


def _in_this_world(args) -> int:
    load_start, t0 = load_avg(), time.perf_counter()
    res = measure_world(args)
    import dtrain.distributed as dist

    if dist.get_rank() != 0:
        return 0
    if args.worker is not None:
        args.worker.write_text(json.dumps(res))
        return 0
    print("\n".join(nccl_table(res)))
    if args.out is not None:
        meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": time.perf_counter() - t0}
        write_outputs(args.out, [res], f"mpiexec -n {res['world_size']} {command_line()}", meta)
    return 0


def run(args) -> int:
    """``dtrain bench allreduce``: measure the world it runs in (under mpiexec), else launch each world size."""
    _resolve_sizes(args)
    if args.worker is not None or under_mpiexec():
        return _in_this_world(args)
    out = args.out or default_out()
    load_start, t0 = load_avg(), time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            path = Path(tmp) / f"n{n}.json"
            launch_worker(__name__, n, path, _worker_flags(args))
            results.append(json.loads(path.read_text()))
    meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": time.perf_counter() - t0}
    write_outputs(out, results, command_line(), meta)
    print("\n".join(result_tables(results)))
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.allreduce
    from .cli import main

    sys.exit(main("allreduce"))
