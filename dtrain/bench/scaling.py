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
    still in flight, the *exposed* communication, timed by wrapping that DDP instance's ``finish``),
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
    local addition (``np.add`` of 4 MB, all ranks at once) for gamma.

    The host is reported as it is: cores usable by this process, and each world size flagged
    "oversubscribed" when it has more ranks than cores (there, time-sharing of cores shows up as
    bad scaling; it is contention, not a property of the algorithm).

How to run
    dtrain bench scaling --ranks 1,2,4                  # or: python benchmarks/scaling.py --ranks 1,2,4
    dtrain bench scaling --ranks 1,2 --model cnn --compression fp16 --algorithm mpi --out /tmp/sc

Outputs in ``--out`` (default benchmarks/results/scaling): ``scaling.csv``, ``scaling.json`` (rows,
probes, machine), ``scaling.md`` (tables, cost-model check, exact command), ``efficiency.png`` and
``breakdown.png``. No assertion on timings.
"""

from __future__ import annotations

import os

from ..launch import local_launch_flags, local_mpiexec
from .machine import busy_cpu_s, own_cpu_s

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")

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

MODES = ("weak", "strong")
PROBE_SIZES = (4 << 10, 32 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
INPUTS = {"mlp": (784,), "cnn": (1, 28, 28)}
DEFAULT_OUT = Path("benchmarks/results/scaling")


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (affinity mask), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info() -> dict:
    """Cores, CPU model, load, versions: what a reader needs to judge the numbers."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {"cores": usable_cores(), "cpu_count": os.cpu_count(), "cpu_model": model, "load_avg_at_start": load,
            "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "host": platform.node()}


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


def _slowest(cw, value: float) -> float:
    from mpi4py import MPI

    return cw.allreduce(value, op=MPI.MAX)


