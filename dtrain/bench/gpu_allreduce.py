"""All-reduce of device (CuPy) buffers across ranks that share GPUs: how each algorithm and transport moves them.

What is measured
    Under ``mpiexec -n N`` (this module is the rank side; ``benchmarks/gpu_check.sh`` launches it), every rank
    takes GPU ``local_rank % gpus`` and times float32 sum all-reduces of device arrays of ``--sizes-mb`` MiB with
    each of ``--algorithms`` (default: ring and mpi, and nccl where CuPy has NCCL), through
    ``dtrain.distributed.measure.measure_allreduce(device=...)``: warm-up rounds, then repeats in which the
    algorithms alternate, each call preceded by a refill and a barrier and ended by a stream synchronisation;
    a repeat's time is the slowest rank's, the table gives the median. How MPI sees the device buffers is the
    process's transport: pinned host staging, or device pointers when the MPI library is CUDA-aware
    (``DTRAIN_CUDA_AWARE_MPI=0|1`` decides; ``dtrain info`` prints it). ``--label`` names the transport in
    the table; rank 0 appends its rows to ``gpu_allreduce.md`` in ``--out`` so that launches with different
    transports share one table.

How to run (on a GPU machine)
    DTRAIN_CUDA_AWARE_MPI=0 mpiexec -n 2 python -m dtrain.bench.gpu_allreduce --label staging --out DIR
    mpiexec -n 4 python -m dtrain.bench.gpu_allreduce --algorithms ring,nccl --out DIR

Without CuPy and a CUDA device it says so and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import OUT_HELP, default_out

HELP = "all-reduce of GPU buffers: ring/mpi/nccl, pinned staging vs CUDA-aware MPI (rank side; needs CuPy, a GPU)"

HEADER = ["# All-reduce of device buffers (float32 sum)", "",
          "| transport | ranks | GPUs | algorithm | MiB | median ms | busbw GB/s |",
          "|---|---:|---:|---|---:|---:|---:|"]


def _algorithms(spec: str | None) -> list[str]:
    """The algorithms asked for, or ring and mpi plus nccl where CuPy has it."""
    if spec:
        return [a.strip() for a in spec.split(",") if a.strip()]
    names = ["ring", "mpi"]
    try:
        from cupy.cuda import nccl  # noqa: F401

        names.append("nccl")
    except Exception:
        pass
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench gpu_allreduce``."""
    p.add_argument("--sizes-mb", default="1,16,64", help="message sizes in MiB, comma-separated (default 1,16,64)")
    p.add_argument("--algorithms", default=None, help="comma-separated (default: ring,mpi and nccl if available)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per size and algorithm (default 10)")
    p.add_argument("--label", default=None, help="the transport's name in the table (default: what dtrain detects)")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def run(args) -> int:
    """Time the all-reduces of this launch's world; rank 0 appends its rows to gpu_allreduce.md."""
    from dtrain import distributed as dist
    from dtrain.distributed.gpu import cuda_aware_mpi, gpu_count
    from dtrain.distributed.measure import measure_allreduce
    from dtrain.env import local_rank

    gpus = gpu_count()
    if gpus == 0:
        print("gpu_allreduce: no CuPy/CUDA device here; nothing measured (run it on a GPU machine)")
        return 0
    device = f"cuda:{local_rank() % gpus}"
    comm = dist.init()
    sizes = [int(float(v) * (1 << 20)) for v in args.sizes_mb.split(",")]
    rows = measure_allreduce(sizes, _algorithms(args.algorithms), repeats=args.repeats, comm=comm, device=device)
    if comm.rank != 0:
        return 0
    label = args.label or ("CUDA-aware MPI" if cuda_aware_mpi()[0] else "pinned staging")
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_allreduce.md"
    lines = [] if path.exists() else list(HEADER)
    for r in rows:
        lines.append(f"| {label} | {r['world_size']} | {min(gpus, r['world_size'])} | {r['algorithm']} | "
                     f"{r['size_bytes'] / (1 << 20):g} | {r['time_s'] * 1e3:.3f} | {r['busbw_GBps']:.2f} |")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.gpu_allreduce
    from .cli import main

    sys.exit(main("gpu_allreduce"))
