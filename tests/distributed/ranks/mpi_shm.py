"""Rank-side checks of the shared-memory all-reduce (``algorithm="shm"``), the same assertions at every
world size; tests/distributed/test_shm.py runs it under mpiexec.

* sum and mean of every float dtype and int32/int64, sizes 0 to past the window's first 1 MiB (it grows),
  equal every rank's values summed in float64 to within the dtype's rounding (ints exactly), and the same
  bits on every rank; max/min are covered with the other algorithms in mpi_reduce_ops.py;
* async (the communicator's worker thread has a window of its own) and the all-gather;
* ranks that pass different sizes or ops get a ValueError naming the other ranks, on every rank, and the
  next all-reduce is right again;
* DistributedDataParallel with ``algorithm="shm"`` (buckets summed in its shared window, or by a registered
  hook once there is one) trains to the same parameters as with the ring (to rounding) and bit-identical on
  every rank; float16 buckets stay out of the window;
* the throughput benchmark's shared-memory floor (the same window technique, bench-side) runs, checks its
  own sums and reports positive times;
* a synchronising backward writes linear weights' gradients straight into the window (``Tensor.set_grad_buffer``;
  over the ring into the private bucket)
  and still leaves every ``.grad`` an array of its own, bitwise the same on every rank; no_sync offers nothing;
* ``gradient_as_bucket_view``: over the ring every ``.grad`` a view of its bucket after a sync (over shm it is
  ignored), training bit-identical to without it (with and without zero_grad, no_sync, in-place clipping);
* raw gradients weighted in the sums' job (or the equal power-of-two count folded into the final scale) give
  the same bits as a hook summing pre-weighted ones, over shm and the ring, even and uneven batches;
* ``destroy_process_group`` frees the windows (collectively) and returns; a backward through a DDP whose
  bucket window was freed then fails with the communicator's "was closed" error instead of writing into it,
  also when its forward ran (and offered the window) before the window was freed.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mpi_harness import run_or_abort

import dtrain as dt
import dtrain.distributed as dist
import dtrain.nn.functional as F
from dtrain import nn, optim
from dtrain.backend import bfloat16_dtype, finfo_eps
from dtrain.distributed.algorithms import get
from dtrain.distributed.hooks import HookState, compression_hook


def same_everywhere(world, a, what: str) -> None:
    digests = world.comm.allgather(hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest())
    assert len(set(digests)) == 1, f"{what}: the ranks hold different bits"


def dtypes() -> list:
    return [np.float16, np.float32, np.float64, np.int32, np.int64] + ([bfloat16_dtype()] if bfloat16_dtype() else [])


def sums_and_means(world) -> None:
    n, r = world.size, world.rank
    rng = np.random.default_rng(40 + r)
    for count in (0, 1, max(n - 1, 1), n + 1, 4099, 300_001):
        for dtype in dtypes():
            integer = np.dtype(dtype).kind == "i"
            x = (rng.integers(-1000, 1000, count) if integer else rng.standard_normal(count) * 10).astype(dtype)
            every = np.stack(world.comm.allgather(x.astype(np.float64)))
            for op in ("sum",) if integer else ("sum", "mean"):
                a = x.copy()
                assert dist.allreduce(a, op=op, algorithm="shm") is a and a.dtype == np.dtype(dtype)
                want = every.sum(axis=0) / (n if op == "mean" else 1)
                what = f"shm {op} {np.dtype(dtype)}[{count}]"
                if integer:
                    assert np.array_equal(a, want.astype(dtype)), what
                else:  # a float32 (float64 for float64) sum of n values, rounded once to the dtype
                    acc = np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)
                    scale = np.abs(every).sum(axis=0) / (n if op == "mean" else 1)
                    bound = (finfo_eps(np.dtype(dtype)) + n * finfo_eps(acc)) * scale + 1e-300
                    err = np.abs(a.astype(np.float64) - want)
                    assert np.all(err <= bound), f"{what}: error {np.max(err / bound):.2f}x the bound"
                same_everywhere(world, a, what)


def async_and_allgather(world) -> None:
    n, r = world.size, world.rank
    h = dist.allreduce(np.full(70_000, r + 1.0, np.float32), op="sum", algorithm="shm", async_op=True)
    assert np.all(h.wait() == n * (n + 1) / 2)
    outs = [np.zeros(3 + q, np.float64) for q in range(n)]
    buf = np.zeros(sum(8 * (3 + q) for q in range(n)), np.uint8)
    lo = sum(8 * (3 + q) for q in range(r))
    buf[lo:lo + 8 * (3 + r)] = np.full(3 + r, float(r)).view(np.uint8)
    get("shm").allgather(world, buf, [8 * (3 + q) for q in range(n)])
    pos = 0
    for q, out in enumerate(outs):
        out[...] = buf[pos:pos + out.nbytes].view(np.float64)
        pos += out.nbytes
        assert np.all(out == q), (q, out)


def mismatches(world) -> None:
    n, r = world.size, world.rank
    for a, op in ((np.ones(10 + r, np.float32), "sum"), (np.ones(10, np.float32), "max" if r == n - 1 else "sum")):
        try:
            dist.allreduce(a, op=op, algorithm="shm")
        except ValueError as exc:
            msg = str(exc)
            assert msg.startswith(f"shm all-reduce (rank {r}): every rank must pass the same size, dtype and op; "
                                  f"this rank passed {a.size} values of float32, op {op}; rank "), msg
        else:
            raise AssertionError(f"rank {r}: different sizes or ops across ranks did not raise")
    b = np.full(5, r + 1.0)
    dist.allreduce(b, op="sum", algorithm="shm")
    assert np.all(b == n * (n + 1) / 2), b


def train(world, algorithm: str, hook: bool = False) -> np.ndarray:
    dt.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.01, algorithm=algorithm)
    if algorithm == "shm":  # the buckets are in a shared window, summed there unless a hook is registered
        assert ddp.reducer.window is not None
        if hook:
            ddp.register_comm_hook(HookState(world, "shm"), compression_hook)
        assert ddp.reducer.window_active is not hook
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((48, 10)).astype(np.float32), rng.integers(0, 4, 48)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per = len(x) // world.size
    mine = slice(world.rank * per, (world.rank + 1) * per)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(ddp(dt.tensor(x[mine])), y[mine]).backward()
        opt.step()
    sent, uncompressed = ddp.last_step_bytes
    assert sent > 0 and uncompressed > 0, (algorithm, ddp.last_step_bytes)
    ddp.remove_hooks()
    return np.concatenate([p.data.reshape(-1) for p in model.parameters()])


def ddp(world) -> None:
    shm, ring, hooked = train(world, "shm"), train(world, "ring"), train(world, "shm", hook=True)
    same_everywhere(world, shm, "DDP over shm")
    np.testing.assert_allclose(shm, ring, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hooked, shm, rtol=1e-5, atol=1e-6)
    # half precision and mixed-dtype buckets are not summed in the window: the buckets stay private
    half = nn.Linear(4, 3)
    half.to(dtype=np.float16)
    assert dist.DistributedDataParallel(half, algorithm="shm").reducer.window is None
    assert get("shm").bucket_window(world, [5, 7], np.float16) is None


def gradient_buffers(world, algorithm: str) -> None:
    """A synchronising backward writes linear weights' gradients straight into the bucket (the shared window
    with shm; seen from a hook that runs after DDP's), and leaves every ``.grad`` an array of its own; under
    no_sync nothing is offered."""
    dt.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ddp = dist.DistributedDataParallel(model, algorithm=algorithm)
    assert (ddp.reducer.window is not None) is (algorithm == "shm")
    (bucket,) = ddp.buckets
    seen = {}
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(
            lambda t, name=name: seen.__setitem__(name, np.may_share_memory(t.grad, bucket.buffer)))
    rng = np.random.default_rng(world.rank)
    x, y = dt.tensor(rng.standard_normal((5, 6)).astype(np.float32)), rng.integers(0, 3, 5)
    F.cross_entropy(ddp(x), y).backward()
    assert seen == {"0.weight": True, "0.bias": False, "2.weight": True, "2.bias": False}, seen
    assert not any(np.may_share_memory(p.grad, bucket.buffer) for p in model.parameters())
    synced = [p.grad.copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    with ddp.no_sync():
        F.cross_entropy(ddp(x), y).backward()
    assert not any(seen.values()), seen
    local = [p.grad.copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(ddp(x), y).backward()  # the next synchronising step: in the window again, same average
    assert seen["0.weight"] and seen["2.weight"], seen
    for a, b in zip(synced, model.parameters()):
        np.testing.assert_array_equal(a, b.grad)
    same_everywhere(world, np.concatenate([g.reshape(-1) for g in synced]), "averaged gradients")
    if world.size > 1:  # the ranks' batches differ: their own gradients do too
        assert any(not np.array_equal(a, b) for a, b in zip(local, synced))
    ddp.remove_hooks()


def raw_and_weighted_agree(world) -> None:
    """The plain sum takes raw gradients and weights them in its job (or, with equal power-of-two sample
    counts, folds the count into the final scale); a registered hook sums what the pack weighted. Both give
    the same bits, over shm and the ring, with power-of-two and other batch sizes."""
    for algorithm in ("shm", "ring"):
        for batch in (4, 5):
            got = []
            for hook in (False, True):
                dt.manual_seed(2)
                model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
                ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0005, algorithm=algorithm)
                if hook:
                    ddp.register_comm_hook(HookState(world, algorithm), compression_hook)
                opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
                rng = np.random.default_rng(world.rank)
                for _ in range(3):
                    x = dt.tensor(rng.standard_normal((batch + world.rank % 2 * (batch == 5), 6)).astype(np.float32))
                    opt.zero_grad()
                    F.cross_entropy(ddp(x), rng.integers(0, 3, x.shape[0])).backward()
                    opt.step()
                ddp.remove_hooks()
                got.append(np.concatenate([p.data.reshape(-1) for p in model.parameters()]))
            assert np.array_equal(got[0], got[1]), (algorithm, batch, np.abs(got[0] - got[1]).max())


def bucket_views(world, algorithm: str) -> None:
    """gradient_as_bucket_view: after each sync every ``.grad`` is its view of its bucket, and training gives the
    same bits as without it: steps with zero_grad (to None and in place), without it (accumulating into the
    views), with a no_sync backward first, and with the gradients clipped in place between steps."""
    got = []
    for view in (False, True):
        dt.manual_seed(3)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0005, algorithm=algorithm,
                                           gradient_as_bucket_view=view)
        assert ddp.reducer.as_view is (view and algorithm != "shm")  # (the shm window copies its averages out)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(world.rank)
        for step in range(5):
            x = dt.tensor(rng.standard_normal((4 + world.rank % 2, 6)).astype(np.float32))
            y = rng.integers(0, 3, x.shape[0])
            if step != 1:
                opt.zero_grad(set_to_none=step != 3)
            if step == 2:
                with ddp.no_sync():
                    F.cross_entropy(ddp(x), y).backward()
            F.cross_entropy(ddp(x), y).backward()
            views = [any(p.grad is seg for b in ddp.buckets for _, seg in b.segments) for p in model.parameters()]
            assert all(views) if ddp.reducer.as_view else not any(views), (view, views)
            for p in model.parameters():
                p.grad *= 0.5  # in place, between the sync and the step
            opt.step()
        got.append(np.concatenate([p.data.reshape(-1) for p in model.parameters()]))
        ddp.remove_hooks()
    assert np.array_equal(got[0], got[1]), (algorithm, np.abs(got[0] - got[1]).max())
    same_everywhere(world, got[1], f"DDP over {algorithm} with gradient_as_bucket_view")


def floor(world) -> None:
    from mpi4py import MPI

    from dtrain.bench.throughput_split import shared_memory_floor

    got = shared_memory_floor(MPI.COMM_WORLD, 100_003, repeats=3, warmup=1)
    assert set(got) == {"shared_floor", "local_floor"} and min(got.values()) > 0, got


def main() -> None:
    world = dist.init()
    sums_and_means(world)
    async_and_allgather(world)
    mismatches(world)
    ddp(world)
    gradient_buffers(world, "shm")
    gradient_buffers(world, "ring")
    raw_and_weighted_agree(world)
    bucket_views(world, "shm")
    bucket_views(world, "ring")
    floor(world)
    late = dist.DistributedDataParallel(nn.Linear(3, 2), algorithm="shm")
    pending = dist.DistributedDataParallel(nn.Linear(3, 2), algorithm="shm")
    ones, target = dt.tensor(np.ones((2, 3), np.float32)), np.array([0, 1])
    before = F.cross_entropy(pending(ones), target)  # its weight is offered the window as gradient buffer
    dist.destroy_process_group()  # frees the windows, the DDP's bucket window too (withdrawing that offer)
    expected = f"DistributedDataParallel gradient synchronisation: this Communicator (rank {world.rank}) was closed"
    for loss in (lambda: F.cross_entropy(late(ones), target), lambda: before):
        try:  # a backward through it now must neither write nor pack into freed memory
            loss().backward()
        except RuntimeError as exc:
            assert str(exc) == expected, exc
        else:
            raise AssertionError("a backward through DDP over a freed bucket window did not fail")
    print(f"shm OK rank {world.rank} of {world.size}", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