def measure_mode(world, args, mode: str) -> dict:
    """Train ``args.steps`` timed steps in this world; return the phase times (identical on every rank)."""
    import dtrain.nn.functional as F
    from dtrain import optim
    from dtrain.distributed import DistributedDataParallel

    cw, n, rank = world.comm, world.size, world.rank
    batch = args.batch if mode == "weak" else _shard(args.global_batch, n, rank)
    model, shape = _build(args)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ddp = DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, compression=args.compression,
                                  overlap=True, algorithm=args.algorithm, comm=world)
    rng = np.random.default_rng(1000 + rank)
    batches = [(rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch))
               for _ in range(4)]

    pc = time.perf_counter
    fin = [0.0]
    orig_finish = ddp.finish

    def finish():
        t = pc()
        try:
            orig_finish()
        finally:
            fin[0] += pc() - t

    def one_step(i: int) -> tuple[float, float, float]:
        x, y = batches[i % len(batches)]
        t0 = pc()
        loss = F.cross_entropy(ddp(x), y)
        t1 = pc()
        loss.backward()
        t2 = pc()
        opt.step()
        opt.zero_grad()
        t3 = pc()
        return t1 - t0, t2 - t1, t3 - t2

    for i in range(args.warmup):
        one_step(i)
    ddp.__dict__["finish"] = finish  # instance attribute shadows the method: the engine callback uses it
    rows = np.zeros((args.steps, 4))
    try:
        cw.Barrier()
        start = pc()
        for i in range(args.steps):
            fin[0] = 0.0
            f, b, o = one_step(i)
            rows[i] = (f, b, o, fin[0])
        wall = _slowest(cw, pc() - start)
    finally:
        del ddp.__dict__["finish"]
    sent, raw = ddp.last_step_bytes

    comm_alone = 0.0
    if n > 1:  # the same buckets' communication with nothing to hide behind
        x, _ = batches[0]
        times = []
        for i in range(2 + args.comm_repeats):
            ddp(x)  # counts this rank's samples and arms the synchronisation
            cw.Barrier()
            t0 = pc()
            ddp.sync_without_backward()
            el = _slowest(cw, pc() - t0)
            if i >= 2:
                times.append(el)
        comm_alone = float(np.median(times))
        opt.zero_grad()

    # Compute alone: the same steps on the bare model, every rank at once, no communication at all
    # (what sharing the machine costs before any all-reduce; the cost model's compute input).
    ddp.remove_hooks()
    alone = np.zeros((args.steps, 2))
    cw.Barrier()
    for i in range(args.steps):
        x, y = batches[i % len(batches)]
        t0 = pc()
        F.cross_entropy(model(x), y).backward()
        t1 = pc()
        opt.step()
        opt.zero_grad()
        alone[i] = (t1 - t0, pc() - t1)
    alone_all = np.array(cw.allgather(alone))

    # Medians over steps (this host may be shared: a median ignores the steps another process interrupted);
    # the step time is the slowest rank's per step, the phases are means over the ranks per step.
    every = np.array(cw.allgather(rows))  # (ranks, steps, 4)
    fwd, bwd, optim_s, exposed = (float(np.median(every[..., j].mean(axis=0))) for j in range(4))
    step_med = float(np.median(every[..., :3].sum(axis=2).max(axis=0)))
    batches_all = cw.allgather(batch)
    params = sum(p.data.size for p in model.parameters() if p.requires_grad)
    return {
        "mode": mode, "world_size": n, "per_rank_batch": max(batches_all), "global_batch": sum(batches_all),
        "model": args.model, "params": int(params), "grad_bytes": int(sum(b.buffer.nbytes for b in ddp.buckets)),
        "buckets_bytes": [int(b.buffer.nbytes) for b in ddp.buckets], "bucket_mb": args.bucket_mb,
        "algorithm": args.algorithm, "compression": ddp.compressor.spec,
        "exchange": getattr(ddp.compressor, "exchange", "allreduce"),
        "wire_ratio": (sent / raw) if raw else 1.0, "steps": args.steps,
        "step_s": step_med, "step_mean_s": wall / args.steps, "forward_s": fwd, "backward_s": bwd - exposed,
        "compute_s": fwd + bwd - exposed, "exposed_s": exposed, "optimizer_s": optim_s,
        "comm_s": comm_alone, "overlapped_s": max(0.0, comm_alone - exposed) if n > 1 else 0.0,
        "compute_alone_s": float(np.median(alone_all[..., 0].mean(axis=0))),
        "optimizer_alone_s": float(np.median(alone_all[..., 1].mean(axis=0))),
    }


def probe(world, args) -> dict:
    """All-reduce times at a few sizes and the local addition rate (for calibrating the cost model)."""
    from dtrain.distributed.collectives import measure_allreduce

    cw = world.comm
    a, b = np.ones(1 << 20, np.float32), np.ones(1 << 20, np.float32)
    times = []
    for _ in range(25):
        cw.Barrier()  # every rank adds at once, as in the ring's reduce-scatter
        t0 = time.perf_counter()
        np.add(a, b, out=b)
        times.append(time.perf_counter() - t0)
    gamma = _slowest(cw, float(np.median(times[5:]))) / a.nbytes
    times = []
    for _ in range(25):  # DDP's packing/unpacking: one scaled copy per gradient byte
        cw.Barrier()
        t0 = time.perf_counter()
        np.multiply(a, 0.5, out=b)
        times.append(time.perf_counter() - t0)
    copy = _slowest(cw, float(np.median(times[5:]))) / a.nbytes
    out = {"gamma_s_per_byte": gamma, "copy_s_per_byte": copy, "allreduce": []}
    if world.size > 1:
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
                el = _slowest(cw, time.perf_counter() - t0)
                if i >= 2:
                    times.append(el)
            rows.append({"size_bytes": nbytes, "world_size": world.size, "algorithm": alg,
                         "time_s": float(np.median(times)), "min_time_s": float(min(times))})
    return rows


