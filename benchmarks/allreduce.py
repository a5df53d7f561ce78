"""All-reduce bandwidth, nccl-tests style: dtrain's pipelined ring against MPI_Allreduce in the same run.

What is measured
    For message sizes 4 KB .. 256 MB (x4 steps), float32, op "sum", at each world size: the time of one
    ``dtrain.distributed.allreduce`` with ``algorithm="ring"`` (dtrain's ring: reduce-scatter + all-gather over
    mpi4py Isend/Irecv/Sendrecv, reduce steps pipelined in pieces of ``PIPELINE_BYTES``) and with
    ``algorithm="mpi"`` (MPI_Allreduce of the MPI library, the reference). The measuring loop is
    ``dtrain.distributed.collectives.measure_allreduce``: per size, warm-up rounds, then repeats in which the
    two algorithms alternate; before each timed call the array is refilled (untimed) and all ranks
    meet at a barrier; a repeat's time is the slowest rank's; the table reports the median over the
    repeats (the CSV also has the best). As in nccl-tests, algbw = bytes / time and
    busbw = algbw * 2 (n - 1) / n (the bytes each rank must send and receive in a bandwidth-optimal
    all-reduce, so busbw is comparable across world sizes). GB/s are 1e9 bytes per second.

    Two diagnostics follow for 4 MB .. 64 MB (world size > 1): where the ring's time goes (its
    reduce-scatter and all-gather phases timed separately, against the bare NumPy additions the
    reduce-scatter must do), and a sweep of the pipeline piece size (interleaved, same timing rules),
    which is how ``PIPELINE_BYTES`` was chosen.

How to run
    /work/venv/bin/python benchmarks/allreduce.py                  # runs mpiexec -n 2 and -n 4 itself
    /work/venv/bin/python benchmarks/allreduce.py --ranks 2,3,4 --out /tmp/res
    mpiexec -n 4 python benchmarks/allreduce.py                    # just the world it is launched in

Outputs ``allreduce.md`` (tables, diagnostics, machine, exact command) and ``allreduce.csv`` in ``--out``.
No assertion is made on timings (the measuring loop only checks each result equals the world size).
``main(argv)`` is the entry point for ``dtrain bench allreduce``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_section, cpu_model, find_mpiexec, fmt_load, launcher_flags, under_mpiexec  # noqa: E402

KB, MB = 1 << 10, 1 << 20
DEFAULT_SIZES = [4 * KB * 4**k for k in range(9)]  # 4 KB .. 256 MB
DIAG_SIZES = [4 * MB, 16 * MB, 64 * MB]
SWEEP_PIECES = [128 * KB, 256 * KB, 512 * KB, 1 * MB, 2 * MB, 4 * MB, 0]  # 0: no pipelining (one piece per step)
GOALS = ((256 * KB, 1 * MB, 0.9), (4 * MB, None, 1.2))  # (from, to, ring/mpi busbw goal)


def auto_repeats(nbytes: int) -> int:
    """Enough repeats for a stable median without making 256 MB take minutes."""
    return int(min(50, max(7, 4e8 // nbytes)))


def fmt_size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", MB), ("KB", KB)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


# ---------------------------------------------------------------------------------------------
# Rank side: measure in the world this process was launched in
# ---------------------------------------------------------------------------------------------


def phase_breakdown(world, sizes, repeats: int = 15) -> list[dict]:
    """Median times of the ring's two phases and of the local additions its reduce-scatter performs."""
    from dtrain.distributed import collectives as C

    n, out = world.size, []
    for nbytes in sizes:
        a = np.ones(nbytes // 4, np.float32)
        bounds = C.chunk_bounds(a.size, n)
        chunk = a[bounds[0][0]:bounds[0][1]]
        scratch = np.ones_like(chunk)
        t = {"reduce_scatter": [], "allgather": [], "add": [], "total": []}
        for i in range(2 + repeats):
            a.fill(1.0)
            world.barrier()
            t0 = time.perf_counter()
            C._ring_reduce_scatter(world, a, a, bounds, False)  # the ring's two phases, called separately
            t1 = time.perf_counter()
            C._ring_allgather(world, a, bounds)
            t2 = time.perf_counter()
            for _ in range(n - 1):  # the additions of the reduce-scatter, without communication
                np.add(chunk, scratch, out=scratch)
            t3 = time.perf_counter()
            world.barrier()
            a.fill(1.0)
            t4 = time.perf_counter()
            C.allreduce(a, op="sum", comm=world)
            t5 = time.perf_counter()
            if i >= 2:
                for key, dt in (("reduce_scatter", t1 - t0), ("allgather", t2 - t1), ("add", t3 - t2),
                                ("total", t5 - t4)):
                    t[key].append(dt)
        med = {k: float(np.median(_slowest(world, v))) for k, v in t.items()}
        out.append({"size_bytes": nbytes, "world_size": n, **{f"{k}_s": v for k, v in med.items()}})
    return out


def _slowest(world, times) -> np.ndarray:
    """Per repeat, the slowest rank's time."""
    from mpi4py import MPI

    t = np.array(times, dtype=np.float64)
    world.comm.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
    return t


def pipeline_sweep(world, sizes, pieces, repeats: int = 12) -> list[dict]:
    """Ring all-reduce time per pipeline piece size (interleaved within each repeat)."""
    from dtrain.distributed import collectives as C

    saved = C.PIPELINE_BYTES
    out = []
    try:
        for nbytes in sizes:
            a = np.ones(nbytes // 4, np.float32)
            times = {p: [] for p in pieces}
            for i in range(2 + repeats):
                for p in pieces:
                    C.PIPELINE_BYTES = p if p else 1 << 40
                    a.fill(1.0)
                    world.barrier()
                    t0 = time.perf_counter()
                    C.allreduce(a, op="sum", comm=world)
                    dt = time.perf_counter() - t0
                    if i >= 2:
                        times[p].append(dt)
            for p in pieces:
                worst = _slowest(world, times[p])
                out.append({"size_bytes": nbytes, "world_size": world.size, "pipeline_bytes": p,
                            "time_s": float(np.median(worst))})
    finally:
        C.PIPELINE_BYTES = saved
    return out


def measure_world(args) -> dict:
    """Run every measurement in this process's MPI world; the result is the same dict on every rank."""
    from mpi4py import MPI

    import dtrain.distributed.comm as dcomm
    from dtrain.distributed import collectives as C

    world = dcomm.init()
    # Warm the whole path (connections between every pair of neighbours, MPI's internal buffers, caches)
    # before the first timed size, which would otherwise pay for it.
    C.measure_allreduce([args.sizes[0], 1 * MB], args.algorithms, repeats=1, warmup=20, comm=world)
    rows = []
    for nbytes in args.sizes:
        repeats = args.repeats or auto_repeats(nbytes)
        for row in C.measure_allreduce([nbytes], args.algorithms, repeats=repeats, warmup=args.warmup, comm=world):
            row["pipeline_bytes"] = C.PIPELINE_BYTES
            rows.append(row)
            if world.rank == 0:
                print(f"n={world.size} {fmt_size(row['size_bytes']):>7} {row['algorithm']:5} "
                      f"{row['time_s'] * 1e6:11.1f} us  busbw {row['busbw_GBps']:6.2f} GB/s", flush=True)
    diag = [s for s in DIAG_SIZES if s <= max(args.sizes)]
    phases = phase_breakdown(world, diag) if world.size > 1 and args.diagnostics else []
    sweep = pipeline_sweep(world, diag, SWEEP_PIECES) if world.size > 1 and args.diagnostics else []
    return {
        "world_size": world.size, "rows": rows, "phases": phases, "sweep": sweep,
        "thread_level": world.thread_level, "node_count": world.node_count,
        "mpi_library": " ".join(MPI.Get_library_version().splitlines()[0].split()),
        "mpi4py": __import__("mpi4py").__version__, "pipeline_bytes": C.PIPELINE_BYTES,
        "pipeline_depth": C.PIPELINE_DEPTH,
    }


# ---------------------------------------------------------------------------------------------
# Launcher side: one mpiexec per world size, then one combined report
# ---------------------------------------------------------------------------------------------


def launch(n: int, args, json_path: Path) -> None:
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit("allreduce benchmark: no mpiexec found (pip install mpich)")
    flags = list(launcher_flags(mpiexec))
    cmd = [mpiexec, *flags, "-n", str(n), sys.executable, str(Path(__file__).resolve()), "--worker", str(json_path),
           "--sizes", ",".join(map(str, args.sizes)), "--algorithms", ",".join(args.algorithms),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats or 0)]
    if not args.diagnostics:
        cmd.append("--no-diagnostics")
    subprocess.run(cmd, check=True)


def goal_text(nbytes: int) -> tuple[float | None, str]:
    for lo, hi, goal in GOALS:
        if nbytes >= lo and (hi is None or nbytes <= hi):
            return goal, f">= {goal}"
    return None, ""


def result_tables(results: list[dict]) -> list[str]:
    lines = []
    for res in results:
        n = res["world_size"]
        by = {(r["size_bytes"], r["algorithm"]): r for r in res["rows"]}
        sizes = sorted({r["size_bytes"] for r in res["rows"]})
        algs = list(dict.fromkeys(r["algorithm"] for r in res["rows"]))
        lines += [f"### {n} ranks", ""]
        head = "| size | count |"
        rule = "|---:|---:|"
        for alg in algs:
            head += f" {alg} time (µs) | {alg} algbw (GB/s) | {alg} busbw (GB/s) |"
            rule += "---:|---:|---:|"
        if {"ring", "mpi"} <= set(algs):
            head += " ring/mpi busbw | goal |"
            rule += "---:|:---|"
        lines += [head, rule]
        for s in sizes:
            line = f"| {fmt_size(s)} | {by[(s, algs[0])]['count']:,} |"
            for alg in algs:
                r = by[(s, alg)]
                line += f" {r['time_s'] * 1e6:,.1f} | {r['algbw_GBps']:.2f} | {r['busbw_GBps']:.2f} |"
            if {"ring", "mpi"} <= set(algs):
                ratio = by[(s, "mpi")]["time_s"] / by[(s, "ring")]["time_s"]  # = ring busbw / mpi busbw
                goal, text = goal_text(s)
                verdict = "" if goal is None else f"{text}: {'met' if ratio >= goal else 'missed'}"
                line += f" **{ratio:.2f}** | {verdict} |"
            lines.append(line)
        lines.append("")
    return lines


def goal_summary(results: list[dict]) -> list[str]:
    lines = []
    for res in results:
        by = {(r["size_bytes"], r["algorithm"]): r for r in res["rows"]}
        parts = []
        for lo, hi, goal in GOALS:
            ratios = [by[(s, "mpi")]["time_s"] / by[(s, "ring")]["time_s"] for (s, alg) in by
                      if alg == "ring" and (s, "mpi") in by and s >= lo and (hi is None or s <= hi)]
            if ratios:
                span = f"{fmt_size(lo)} to {fmt_size(hi)}" if hi else f">= {fmt_size(lo)}"
                met = sum(r >= goal for r in ratios)
                parts.append(f"{span} (goal >= {goal}x): ring/mpi busbw {min(ratios):.2f}x to {max(ratios):.2f}x, "
                             f"goal met at {met} of {len(ratios)} sizes")
        if parts:
            lines.append(f"- {res['world_size']} ranks: " + "; ".join(parts) + ".")
    return lines


def diagnostic_tables(results: list[dict]) -> list[str]:
    lines = []
    phases = [p for res in results for p in res["phases"]]
    if phases:
        lines += ["## Where the ring's time goes", "",
                  "Each phase timed on its own (slowest rank, median of 15): the reduce-scatter (n-1 pipelined "
                  "steps, each a transfer of one chunk plus its addition), the all-gather (n-1 Sendrecv steps "
                  "of one chunk), and, for comparison, the same n-1 chunk additions with no communication "
                  "(`np.add(out=...)`, the compute floor of the reduce-scatter). `ring` is a full "
                  "`allreduce` call measured in the same loop. The all-gather moves the same bytes as the "
                  "reduce-scatter with no arithmetic, so all-gather + additions - reduce-scatter estimates "
                  "the time the pipelining hides (transfer overlapping addition).", "",
                  "| ranks | size | reduce-scatter (ms) | all-gather (ms) | ring total (ms) | bare additions (ms) "
                  "| hidden by overlap (ms) |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for p in phases:
            lines.append(f"| {p['world_size']} | {fmt_size(p['size_bytes'])} | {p['reduce_scatter_s'] * 1e3:.2f} | "
                         f"{p['allgather_s'] * 1e3:.2f} | {p['total_s'] * 1e3:.2f} | {p['add_s'] * 1e3:.2f} | "
                         f"{(p['allgather_s'] + p['add_s'] - p['reduce_scatter_s']) * 1e3:.2f} |")
        lines.append("")
    sweep = [s for res in results for s in res["sweep"]]
    if sweep:
        pieces = list(dict.fromkeys(s["pipeline_bytes"] for s in sweep))
        lines += ["## Pipeline piece size (PIPELINE_BYTES)", "",
                  "Ring all-reduce time in ms (median of 12, all piece sizes interleaved in every repeat; "
                  "'none' = one piece per step, no pipelining).", "",
                  "| ranks | size | " + " | ".join(fmt_size(p) if p else "none" for p in pieces) + " |",
                  "|---:|---:|" + "---:|" * len(pieces)]
        keys = list(dict.fromkeys((s["world_size"], s["size_bytes"]) for s in sweep))
        by = {(s["world_size"], s["size_bytes"], s["pipeline_bytes"]): s["time_s"] for s in sweep}
        for n, size in keys:
            vals = [by[(n, size, p)] for p in pieces]
            best = min(vals)
            cells = [f"**{v * 1e3:.2f}**" if v == best else f"{v * 1e3:.2f}" for v in vals]
            lines.append(f"| {n} | {fmt_size(size)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# What profiling showed while the ring was written (fixed text: the script does not re-run py-spy).
PROFILE_NOTES = [
    "## Profile and optimisations (done once while developing; not re-measured by this script)", "",
    "- `py-spy record --native` of 2 ranks looping over 16 MB ring all-reduces: about 30% of a rank's time in "
    "MPICH's shared-memory copies (memcpy), 15% in NumPy's float32 addition (`FLOAT_add`, in place through "
    "`np.add(a, b, out=...)`: no temporaries), 30% waiting in MPI's progress loop (`sched_yield`: the "
    "neighbour has not sent yet), under 3% in dtrain's Python bookkeeping. At 256 KB: about 90% inside "
    "MPI calls, about 2% in Python.",
    "- A reduce step that fits in one piece used four MPI calls (Irecv, Isend, Wait, Waitall); it is now one "
    "`Sendrecv`: 2 ranks, 4 KB 24 -> 13 µs, 256 KB 79 -> about 45 µs.",
    "- The wire-dtype -> MPI datatype table was rebuilt on every call (1.5% of the 16 MB profile); it is "
    "built once.",
    "- Pipelining (sweep above, and the same sweep repeated while developing): pieces under 512 KB pay "
    "per-message costs; 1-2 MB pieces were the fastest at 64 MB (15-25% ahead of one piece per step), "
    "while at 4-16 MB the piece size is within run-to-run noise (MPICH moves shared-memory data only inside "
    "MPI calls, so a transfer overlaps the neighbour's addition rather than this rank's). Windows of 3 or 4 "
    "pieces in flight measured within noise of 2. Kept: 1 MB, 2 in flight.",
    "- float16: NumPy's float16 <-> float32 casts are not vectorised in this NumPy build (about 1.3 ns per "
    "element, against 0.25 ns for ml_dtypes' bfloat16), so a float16 ring step costs about 5x a float32 "
    "one; the cast and the addition are fused (`np.add(h1, h2, out=f32, dtype=float32)`).",
    "- Run-to-run spread (seven runs while developing, on this shared 2-core VM): 2 ranks, "
    "ring/mpi busbw 0.95-0.98x at 256 KB, 1.10-1.19x at 1 MB, 1.13-1.30x at 4 MB, 1.25-1.38x at 16 MB, "
    "2.8-3.9x at 64-256 MB; 4 ranks (oversubscribed) 0.53-0.81x at 256 KB, 0.97-0.99x at 1 MB, 1.07-1.34x "
    "at 4 MB, 1.13-1.25x at 16 MB, 2.1-4.0x at 64-256 MB. Single runs near a goal's threshold can land "
    "on either side of it.",
    "- Why the ring loses at small sizes: it takes 2(n-1) dependent steps where MPICH's small-message "
    "algorithms take about log2(n), so each step's latency (and, at 4 ranks on 2 cores, each wait for the "
    "neighbour to be scheduled) counts more; Python is not the cost (about 2% at 256 KB).",
    "",
]


def write_outputs(out: Path, results: list[dict], command: str, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    first = results[0]
    ranks = ", ".join(str(r["world_size"]) for r in results)
    cores = os.cpu_count()
    over = [r["world_size"] for r in results if cores and r["world_size"] > cores]
    md = ["# All-reduce bandwidth: dtrain ring vs MPI_Allreduce", "",
          f"nccl-tests style, float32, op sum, {ranks} ranks on one machine with {cores} logical cores. "
          "`ring` is `dtrain.distributed.allreduce(a, op=\"sum\", algorithm=\"ring\")`: reduce-scatter then all-gather "
          "around the ring over mpi4py's buffer interface, each reduce step pipelined in pieces of "
          f"{fmt_size(first['pipeline_bytes'])} ({first['pipeline_depth']} in flight); `mpi` is "
          "`algorithm=\"mpi\"`, MPI_Allreduce of the same MPI library, in the same run.", "",
          "Timing: per size, warm-up rounds, then repeats in which the two algorithms alternate (7 to 50 "
          "repeats, fewer for big sizes; the CSV has the counts); the array is refilled (untimed) and all "
          "ranks meet at a barrier before each timed call; a repeat's time is the slowest rank's; tables "
          "show the median. algbw = size / time; busbw = algbw * 2(n-1)/n; GB/s = 1e9 B/s. Ratios > 1 mean "
          "the ring is faster.", ""]
    if over:
        md += [f"**Oversubscribed:** {', '.join(map(str, over))} ranks share {cores} cores here, so ranks take "
               "turns on the CPU (MPICH yields while it waits for a message). Those rows measure how the two "
               "algorithms behave under contention, not what they would reach with a core per rank; the "
               "absolute bandwidths are far below what the memory system allows.", ""]
    md += ["## Results", "", *result_tables(results), "Goals (reported, not asserted): ring busbw >= 1.2x MPI's "
           "at >= 4 MB and >= 0.9x at 256 KB to 1 MB.", "", *goal_summary(results), ""]
    md += diagnostic_tables(results)
    md += PROFILE_NOTES
    md += ["## Machine", "",
           f"- CPU: {cpu_model()} ({cores} logical cores visible), one process per rank, one thread each "
           "(OMP/OPENBLAS/MKL_NUM_THREADS=1)",
           f"- MPI: {first['mpi_library']}; mpi4py {first['mpi4py']}; thread level {first['thread_level']}; "
           f"{first['node_count']} node",
           f"- Python {platform.python_version()}, NumPy {np.__version__}",
           f"- load average (1/5/15 min) at start {fmt_load(meta['load_start'])}, at end {fmt_load(meta['load_end'])}",
           f"- wall time of the whole run: {meta['wall_s']:.0f} s", "", *command_section(command)]
    (out / "allreduce.md").write_text("\n".join(md))
    fields = ["world_size", "size_bytes", "count", "dtype", "algorithm", "time_s", "min_time_s", "algbw_GBps",
              "busbw_GBps", "repeats", "pipeline_bytes"]
    with open(out / "allreduce.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for res in results:
            for row in res["rows"]:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def parse_args(argv):
    p = argparse.ArgumentParser(prog="allreduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="2,4",
                   help="world sizes to launch with mpiexec when not already under mpiexec (default 2,4)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="message sizes in bytes, comma-separated")
    p.add_argument("--algorithms", default="ring,mpi", help="comma-separated (default ring,mpi)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per size (default 0: 7 to 50 by size)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds per size (default 3)")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="skip the phase breakdown and the pipeline sweep")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    args.ranks = [int(r) for r in args.ranks.split(",") if r]
    if not args.sizes or min(args.sizes) < 4 or args.repeats < 0 or args.warmup < 0 or min(args.ranks) < 1:
        p.error("sizes must be >= 4 bytes, repeats and warmup >= 0, ranks >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv]) if argv is None else shlex.join(argv)
    if args.worker is not None or under_mpiexec():
        load_start, t0 = os.getloadavg(), time.perf_counter()
        res = measure_world(args)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            if args.worker is not None:
                args.worker.write_text(json.dumps(res))
            else:
                meta = {"load_start": load_start, "load_end": os.getloadavg(), "wall_s": time.perf_counter() - t0}
                write_outputs(args.out, [res], f"mpiexec -n {res['world_size']} {command}", meta)
                print(f"wrote {args.out / 'allreduce.md'} and {args.out / 'allreduce.csv'}")
        return 0
    load_start, t0 = os.getloadavg(), time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            path = Path(tmp) / f"n{n}.json"
            launch(n, args, path)
            results.append(json.loads(path.read_text()))
    meta = {"load_start": load_start, "load_end": os.getloadavg(), "wall_s": time.perf_counter() - t0}
    write_outputs(args.out, results, command, meta)
    print("\n".join(result_tables(results)))
    print(f"wrote {args.out / 'allreduce.md'} and {args.out / 'allreduce.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
