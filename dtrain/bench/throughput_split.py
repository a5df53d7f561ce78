"""Where a DDP step's time goes (the throughput benchmark's diagnostics, run on every rank).

The split of a step into forward, local backward (with the bucket packing its gradient hooks do),
``ddp.finish`` (packing what was not launched yet, waiting for the buckets, writing the averaged
gradients) and the optimizer, from the timings the reducer records for every synchronisation
(``ddp.timings``); an all-reduce of the gradient's size alone, three ways; the least data movement any
all-reduce of that size needs when the ranks share a node (:func:`shared_memory_floor`); and a cProfile of
rank 0's main thread grouped into areas.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .peers import slowest

BATCH = 128  # samples per rank per step (dtrain.bench.throughput imports it from here)

SPLIT_KEYS = ("forward", "backward_local", "pack_in_hooks", "finish", "pack_in_finish", "wait", "unpack", "step",
              "total", "skew", "finish_last", "finish_first")
_TIMINGS = ("finish_s", "finish_enter", "pack_in_hooks_s", "pack_in_finish_s", "wait_s")


def _split_rows(stepper, cw, steps: int) -> tuple[np.ndarray, float]:
    """Per step: forward, backward, zero_grad+step, then ddp.timings: finish, the moment finish began,
    packing in the hooks, packing in finish, waiting."""
    import dtrain.nn.functional as F

    ddp, opt, pc = stepper.ddp, stepper.opt, time.perf_counter
    is_ddp = hasattr(ddp, "buckets")  # the reference variant trains the bare model
    rows = np.zeros((steps, 3 + len(_TIMINGS)))
    cw.Barrier()
    t_start = pc()
    for i in range(steps):
        x, y = stepper.batches[i % len(stepper.batches)]
        t0 = pc()
        loss = F.cross_entropy(ddp(x), y)
        t1 = pc()
        opt.zero_grad()
        t2 = pc()
        loss.backward()
        t3 = pc()
        opt.step()
        t4 = pc()
        timings = [ddp.timings[k] for k in _TIMINGS] if is_ddp else [0.0, t3, 0.0, 0.0, 0.0]
        rows[i] = (t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3), *timings)
    return rows, slowest(cw, pc() - t_start)


def time_split(stepper, cw, steps: int, warmup: int = 5) -> dict[str, float]:
    """Mean ms per step of each phase, averaged over ranks (``ddp.finish`` from ``ddp.last_finish_s``).

    Also, from the ranks' ``perf_counter`` timestamps (CLOCK_MONOTONIC, one clock for all processes of a
    machine): ``skew``, how much later the last rank enters ``ddp.finish`` than the first, and the time
    in ``ddp.finish`` of the rank arriving last (about the all-reduce itself) and first (plus the skew).
    """
    for i in range(warmup):  # settle after the previous phase
        stepper.step(i)
    rows, wall = _split_rows(stepper, cw, steps)
    every = np.array(cw.allgather(rows))  # (ranks, steps, 8)
    fwd, bwd, stp, fin, enter, ph, pf, wt = (every[..., j] for j in range(8))
    ms = {"forward": fwd, "backward_local": bwd - fin, "pack_in_hooks": ph, "finish": fin, "pack_in_finish": pf,
          "wait": wt, "unpack": fin - pf - wt, "step": stp, "total": fwd + bwd + stp}
    out = {k: float(v.mean() * 1e3) for k, v in ms.items()}
    out["skew"] = out["finish_last"] = out["finish_first"] = 0.0
    if cw.size > 1 and hasattr(stepper.ddp, "buckets"):
        cols = np.arange(steps)
        out["skew"] = float((enter.max(axis=0) - enter.min(axis=0)).mean() * 1e3)
        out["finish_last"] = float(fin[enter.argmax(axis=0), cols].mean() * 1e3)
        out["finish_first"] = float(fin[enter.argmin(axis=0), cols].mean() * 1e3)
    out["samples_per_s"] = cw.size * BATCH * steps / wall
    return out


def allreduce_alone(world, cw, count: int, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median ms (slowest rank) of one all-reduce of ``count`` float32, three ways (four on one node: shm),
    interleaved."""
    from dtrain.distributed import allreduce

    a = np.ones(count, np.float32)
    modes = {
        "ring_main": lambda: allreduce(a, op="sum", algorithm="ring", comm=world),
        "ring_worker": lambda: allreduce(a, op="sum", algorithm="ring", comm=world, async_op=True).wait(),
        "mpi_main": lambda: allreduce(a, op="sum", algorithm="mpi", comm=world),
    }
    if world.node_count == 1:
        modes["shm_main"] = lambda: allreduce(a, op="sum", algorithm="shm", comm=world)
    times: dict[str, list[float]] = {k: [] for k in modes}
    for i in range(warmup + repeats):
        for k, fn in modes.items():
            a.fill(1.0)
            cw.Barrier()
            t0 = time.perf_counter()
            fn()
            el = slowest(cw, time.perf_counter() - t0)
            if a[0] != cw.size:
                raise RuntimeError(f"allreduce check failed on rank {cw.rank}: {a[0]} != {cw.size}")
            if i >= warmup:
                times[k].append(el)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def shared_memory_floor(cw, count: int, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """``{"shared_floor": ms}``: the median (slowest rank) of the data movement every all-reduce of ``count``
    float32 needs when all ranks share one node, done the cheapest way there is. Every rank's buffer lives in
    one MPI shared-memory window; each rank adds the other ranks' values of its own chunk into its buffer
    (what a reduce-scatter must read), then copies the other ranks' summed chunks (what an all-gather must
    read), with no copy through MPI in between. Empty when the ranks span nodes or there is one rank."""
    from mpi4py import MPI

    from dtrain.distributed.algorithms.shm import SharedSegments

    node = cw.Split_type(MPI.COMM_TYPE_SHARED)
    if cw.size < 2 or node.size != cw.size:
        node.Free()
        return {}
    seg = SharedSegments(node, count * 4)  # owns node from here
    try:
        return {"shared_floor": _floor_rounds(seg, count, repeats, warmup),
                "local_floor": _floor_rounds(seg, count, repeats, warmup, local=True)}
    finally:
        seg.close()


def _floor_rounds(seg, count: int, repeats: int, warmup: int, local: bool = False) -> float:
    """The floor's median ms over the window ``seg`` (a SharedSegments); with ``local``, the same additions and
    copies from private arrays of this rank, written by its own core just before each round as the other ranks
    write theirs, instead of their segments."""
    node = seg.node
    n, r = node.size, node.rank
    bufs = seg.data(np.float32, count)
    mine, bounds = bufs[r], [(count * q // n, count * (q + 1) // n) for q in range(n)]
    lo, hi = bounds[r]
    privates = [np.empty(count, np.float32) for _ in range(n - 1)] if local else []
    if local:
        bufs = privates[:r] + [mine] + privates[r:]
    fence = seg.fence

    times = []
    for i in range(warmup + repeats):
        mine.fill(1.0)
        for p in privates:  # written now by this core, as the other ranks write theirs: ones in this rank's
            p.fill(float(n))  # chunk, their sums in theirs
            p[lo:hi] = 1.0
        fence()
        t0 = time.perf_counter()
        for q in range(n):
            if q != r:
                np.add(mine[lo:hi], bufs[q][lo:hi], out=mine[lo:hi])
        fence()
        for q, (a, b) in enumerate(bounds):
            if q != r:
                mine[a:b] = bufs[q][a:b]
        fence()
        el = slowest(node, time.perf_counter() - t0)
        if not (mine == n).all():
            raise RuntimeError(f"shared-memory floor check failed on rank {r}: the sums are not {n}")
        if i >= warmup:
            times.append(el)
    return statistics.median(times) * 1e3


_AREAS = (  # (prefix of the path below dtrain/, function name or None, area)
    ("autograd/ops/linalg", None, "GEMMs: Linear forward/backward (BLAS sgemm via inline `@`)"),
    ("distributed/worker", "wait", "waiting for all-reduces (Handle.wait)"),
    ("distributed/", None, "DDP: hooks, bucket packing and unpacking (inline NumPy multiplies over the gradient)"),
    ("autograd/engine", None, "autograd engine (graph walk, accumulation)"),
    ("autograd/", None, "other autograd ops + Function/Tensor (ReLU, cross-entropy)"),
    ("nn/", None, "nn Modules / functional"),
    ("optim/", None, "optimizer: SGD momentum update (inline NumPy passes over the parameters)"),
)


def area(filename: str, funcname: str) -> str:
    """Where a cProfile entry's self time belongs (a DDP step's areas)."""
    f = filename.replace("\\", "/")
    if "/dtrain/" in f:
        rel = f.split("/dtrain/", 1)[1]
        return next((a for prefix, fn, a in _AREAS if rel.startswith(prefix) and fn in (None, funcname)),
                    f"other dtrain ({rel})")
    if f.endswith("threading.py") or (filename == "~" and "acquire" in funcname):
        return "waiting for all-reduces (Handle.wait)"
    if filename == "~":
        return ("NumPy C functions called by name (reductions, copies)" if "numpy" in funcname or "ndarray" in funcname
                else "Python builtins")
    return "NumPy Python wrappers" if "/numpy/" in f else "other Python (benchmark loop, stdlib)"


def profile_steps(stepper, cw, steps: int) -> dict | None:
    """cProfile of ``steps`` dtrain steps on rank 0 (the others run them unprofiled); main thread only."""
    from .profile import profile_calls

    cw.Barrier()
    if cw.rank != 0:
        for i in range(steps):
            stepper.step(i)
        return None
    return profile_calls(stepper.step, steps, area)
