"""Strong and weak scaling of data-parallel training, with the step split into its phases.

What is measured
    For each world size K of ``--ranks`` the sweep starts ``mpiexec -n K python -m dtrain.bench.scaling
    --worker ...`` (one BLAS thread per rank). In that world, for each mode:

    * **weak**: ``--batch`` samples per rank (the global batch grows with K);
    * **strong**: a fixed global batch ``--global-batch``, split over the ranks (rank r gets
      ``B // K`` plus one of the first ``B % K`` leftovers);

    it trains ``--model`` (zoo model; synthetic standard-normal inputs, random labels, softmax cross
    entropy, SGD lr 0.01 momentum 0.9) wrapped in ``DistributedDataParallel(bucket_cap_mb=--bucket-mb,
    compression=--compression, algorithm=--algorithm, overlap=True)`` and times, per step and rank:
    forward+loss, ``loss.backward()`` (which runs ``ddp.finish`` at its end: the wait for the buckets
    still in flight, the *exposed* communication, read from ``ddp.last_finish_s``),
    and ``optimizer.step()`` + ``zero_grad()``. Compute = forward + backward - exposed.

    The communication of the same buckets *alone* (``ddp.sync_without_backward()`` after a forward: the
    same packing, collectives and unpacking, with nothing to overlap) gives the total communication;
    overlapped = total - exposed (at least 0). The step time is the median over the timed steps of the
    slowest rank's step; the phases are medians over steps of the mean over ranks (medians, because the
    host may be shared with other processes; scaling.json also has the mean step time).

    Speedup and efficiency are against the 1-rank run (the smallest world if 1 is not in ``--ranks``):
    weak: speedup = K T1 / TK, efficiency = T1 / TK; strong: speedup = T1 / TK, efficiency = speedup / K.
    "compute slowdown" = compute time per sample at K ranks / at 1 rank, both measured with the bare
    model (no DDP) and every rank training at once: how much sharing the machine slows the arithmetic
    itself (memory bandwidth, oversubscription) before any communication.

    Probes for the cost model (``dtrain.distributed.costmodel``), in each world of >= 2 ranks: all-reduce
    times at a few sizes (``measure_allreduce``, ring and the chosen algorithm) and the rate of the
    local addition (``np.add`` of 4 MB, all ranks at once) for gamma. ``--probe-repeats 0`` skips the all-reduce probes.

    The host is reported as it is: cores usable by this process, and each world size flagged
    "oversubscribed" when it has more ranks than cores (there, time-sharing of cores shows up as
    bad scaling; it is contention, not a property of the algorithm).

How to run
    dtrain bench scaling --ranks 1,2,4                  # or: python benchmarks/scaling.py --ranks 1,2,4
    dtrain bench scaling --ranks 1,2 --model cnn --compression fp16 --algorithm mpi --out /tmp/sc
    dtrain bench scaling --cluster 4x1 --link 1gbit --ranks 1,2,4 --modes weak   # ranks on a virtual cluster
    dtrain bench scaling --cluster 4x1 --ranks 1,2,4 --modes weak --model mlp,cnn --overlap on,off \
        --bucket-mb 1,4,25                                            # a sweep over variants, one report

On a virtual cluster (``--cluster KxM --link RATE``, root; :mod:`dtrain.bench.oncluster`) the cluster of
K nodes comes up once; a world of n ranks runs on the first ceil(n / M) nodes, M consecutive ranks per
node, so every byte between ranks on different nodes crosses a link shaped to RATE. The nodes still
share this host's cores: a world with more ranks than cores is flagged "oversubscribed" as above.

Lists in ``--model``, ``--bucket-mb`` or ``--overlap`` (``on,off``) make a sweep over every combination
(:mod:`dtrain.bench.scaling_sweep`): one launch per variant and world size (the 1-rank world once per
model: DDP at one rank communicates nothing), all-reduce probes once, and one combined report with the
cost model calibrated on the probes and extrapolated (:mod:`dtrain.bench.scaling_extrapolate`).

Outputs in ``--out`` (default a fresh ``bench-results/DATE-TIME/scaling``; ``--out benchmarks/results/scaling``
regenerates the committed ones): ``scaling.csv``, ``scaling.json`` (rows, probes, machine), ``scaling.md``
(tables, cost-model check, exact command), ``efficiency.png`` and ``breakdown.png``. No assertion on timings.
"""