def worker(args) -> None:
    from dtrain.distributed import init

    world = init()
    records = [measure_mode(world, args, mode) for mode in args.modes]
    probes = probe(world, args)
    if world.rank == 0:
        try:
            from mpi4py import MPI

            mpi = MPI.Get_library_version().splitlines()[0].strip()
        except Exception:
            mpi = "unknown"
        Path(args.worker).write_text(json.dumps({"world_size": world.size, "records": records, "probes": probes,
                                                 "thread_level": world.thread_level, "mpi": mpi}))


# ---------------------------------------------------------------------------------------------
# Launcher side
# ---------------------------------------------------------------------------------------------


def _worker_flags(args) -> list[str]:
    flags = ["--model", args.model, "--batch", str(args.batch), "--global-batch", str(args.global_batch),
             "--bucket-mb", str(args.bucket_mb), "--algorithm", args.algorithm, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--comm-repeats", str(args.comm_repeats),
             "--probe-repeats", str(args.probe_repeats), "--modes", ",".join(args.modes)]
    if args.compression:
        flags += ["--compression", args.compression]
    if args.hidden:
        flags += ["--hidden", args.hidden]
    return flags


def launch(n: int, args, json_path: Path) -> dict:
    mpiexec = local_mpiexec()
    if mpiexec is None:
        raise OSError("scaling benchmark: no mpiexec found next to Python or on PATH (pip install mpich)")
    over = list(local_launch_flags(mpiexec))
    env = dict(os.environ, **dict.fromkeys(_THREAD_VARS, "1"))
    cmd = [mpiexec, *over, "-n", str(n), sys.executable, "-m", "dtrain.bench.scaling", "--worker", str(json_path),
           *_worker_flags(args)]
    busy0, own0, t0 = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise OSError(f"scaling benchmark: mpiexec -n {n} failed with status {proc.returncode}: {shlex.join(cmd)}")
    world = json.loads(json_path.read_text())
    busy1, own1, wall = busy_cpu_s(), own_cpu_s(), time.perf_counter() - t0
    # Cores kept busy by other processes during this launch: the machine's busy CPU time minus ours.
    world["other_load"] = None if busy0 is None or busy1 is None else \
        round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 2)
    return world


def summarize(worlds: list[dict], cores: int) -> list[dict]:
    """One row per (mode, world size) with speedup, efficiency, compute slowdown and the oversubscription flag."""
    rows = []
    for mode in MODES:
        recs = sorted((r for w in worlds for r in w["records"] if r["mode"] == mode), key=lambda r: r["world_size"])
        if not recs:
            continue
        base = recs[0]
        k0, t0 = base["world_size"], base["step_s"]
        c0 = base["compute_alone_s"] / base["per_rank_batch"]
        for r in recs:
            n, t = r["world_size"], r["step_s"]
            if mode == "weak":
                speedup = (n * t0 / t) / k0
                eff = speedup * k0 / n
            else:
                speedup = t0 / t
                eff = speedup * k0 / n
            rows.append({**{k: v for k, v in r.items() if k != "buckets_bytes"},
                         "buckets": len(r["buckets_bytes"]), "samples_per_s": r["global_batch"] / t,
                         "other_s": max(0.0, t - r["compute_s"] - r["exposed_s"] - r["optimizer_s"]),
                         "speedup": speedup, "efficiency": eff,
                         "compute_slowdown": (r["compute_alone_s"] / r["per_rank_batch"]) / c0,
                         "baseline_ranks": k0, "cores": cores, "oversubscribed": n > cores})
    return rows


