"""Timing the all-reduce algorithms, nccl-tests style (what ``dtrain bench allreduce`` reports)."""

from __future__ import annotations

import time

import numpy as np

from ..backend import get_array_module, to_device
from . import comm as _comm
from .algorithms import get as get_algorithm
from .collectives import allreduce, resolve_comm
from .comm import Communicator

__all__ = ["measure_allreduce"]


def measure_allreduce(sizes_bytes, algorithms=("ring", "mpi"), repeats: int = 20, warmup: int = 3,
                      comm: Communicator | None = None, device: str = "cpu") -> list[dict]:
    """Time float32 sum all-reduces of each size with each algorithm, nccl-tests style (collective).

    For every size the algorithms are interleaved within each repeat; each timed call is preceded by
    a refill of the array (untimed) and a barrier. A repeat's time is the slowest rank's; the
    reported ``time_s`` is the median over ``repeats`` (``min_time_s`` the best), after ``warmup``
    untimed rounds. ``algbw`` = bytes / time and ``busbw`` = algbw * 2 (n - 1) / n, in GB/s (1e9).
    ``algorithms`` holds names or AllreduceAlgorithm objects (e.g. rings with other pipeline parameters);
    a row's ``algorithm`` is the name given, or the object's ``name``.
    ``device`` ("cpu", "cuda", "cuda:I") places the array: on a GPU each timed call ends with a stream
    synchronisation, so the time covers the transfers (pinned staging or CUDA-aware MPI) and kernels.
    Returns one dict per (size, algorithm), identical on every rank.
    """
    comm = resolve_comm(comm, "measure_allreduce")
    MPI = _comm._MPI
    algorithms = list(algorithms)
    for alg in algorithms:
        get_algorithm(alg, "measure_allreduce")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_allreduce: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    n = comm.size
    rows = []
    for nbytes in sizes_bytes:
        count = max(1, int(nbytes) // 4)
        a = to_device(np.empty(count, np.float32), device)
        xp = get_array_module(a)
        sync = (lambda: None) if xp is np else xp.cuda.get_current_stream().synchronize
        times = [np.empty(repeats) for _ in algorithms]
        for i in range(warmup + repeats):
            for j, alg in enumerate(algorithms):
                a.fill(1.0)
                sync()
                comm.barrier()
                t0 = time.perf_counter()
                allreduce(a, op="sum", algorithm=alg, comm=comm)
                sync()
                elapsed = time.perf_counter() - t0
                if float(a[0]) != n or float(a[-1]) != n:
                    raise RuntimeError(f"measure_allreduce (rank {comm.rank}): {alg} gave {a[0]} instead of {n}")
                if i >= warmup:
                    times[j][i - warmup] = elapsed
        for alg, t in zip(algorithms, times):
            comm.comm.Allreduce(MPI.IN_PLACE, [t, MPI.DOUBLE], op=MPI.MAX)
            med = float(np.median(t))
            algbw = count * 4 / med / 1e9
            rows.append({
                "size_bytes": count * 4, "count": count, "dtype": "float32", "world_size": n, "device": device,
                "algorithm": alg if isinstance(alg, str) else alg.name,
                "time_s": med, "min_time_s": float(t.min()), "algbw_GBps": algbw,
                "busbw_GBps": algbw * 2 * (n - 1) / n, "repeats": repeats,
            })
    return rows