from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import OtherLoad, machine_info, mpi_library
from .oncluster import add_cluster_arguments, cluster_label, cluster_session
from .peers import slowest
from .ranks import launch_worker, under_mpiexec
from .report import OUT_HELP, command_line, default_out
from .scaling_model import validation_table
from .scaling_report import MODES, markdown_table, summarize, write_csv, write_report
from .scaling_sweep import result_args, sweep, variants

PROBE_SIZES = (4 << 10, 32 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
INPUTS = {"mlp": (784,), "cnn": (1, 28, 28)}
HELP = "strong/weak scaling sweep over world sizes (launches mpiexec itself) + cost-model check"


# ---------------------------------------------------------------------------------------------
# Rank side
# ---------------------------------------------------------------------------------------------


def _shard(global_batch: int, n: int, rank: int) -> int:
    return global_batch // n + (1 if rank < global_batch % n else 0)


def _build(args):
    from dtrain.models import build_model

    shape = INPUTS[args.model]
    opts = {"hidden": args.hidden} if args.model == "mlp" and args.hidden else {}
    if args.model == "cnn":
        opts["dropout"] = 0.0
    return build_model(args.model, input_shape=shape, n_outputs=10, **opts), shape


class _Run:
    """One mode's model, optimizer, DDP wrapper and batches on this rank."""

    def __init__(self, world, args, mode: str):
        from dtrain import optim
        from dtrain.distributed import DistributedDataParallel

        self.batch = args.batch if mode == "weak" else _shard(args.global_batch, world.size, world.rank)
        self.model, shape = _build(args)
        self.opt = optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.ddp = DistributedDataParallel(self.model, bucket_cap_mb=args.bucket_mb, compression=args.compression,
                                           overlap=args.overlap, algorithm=args.algorithm, comm=world)
        rng = np.random.default_rng(1000 + world.rank)
        self.batches = [(rng.standard_normal((self.batch, *shape)).astype(np.float32),
                         rng.integers(0, 10, self.batch)) for _ in range(4)]

    def step(self, i: int) -> tuple[float, float, float, float]:
        """Forward+loss, backward, optimizer, and ddp.finish (inside backward) in seconds."""
        import dtrain.nn.functional as F

        pc = time.perf_counter
        x, y = self.batches[i % len(self.batches)]
        t0 = pc()
        loss = F.cross_entropy(self.ddp(x), y)
        t1 = pc()
        loss.backward()
        t2 = pc()
        self.opt.step()
        self.opt.zero_grad()
        return t1 - t0, t2 - t1, pc() - t2, self.ddp.last_finish_s

    def comm_alone(self, cw, repeats: int) -> float:
        """Median time (slowest rank) of the same buckets' communication with nothing to hide behind."""
        x, _ = self.batches[0]
        times = []
        for i in range(2 + repeats):
            self.ddp(x)  # counts this rank's samples and arms the synchronisation
            cw.Barrier()
            t0 = time.perf_counter()
            self.ddp.sync_without_backward()
            el = slowest(cw, time.perf_counter() - t0)
            if i >= 2:
                times.append(el)
        self.opt.zero_grad()
        return float(np.median(times))

    def compute_alone(self, cw, steps: int) -> np.ndarray:
        """The same steps on the bare model, every rank at once, no communication at all (what sharing the
        machine costs before any all-reduce; the cost model's compute input): (ranks, steps, 2)."""
        import dtrain.nn.functional as F

        self.ddp.remove_hooks()
        alone = np.zeros((steps, 2))
        cw.Barrier()
        for i in range(steps):
            x, y = self.batches[i % len(self.batches)]
            t0 = time.perf_counter()
            F.cross_entropy(self.model(x), y).backward()
            t1 = time.perf_counter()
            self.opt.step()
            self.opt.zero_grad()
            alone[i] = (t1 - t0, time.perf_counter() - t1)
        return np.array(cw.allgather(alone))


def _record(run: _Run, args, mode: str, every: np.ndarray, alone_all: np.ndarray, comm_alone: float,
            wall: float, cw) -> dict:
    # Medians over steps (this host may be shared: a median ignores the steps another process interrupted);
    # the step time is the slowest rank's per step, the phases are means over the ranks per step.
    fwd, bwd, optim_s, exposed = (float(np.median(every[..., j].mean(axis=0))) for j in range(4))
    batches_all = cw.allgather(run.batch)
    sent, raw = run.step_bytes
    ddp = run.ddp
    return {
        "mode": mode, "world_size": cw.size, "per_rank_batch": max(batches_all), "global_batch": sum(batches_all),
        "model": args.model, "params": int(sum(p.data.size for p in run.model.parameters() if p.requires_grad)),
        "grad_bytes": int(sum(b.buffer.nbytes for b in ddp.buckets)),
        "buckets_bytes": [int(b.buffer.nbytes) for b in ddp.buckets], "bucket_mb": args.bucket_mb,
        "overlap": bool(ddp.overlap),
        "algorithm": args.algorithm, "compression": ddp.compressor.spec,
        "exchange": getattr(ddp.compressor, "exchange", "allreduce"),
        "wire_ratio": (sent / raw) if raw else 1.0, "steps": args.steps,
        "step_s": float(np.median(every[..., :3].sum(axis=2).max(axis=0))), "step_mean_s": wall / args.steps,
        "forward_s": fwd, "backward_s": bwd - exposed, "compute_s": fwd + bwd - exposed, "exposed_s": exposed,
        "optimizer_s": optim_s, "comm_s": comm_alone,
        "overlapped_s": max(0.0, comm_alone - exposed) if cw.size > 1 else 0.0,
        "compute_alone_s": float(np.median(alone_all[..., 0].mean(axis=0))),
        "optimizer_alone_s": float(np.median(alone_all[..., 1].mean(axis=0))),
    }


def measure_mode(world, args, mode: str) -> dict:
    """Train ``args.steps`` timed steps in this world; return the phase times (identical on every rank)."""
    cw = world.comm
    run = _Run(world, args, mode)
    for i in range(args.warmup):
        run.step(i)
    rows = np.zeros((args.steps, 4))
    cw.Barrier()
    start = time.perf_counter()
    for i in range(args.steps):
        rows[i] = run.step(i)
    wall = slowest(cw, time.perf_counter() - start)
    run.step_bytes = run.ddp.last_step_bytes  # of the timed steps, before the probes below sync again
    every = np.array(cw.allgather(rows))  # (ranks, steps, 4); read before the probes below change the counters
    comm_alone = run.comm_alone(cw, args.comm_repeats) if world.size > 1 else 0.0
    return _record(run, args, mode, every, run.compute_alone(cw, args.steps), comm_alone, wall, cw)


def probe(world, args) -> dict:
    """All-reduce times at a few sizes and the local addition rate (for calibrating the cost model)."""
    from dtrain.distributed.measure import measure_allreduce

    cw = world.comm
    a, b = np.ones(1 << 20, np.float32), np.ones(1 << 20, np.float32)
    times = []
    for _ in range(25):
        cw.Barrier()  # every rank adds at once, as in the ring's reduce-scatter
        t0 = time.perf_counter()
        np.add(a, b, out=b)
        times.append(time.perf_counter() - t0)
    gamma = slowest(cw, float(np.median(times[5:]))) / a.nbytes
    times = []
    for _ in range(25):  # DDP's packing/unpacking: one scaled copy per gradient byte
        cw.Barrier()
        t0 = time.perf_counter()
        np.multiply(a, 0.5, out=b)
        times.append(time.perf_counter() - t0)
    copy = slowest(cw, float(np.median(times[5:]))) / a.nbytes
    out = {"gamma_s_per_byte": gamma, "copy_s_per_byte": copy, "allreduce": []}
    if world.size > 1 and args.probe_repeats > 0:
        algs = ("ring",) if args.algorithm == "ring" else ("ring", args.algorithm)
        out["allreduce"] = measure_allreduce(PROBE_SIZES, algs, repeats=args.probe_repeats, warmup=2, comm=world)
        out["allreduce_worker"] = _probe_worker_thread(world, algs, args.probe_repeats)
    return out


def _probe_worker_thread(world, algs, repeats: int) -> list[dict]:
    """Like measure_allreduce, but through the communicator's worker thread (``async_op=True``), the
    path DDP's buckets take; rows of ``size_bytes``, ``world_size``, ``algorithm``, ``time_s`` (median)."""
    from dtrain.distributed import allreduce

    cw, rows = world.comm, []
    for nbytes in PROBE_SIZES:
        a = np.empty(nbytes // 4, np.float32)
        for alg in algs:
            times = []
            for i in range(2 + repeats):
                a.fill(1.0)
                cw.Barrier()
                t0 = time.perf_counter()
                allreduce(a, op="sum", algorithm=alg, comm=world, async_op=True).wait()
                el = slowest(cw, time.perf_counter() - t0)
                if i >= 2:
                    times.append(el)
            rows.append({"size_bytes": nbytes, "world_size": world.size, "algorithm": alg,
                         "time_s": float(np.median(times)), "min_time_s": float(min(times))})
    return rows


def worker(args) -> None:
    """Every mode and the probes in this MPI world; rank 0 writes them to ``args.worker`` (JSON)."""
    from dtrain.distributed import init

    world = init()
    records = [measure_mode(world, args, mode) for mode in args.modes]
    probes = probe(world, args)
    if world.rank == 0:
        Path(args.worker).write_text(json.dumps({"world_size": world.size, "records": records, "probes": probes,
                                                 "thread_level": world.thread_level, "mpi": mpi_library()}))


# ---------------------------------------------------------------------------------------------
# Launcher side
# ---------------------------------------------------------------------------------------------


def _worker_flags(args) -> list[str]:
    flags = ["--model", args.model, "--batch", str(args.batch), "--global-batch", str(args.global_batch),
             "--bucket-mb", str(args.bucket_mb), "--overlap", "on" if args.overlap else "off",
             "--algorithm", args.algorithm, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--comm-repeats", str(args.comm_repeats),
             "--probe-repeats", str(args.probe_repeats), "--modes", ",".join(args.modes)]
    if args.compression:
        flags += ["--compression", args.compression]
    if args.hidden:
        flags += ["--hidden", args.hidden]
    return flags


def launch(n: int, args, json_path: Path, cluster=None) -> dict:
    """Run the sweep's rank side in a world of ``n`` (on ``cluster``, ``--cluster``'s M ranks per node, when
    given); its result, with the cores other processes kept busy and the nodes used."""
    ppn = args.cluster.ppn if cluster is not None else n
    with OtherLoad() as load:
        launch_worker(__name__, n, json_path, _worker_flags(args), timeout=args.timeout, cluster=cluster, ppn=ppn)
    world = json.loads(json_path.read_text())
    world["nodes"], world["ppn"] = -(-n // ppn), min(ppn, n)
    for r in world["records"]:  # the cost model places the ranks on nodes as they ran
        r["nodes"], r["ppn"] = world["nodes"], world["ppn"]
    # Cores kept busy by other processes during this launch: the machine's busy CPU time minus ours.
    world["other_load"] = None if load.cores_busy is None else round(load.cores_busy, 2)
    return world


def _ranks(text: str) -> list[int]:
    try:
        ks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ranks takes comma-separated positive integers like 1,2,4, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--ranks takes comma-separated positive integers like 1,2,4, got {text!r}")
    return ks


def _modes(text: str) -> list[str]:
    ms = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in ms if m not in MODES]
    if bad or not ms:
        raise argparse.ArgumentTypeError(f"--modes takes weak, strong or weak,strong, got {text!r}")
    return ms


def _one_or_list(values: list):
    # One value stays a plain value (what the single-variant benchmark always took); several make a sweep.
    return values[0] if len(values) == 1 else values


def _models(text: str) -> str | list[str]:
    ms = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not ms or any(m not in INPUTS for m in ms):
        raise argparse.ArgumentTypeError(f"--model takes {', '.join(sorted(INPUTS))} or a comma-separated list of "
                                         f"them, got {text!r}")
    return _one_or_list(ms)


def _bucket_mbs(text: str) -> float | list[float]:
    try:
        bs = list(dict.fromkeys(float(t) for t in text.split(",") if t.strip()))
    except ValueError:
        bs = []
    if not bs or any(not b > 0 for b in bs):
        raise argparse.ArgumentTypeError(f"--bucket-mb takes positive numbers (MiB), comma-separated like 1,4,25, "
                                         f"got {text!r}")
    return _one_or_list(bs)


def _overlaps(text: str) -> bool | list[bool]:
    words = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not words or any(w not in ("on", "off") for w in words):
        raise argparse.ArgumentTypeError(f"--overlap takes on, off or on,off, got {text!r}")
    return _one_or_list([w == "on" for w in words])


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _count(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench scaling`` (shared with benchmarks/scaling.py)."""
    p.add_argument("--ranks", type=_ranks, default=[1, 2, 4], help="world sizes to launch (default 1,2,4)")
    p.add_argument("--modes", type=_modes, default=list(MODES), help="weak, strong or both (default weak,strong)")
    p.add_argument("--model", type=_models, default="mlp",
                   help=f"zoo model, or a comma-separated list to sweep ({', '.join(sorted(INPUTS))}; default mlp)")
    p.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    p.add_argument("--batch", type=_positive, default=64, help="weak scaling: samples per rank (default 64)")
    p.add_argument("--global-batch", type=_positive, default=256,
                   help="strong scaling: global samples per step (default 256)")
    p.add_argument("--bucket-mb", type=_bucket_mbs, default=2.0,
                   help="DDP bucket size in MiB, or a comma-separated list to sweep (default 2: several buckets, "
                        "so overlap is possible)")
    p.add_argument("--overlap", type=_overlaps, default=True,
                   help="DDP overlap of communication with backward: on, off, or on,off to sweep (default on)")
    p.add_argument("--algorithm", choices=("ring", "mpi", "hierarchical"), default="ring",
                   help="all-reduce algorithm (default ring)")
    p.add_argument("--compression", default=None, help="compression spec, e.g. fp16, powersgd:4 (default none)")
    p.add_argument("--steps", type=_positive, default=15, help="timed steps per world size and mode (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--comm-repeats", type=_positive, default=7, help="repeats of communication alone (default 7)")
    p.add_argument("--probe-repeats", type=_count, default=9,
                   help="repeats per all-reduce probe size; 0 skips the probes (default 9)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mpiexec launch (default 600)")
    p.add_argument("--out", type=Path, default=None,
                   help=OUT_HELP.replace("benchmarks/results", "benchmarks/results/scaling"))
    add_cluster_arguments(p)
    p.add_argument("--worker", metavar="JSON", default=None, help=argparse.SUPPRESS)


def _validate_before_launch(args) -> None:
    if under_mpiexec():
        raise ValueError("the scaling sweep launches mpiexec -n K itself for each K of --ranks: run it without "
                         "mpiexec (e.g. dtrain bench scaling --ranks 1,2,4)")
    for v in variants(args):
        _build(v)  # a bad --hidden fails here, before anything is launched
    if args.compression:
        from dtrain.distributed.compression import get

        get(args.compression)
    if args.cluster is not None and -(-max(args.ranks) // args.cluster.ppn) > args.cluster.nodes:
        raise ValueError(f"--ranks {max(args.ranks)} does not fit on --cluster {args.cluster} ({args.cluster.nodes} "
                         f"nodes x {args.cluster.ppn} ranks): expected at most {args.cluster.nodes * args.cluster.ppn}")


def run(args) -> int:
    """``dtrain bench scaling``: one mpiexec per world size, then the combined report (or, with the hidden
    ``--worker``, the rank side); with lists of variants, the sweep of :mod:`dtrain.bench.scaling_sweep`."""
    if args.worker:
        worker(variants(args)[0])
        return 0
    _validate_before_launch(args)
    if len(variants(args)) > 1:
        return sweep(args, launch)
    args = variants(args)[0]
    t0, mach, worlds = time.perf_counter(), machine_info(), []
    with tempfile.TemporaryDirectory() as tmp, cluster_session(args) as cluster:
        for n in args.ranks:
            print(f"scaling: {n} rank(s){' (oversubscribed)' if n > mach['cores'] else ''} ...", flush=True)
            worlds.append(launch(n, args, Path(tmp) / f"world{n}.json", cluster))
    rows = summarize(worlds, mach["cores"])
    out = args.out or default_out("scaling")
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": result_args(args), "placement": cluster_label(args), "machine": mach, "worlds": worlds,
              "rows": rows, "wall_s": time.perf_counter() - t0}
    write_csv(out / "scaling.csv", rows)
    files = write_report(out, result, rows, command_line())
    (out / "scaling.json").write_text(json.dumps(result, indent=1))
    print("\n".join(markdown_table(rows)))
    if "validation" in result:
        print("\n" + "\n".join(validation_table(result["validation"])))
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.scaling
    from .cli import main

    sys.exit(main("scaling"))