CSV_FIELDS = ("mode", "world_size", "oversubscribed", "cores", "per_rank_batch", "global_batch", "model", "params",
              "algorithm", "compression", "wire_ratio", "bucket_mb", "buckets", "step_s", "compute_s", "forward_s",
              "backward_s", "exposed_s", "overlapped_s", "comm_s", "optimizer_s", "other_s", "samples_per_s",
              "speedup", "efficiency", "compute_slowdown", "baseline_ranks")


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def markdown_table(rows: list[dict]) -> list[str]:
    """The scaling table: one line per (mode, world size), times in ms."""
    out = ["| mode | ranks | batch/rank | global batch | step ms | compute ms | exposed comm ms | overlapped comm ms "
           "| optimizer ms | other ms | samples/s | speedup | efficiency | compute slowdown | host |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        host = f"**oversubscribed** ({r['world_size']} ranks / {r['cores']} cores)" if r["oversubscribed"] else \
            f"{r['world_size']} ranks / {r['cores']} cores"
        out.append(f"| {r['mode']} | {r['world_size']} | {r['per_rank_batch']} | {r['global_batch']} | "
                   f"{r['step_s'] * 1e3:.1f} | {r['compute_s'] * 1e3:.1f} | {r['exposed_s'] * 1e3:.1f} | "
                   f"{r['overlapped_s'] * 1e3:.1f} | {r['optimizer_s'] * 1e3:.1f} | {r['other_s'] * 1e3:.1f} | "
                   f"{r['samples_per_s']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.0%} | "
                   f"{r['compute_slowdown']:.2f}x | {host} |")
    return out


def plot(out: Path, rows: list[dict], title: str) -> list[str]:
    """efficiency.png (efficiency vs ranks) and breakdown.png (stacked step-time bars). Returns file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    cores = rows[0]["cores"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ranks = sorted({r["world_size"] for r in rows})
    for mode, marker in (("weak", "o"), ("strong", "s")):
        rs = [r for r in rows if r["mode"] == mode]
        if rs:
            ax.plot([r["world_size"] for r in rs], [r["efficiency"] for r in rs], marker=marker,
                    label=f"{mode} scaling")
            ax.plot([r["world_size"] for r in rs], [1 / r["compute_slowdown"] for r in rs], marker=marker,
                    linestyle=":", alpha=0.6, label=f"{mode}: compute alone (1 / slowdown)")
    ax.axhline(1.0, color="grey", lw=0.8)
    if max(ranks) > cores:
        ax.axvspan(cores + 0.5, max(ranks) + 0.5, color="red", alpha=0.08)
        ax.text(cores + 0.6, 0.05, f"oversubscribed\n(> {cores} cores)", color="darkred", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(k) for k in ranks])
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("ranks (processes)")
    ax.set_ylabel("efficiency")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=False)
    for ax, mode in zip(axes, MODES):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            ax.set_visible(False)
            continue
        x = np.arange(len(rs))
        bottom = np.zeros(len(rs))
        for key, label, color in (("compute_s", "compute", "tab:blue"), ("exposed_s", "exposed comm", "tab:red"),
                                  ("optimizer_s", "optimizer", "tab:green"), ("other_s", "other", "tab:gray")):
            v = np.array([r[key] * 1e3 for r in rs])
            ax.bar(x - 0.18, v, 0.34, bottom=bottom, label=label, color=color)
            bottom += v
        ov = np.array([r["overlapped_s"] * 1e3 for r in rs])
        ex = np.array([min(r["exposed_s"], r["comm_s"]) * 1e3 for r in rs])
        ax.bar(x + 0.18, ex, 0.34, color="tab:red", alpha=0.45, label="comm alone: part exposed in the step")
        ax.bar(x + 0.18, ov, 0.34, bottom=ex, color="tab:orange", hatch="//", label="overlapped comm (hidden)")
        ax.set_xticks(x, [f"{r['world_size']}{' (over)' if r['oversubscribed'] else ''}" for r in rs])
        ax.set_xlabel("ranks (left bar: step; right bar: communication alone)")
        ax.set_ylabel("ms per step")
        ax.set_title(f"{mode} scaling, batch/rank " + ("fixed" if mode == "weak" else "= global / ranks"),
                     fontsize=9)
        ax.set_ylim(0, bottom.max() * 1.6)  # head room for the legend
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "breakdown.png", dpi=120)
    plt.close(fig)
    return ["efficiency.png", "breakdown.png"]


# ---------------------------------------------------------------------------------------------
# The cost model against the measurements
# ---------------------------------------------------------------------------------------------


def calibration(result: dict, calib_world: int = 2) -> dict:
    """The link (alpha, beta, gamma) and the copy rate from the probes at ``calib_world`` ranks (else the
    smallest world > 1): alpha and beta fitted to the all-reduce times through the worker thread (the
    path DDP's buckets take), gamma from the timed additions. Returns ``link``, ``copy_s_per_byte``,
    ``calib_world``, ``fit_algorithm``."""
    from dtrain.distributed.costmodel import Link, calibrate_link

    worlds = {w["world_size"]: w for w in result["worlds"]}
    multi = sorted(k for k in worlds if k > 1)
    if not multi:
        raise ValueError("the cost model needs a world of >= 2 ranks to calibrate the link")
    k = calib_world if calib_world in worlds else multi[0]
    probes = worlds[k]["probes"]
    alg = result["args"]["algorithm"]
    fit_alg = alg if alg == "mpi" else "ring"
    # The best of the repeats: on a shared host the median carries other processes' time slices.
    rows = [{**r, "time_s": r["min_time_s"]} for r in probes.get("allreduce_worker", probes["allreduce"])
            if r["algorithm"] == fit_alg]
    probe_link = calibrate_link(rows, probes["gamma_s_per_byte"], algorithm=fit_alg,
                                name=f"probe: fitted at {k} ranks to the best of {result['args']['probe_repeats']} "
                                     f"{fit_alg} all-reduces through the worker thread")
    cal = {"probe_link": probe_link, "link": probe_link, "copy_s_per_byte": probes["copy_s_per_byte"],
           "calib_world": k, "fit_algorithm": fit_alg}
    # DDP's own path costs more than the bare all-reduce (per-bucket hand-off to the worker thread, the
    # compressor's bookkeeping, the wait): keep the probe's alpha and choose the effective beta so that
    # the model's communication of DDP's buckets equals the measured "communication alone" at this world
    # size (a separate measurement from the training steps that are validated).
    recs = [r for r in worlds[k]["records"] if r["comm_s"] > 0]
    if recs:
        def comm_at(beta: float) -> float:
            trial = {**cal, "link": Link(probe_link.alpha, beta, probe_link.gamma)}
            return float(np.mean([predict_record(r, trial, 10**6, 0.0, 0.0, 0.0).comm for r in recs]))

        target = float(np.mean([r["comm_s"] for r in recs]))
        c0, c1 = comm_at(0.0), comm_at(1e-9)
        beta = max(0.0, (target - c0) / ((c1 - c0) / 1e-9)) if c1 > c0 else probe_link.beta
        cal["link"] = Link(probe_link.alpha, beta, probe_link.gamma,
                           f"DDP-effective: probe alpha and gamma, beta fitted to DDP's communication alone "
                           f"at {k} ranks")
    return cal


def _model_algorithm(alg: str) -> str:
    return {"ring": "ring", "mpi": "mpi", "hierarchical": "hierarchical", "nccl": "ring"}[alg]


def predict_record(r: dict, cal: dict, cores: int, compute_s: float, optimizer_s: float, fixed_s: float):
    """The cost model's StepBreakdown for one measured record, with the given local phase times."""
    from dtrain.distributed.costmodel import Compression, StepModel, step_time

    n, b = r["world_size"], r["per_rank_batch"]
    model = StepModel(params=r["params"], compute_s_per_sample=compute_s / b,
                      backward_fraction=r["backward_s"] / max(r["compute_s"], 1e-12),
                      optimizer_s_per_param=optimizer_s / r["params"], fixed_s=fixed_s,
                      copy_s_per_byte=cal["copy_s_per_byte"], name=r["model"])
    comp = Compression(min(1.0, max(1e-6, r["wire_ratio"])), r["exchange"])
    # A rank's communication thread runs on a core of its own only if the host has two per rank.
    eff = 1.0 if cores >= 2 * n else 0.0
    return step_time(model, b, n, cal["link"], _model_algorithm(r["algorithm"]),
                     buckets=[float(x) for x in r["buckets_bytes"]], ranks_per_node=n, compression=comp,
                     overlap_efficiency=eff, control_message=True)


def validate(result: dict, calib_world: int = 2) -> tuple[list[dict], dict]:
    """Predicted vs measured step time for every measured (mode, world size) of ``result``.

    Two predictions: (a) with the compute and optimizer times measured *alone* (no communication) at
    the same world size (so contention for cores and memory is in the input, and the model adds the
    communication and its overlap), and (b) with the 1-rank times (pure extrapolation; ignores contention).
    """
    cal = calibration(result, calib_world)
    cores = result["machine"]["cores"]
    base = {r["mode"]: r for w in result["worlds"] for r in w["records"] if w["world_size"] == min(
        x["world_size"] for x in result["worlds"])}
    rows = []
    for w in result["worlds"]:
        for r in w["records"]:
            n = r["world_size"]
            r0 = base[r["mode"]]
            fixed = max(0.0, r0["step_s"] - r0["compute_s"] - r0["optimizer_s"] - r0["exposed_s"])
            pred = predict_record(r, cal, cores, r["compute_alone_s"], r["optimizer_alone_s"], fixed)
            per_sample = r0["compute_alone_s"] / r0["per_rank_batch"]
            pred1 = predict_record(r, cal, cores, per_sample * r["per_rank_batch"], r0["optimizer_alone_s"], fixed)
            predp = predict_record(r, {**cal, "link": cal["probe_link"]}, cores, r["compute_alone_s"],
                                   r["optimizer_alone_s"], fixed)
            rows.append({"mode": r["mode"], "world_size": n, "oversubscribed": n > cores,
                         "per_rank_batch": r["per_rank_batch"], "measured_s": r["step_s"],
                         "predicted_s": pred.total, "error": pred.total / r["step_s"] - 1,
                         "predicted_probe_s": predp.total, "error_probe": predp.total / r["step_s"] - 1,
                         "predicted_1rank_s": pred1.total, "error_1rank": pred1.total / r["step_s"] - 1,
                         "measured_compute_s": r["compute_s"], "compute_alone_s": r["compute_alone_s"],
                         "measured_comm_s": r["comm_s"], "predicted_comm_s": pred.comm,
                         "measured_exposed_s": r["exposed_s"], "predicted_exposed_s": pred.exposed,
                         "in_calibration": n == cal["calib_world"]})
    rows.sort(key=lambda v: (v["mode"], v["world_size"]))
    return rows, cal


def validation_table(rows: list[dict], goal: float = 0.20) -> list[str]:
    out = ["| mode | ranks | batch/rank | measured step ms | predicted ms | error | within 20 %? "
           "| comm alone: measured / predicted ms | exposed: measured / predicted ms "
           "| compute in step / alone ms | raw-probe link: ms, error | 1-rank compute: ms, error |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for v in rows:
        note = "yes" if abs(v["error"]) <= goal else "**no**"
        if v["oversubscribed"]:
            note += " (oversubscribed)"
        out.append(f"| {v['mode']} | {v['world_size']}{' (over)' if v['oversubscribed'] else ''} | "
                   f"{v['per_rank_batch']} | {v['measured_s'] * 1e3:.1f} | {v['predicted_s'] * 1e3:.1f} | "
                   f"{v['error']:+.0%} | {note} | "
                   f"{v['measured_comm_s'] * 1e3:.1f} / {v['predicted_comm_s'] * 1e3:.1f} | "
                   f"{v['measured_exposed_s'] * 1e3:.1f} / {v['predicted_exposed_s'] * 1e3:.1f} | "
                   f"{v['measured_compute_s'] * 1e3:.1f} / {v['compute_alone_s'] * 1e3:.1f} | "
                   f"{v['predicted_probe_s'] * 1e3:.1f}, {v['error_probe']:+.0%} | "
                   f"{v['predicted_1rank_s'] * 1e3:.1f}, {v['error_1rank']:+.0%} |")
    return out


def calibration_lines(cal: dict) -> list[str]:
    return [*(_link_line(cal[k]) for k in ("probe_link", "link")), *_calibration_rest(cal)]


def _link_line(link) -> str:
    return (f"- link ({link.name}): alpha = {link.alpha * 1e6:.1f} us, beta = {link.beta * 1e9:.3f} ns/B "
            f"({1 / link.beta / 1e9 if link.beta else float('inf'):.2f} GB/s), gamma = {link.gamma * 1e9:.3f} ns/B "
            f"({1 / link.gamma / 1e9 if link.gamma else float('inf'):.2f} GB/s of additions)")


def _calibration_rest(cal: dict) -> list[str]:
    return [f"- DDP pack/unpack copy: {cal['copy_s_per_byte'] * 1e9:.3f} ns/B",
            "- compute and optimizer: measured per world size with every rank training alone at once (no "
            "communication); overlap efficiency 1 where the host has >= 2 cores per rank, else 0 (the "
            "communication thread shares the rank's core with backward)"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def write_report(out: Path, result: dict, rows: list[dict], command: str) -> list[str]:
    args, mach = result["args"], result["machine"]
    title = (f"{args['model']} ({rows[0]['params']:,} params), {args['algorithm']}, compression "
             f"{rows[0]['compression']}, {args['bucket_mb']:g} MB buckets; {mach['cores']} cores")
    pngs = plot(out, rows, title)
    over = sorted({r["world_size"] for r in rows if r["oversubscribed"]})
    lines = ["# Strong and weak scaling of DDP training", "",
             f"Model `{args['model']}` ({rows[0]['params']:,} parameters, {rows[0]['grad_bytes'] / 2**20:.1f} MiB "
             f"of gradients in {rows[0]['buckets']} bucket(s) of <= {args['bucket_mb']:g} MB), all-reduce "
             f"`{args['algorithm']}`, compression `{rows[0]['compression']}`; weak: {args['batch']} samples per "
             f"rank; strong: global batch {args['global_batch']}. {args['steps']} timed steps after "
             f"{args['warmup']} warm-up steps per world size and mode. Times are ms per step.", ""]
    if over:
        lines += [f"**This host has {mach['cores']} usable cores.** World size(s) {', '.join(map(str, over))}: "
                  "oversubscribed. Ranks time-share cores, so their numbers measure contention, not the "
                  "scalability of the algorithm; they are flagged below and shaded in the plots.", ""]
    loads = [(w["world_size"], w.get("other_load")) for w in result["worlds"] if w.get("other_load") is not None]
    busy = [k for k, ld in loads if ld > 0.2]
    if loads:
        lines += ["Cores kept busy by other processes during each launch (machine CPU time minus this sweep's): "
                  + "; ".join(f"{k} rank(s): {ld:.2f}" for k, ld in loads) + "."
                  + (" **Other processes were using the CPUs** during the launches of "
                     f"{', '.join(map(str, busy))} rank(s): those timings include their interference (steps are "
                     "medians, probes the best repeats, to limit it)." if busy else ""), ""]
    lines += [f"Even at {mach['cores']} ranks each rank also has a communication thread that busy-polls inside "
              "MPI while backward runs, and the ranks share one memory system: the *compute slowdown* column "
              "(compute time per sample with every rank training alone at once, no communication, relative to "
              "the baseline run) shows what sharing the machine costs before any communication; the dotted "
              "lines in efficiency.png are 1 / that slowdown, the ceiling for any data-parallel scheme here.", "",
              *markdown_table(rows), "",
              "- compute = forward + backward - exposed communication; exposed = time in `ddp.finish` "
              "(waiting for buckets after backward); overlapped = communication of the same buckets alone "
              "minus exposed; other = step - compute - exposed - optimizer (rank imbalance, loop overhead).",
              f"- speedup and efficiency are against {rows[0]['baseline_ranks']} rank(s) of the same mode.", ""]
    try:
        vrows, cal = validate(result)
        lines += ["## Cost model check (dtrain.distributed.costmodel)", "", *calibration_lines(cal), "",
                  *validation_table(vrows), "",
                  "The last column feeds the model the 1-rank compute time instead (pure extrapolation, "
                  "blind to contention). `python benchmarks/simulate.py` extrapolates the calibrated model to "
                  "1..4096 workers.", ""]
        result["validation"] = vrows
    except ValueError as exc:
        lines += ["## Cost model check", "", f"Not available: {exc}", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    lines += ["## Machine", "", *[f"- {k}: {v}" for k, v in mach.items()],
              f"- MPI: {result['worlds'][0].get('mpi', '?')}; thread level {result['worlds'][0].get('thread_level')}",
              f"- wall time of the sweep: {result['wall_s']:.1f} s", "",
              "## Command", "", "```", command, "```", ""]
    (out / "scaling.md").write_text("\n".join(lines))
    return ["scaling.md", "scaling.csv", "scaling.json", *pngs]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="dtrain bench scaling", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--worker", metavar="JSON", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


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


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench scaling`` (shared with benchmarks/scaling.py)."""
    p.add_argument("--ranks", type=_ranks, default=[1, 2, 4], help="world sizes to launch (default 1,2,4)")
    p.add_argument("--modes", type=_modes, default=list(MODES), help="weak, strong or both (default weak,strong)")
    p.add_argument("--model", choices=sorted(INPUTS), default="mlp", help="zoo model (default mlp)")
    p.add_argument("--hidden", default="1024,1024", help="MLP hidden widths (default 1024,1024)")
    p.add_argument("--batch", type=_positive, default=64, help="weak scaling: samples per rank (default 64)")
    p.add_argument("--global-batch", type=_positive, default=256,
                   help="strong scaling: global samples per step (default 256)")
    p.add_argument("--bucket-mb", type=float, default=2.0,
                   help="DDP bucket size in MB (default 2: several buckets, so overlap is possible)")
    p.add_argument("--algorithm", choices=("ring", "mpi", "hierarchical"), default="ring",
                   help="all-reduce algorithm (default ring)")
    p.add_argument("--compression", default=None, help="compression spec, e.g. fp16, powersgd:4 (default none)")
    p.add_argument("--steps", type=_positive, default=15, help="timed steps per world size and mode (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--comm-repeats", type=_positive, default=7, help="repeats of communication alone (default 7)")
    p.add_argument("--probe-repeats", type=_positive, default=9, help="repeats per all-reduce probe size (default 9)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mpiexec launch (default 600)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")


def run(args, command: str) -> int:
    """The launcher: one mpiexec per world size, then the combined report."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(var, "1") or 1) > 1:
            raise ValueError("the scaling sweep launches mpiexec -n K itself for each K of --ranks: run it without "
                             "mpiexec (e.g. dtrain bench scaling --ranks 1,2,4)")
    if args.model == "mlp":
        from dtrain.models import _as_widths

        _as_widths(args.hidden)  # validate before launching anything
    if args.compression:
        from dtrain.distributed.compression import get

        get(args.compression)
    t0 = time.perf_counter()
    mach = machine_info()
    worlds = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            print(f"scaling: {n} rank(s){' (oversubscribed)' if n > mach['cores'] else ''} ...", flush=True)
            worlds.append(launch(n, args, Path(tmp) / f"world{n}.json"))
    rows = summarize(worlds, mach["cores"])
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("func", "worker")},
              "machine": mach, "worlds": worlds, "rows": rows, "wall_s": time.perf_counter() - t0}
    write_csv(out / "scaling.csv", rows)
    files = write_report(out, result, rows, command)
    (out / "scaling.json").write_text(json.dumps(result, indent=1))
    print("\n".join(markdown_table(rows)))
    if "validation" in result:
        print()
        print("\n".join(validation_table(result["validation"])))
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    cmd = "dtrain bench scaling " + shlex.join(sys.argv[1:] if argv is None else argv)
    return run(args, cmd)


if __name__ == "__main__":
    sys.exit(main())
