"""Run under mpiexec by tests/distributed/test_ddp.py: DistributedDataParallel against one process.

    mpiexec -n N python tests/distributed/ranks/mpi_ddp.py equivalence|mismatch|empty-shard|captured [ALGORITHM]

ALGORITHM (default "ring") is what the DDP of equivalence, captured and empty-shard sums over; with "shm" the
buckets live in the algorithm's shared window (checked), summed where they are.

Every rank computes the single-process reference itself (same seed, full batch) and compares its
DDP-trained parameters with it. Any failure prints the rank and aborts the whole job, so a failing
rank never leaves the others waiting.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
from mpi_harness import run_or_abort

import dtrain as dt
import dtrain.distributed as dist
import dtrain.nn.functional as F
from dtrain import nn, optim
from dtrain.data import shard_slice
from dtrain.train import param_checksum

TOL = 1e-12
ALGORITHM = sys.argv[2] if len(sys.argv) > 2 else "ring"


def wrap(model, **kwargs):
    """DistributedDataParallel over ALGORITHM; with "shm" (and more than one rank) its buckets must be views of
    this rank's segment of the shared window."""
    ddp = dist.DistributedDataParallel(model, algorithm=ALGORITHM, **kwargs)
    if ALGORITHM == "shm" and ddp.comm.size > 1:
        window = ddp.reducer.window
        check(window is not None and ddp.reducer.window_active, f"rank {ddp.comm.rank}: no shared bucket window")
        mine = window.seg.segments[ddp.comm.rank]  # this rank's segment of the shared window
        check(all(np.shares_memory(b.buffer, mine) for b in ddp.buckets),
              f"rank {ddp.comm.rank}: a bucket outside the shared window")
    return ddp


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def data(kind, n, step):
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(n, 6) if kind == "mlp" else (n, 1, 4, 4))
    return x, rng.integers(0, 3, n)


def build(kind):
    dt.manual_seed(7)
    return mlp() if kind == "mlp" else cnn()


def max_diff(a, b):
    return max(float(np.abs(p.data - q.data).max()) for p, q in zip(a.parameters(), b.parameters()))


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def equivalence(comm):
    r, n = comm.rank, comm.size
    for kind in ("mlp", "cnn"):
        for opt_name, steps, accumulate in (("sgd", 1, False), ("sgd", 20, False), ("adam", 20, False),
                                             ("sgd", 5, True)):
            ref, model = build(kind), build(kind)
            ddp = wrap(model, bucket_cap_mb=0.0005)  # several buckets
            make = (lambda p: optim.SGD(p, lr=0.1, momentum=0.9)) if opt_name == "sgd" else \
                (lambda p: optim.Adam(p, lr=0.01))
            ref_opt, opt = make(ref.parameters()), make(model.parameters())
            for step in range(steps):
                x, y = data(kind, 20 if accumulate else 10, step)
                ref_opt.zero_grad()
                F.cross_entropy(ref(dt.tensor(x)), y).backward()
                ref_opt.step()
                opt.zero_grad()
                halves = [slice(0, 10), slice(10, 20)] if accumulate else [slice(0, 10)]
                for h, half in enumerate(halves):
                    xs, ys = x[half], y[half]
                    part = shard_slice(len(xs), r, n)
                    ctx = ddp.no_sync() if h < len(halves) - 1 else contextlib.nullcontext()
                    with ctx:
                        loss = F.cross_entropy(ddp(dt.tensor(xs[part])), ys[part]) / len(halves)
                        loss.backward()
                opt.step()
                with dt.no_grad():  # an evaluation pass through the wrapper must not count as samples
                    ddp(dt.tensor(x[:3]))
            diff = max_diff(ref, model)
            check(diff <= TOL, f"{kind}/{opt_name}/{steps} steps/accumulate={accumulate}: max |ddp - single| = "
                               f"{diff:.3e} > {TOL} on rank {r} of {n}")
            sums = comm.comm.allgather(param_checksum(model))
            check(len(set(sums)) == 1, f"{kind}/{opt_name}: parameters differ across ranks: {sums}")
    # overlap off and the MPI algorithm give the same result as the default path
    for overlap, algorithm in ((False, "ring"), (True, "mpi")):
        ref, model = build("mlp"), build("mlp")
        ddp = dist.DistributedDataParallel(model, overlap=overlap, algorithm=algorithm)
        x, y = data("mlp", 10, 0)
        F.cross_entropy(ref(dt.tensor(x)), y).backward()
        F.cross_entropy(ddp(dt.tensor(x[shard_slice(10, r, n)])), y[shard_slice(10, r, n)]).backward()
        for p, q in zip(ref.parameters(), model.parameters()):
            check(np.abs(p.grad - q.grad).max() <= TOL, f"overlap={overlap} algorithm={algorithm}: gradients differ")
    if r == 0:
        print(f"equivalence OK on {n} ranks", flush=True)


def reference_step(ref, ref_opt, opt, x, y, r, n):
    """One single-process step of the reference on the whole batch; zero the DDP optimizer; this rank's shard."""
    ref_opt.zero_grad()
    F.cross_entropy(ref(dt.tensor(x)), y).backward()
    ref_opt.step()
    opt.zero_grad()
    return shard_slice(len(x), r, n)


def captured(comm):
    """A captured step through DDP: its replays still count samples, arm the reducer and average the gradients."""
    r, n = comm.rank, comm.size
    ref, model = build("mlp"), build("mlp")
    ddp = wrap(model, bucket_cap_mb=0.0005)
    ref_opt, opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), optim.SGD(model.parameters(), lr=0.1,
                                                                               momentum=0.9)
    step = dt.autograd.capture(lambda x, y: F.cross_entropy(ddp(x), y))
    for k in range(6):
        x, y = data("mlp", 10, k)
        part = reference_step(ref, ref_opt, opt, x, y, r, n)
        step(dt.tensor(x[part]), y[part])
        opt.step()
    diff = max_diff(ref, model)
    check(diff <= TOL, f"captured: max |ddp - single| = {diff:.3e} > {TOL} on rank {r} of {n}")
    check(step.traces == 1, f"captured: traced {step.traces} times on rank {r}, expected once")
    if r == 0:
        print(f"captured OK on {n} ranks", flush=True)


def empty_shard(comm):
    """A global batch smaller than the world: ranks with no samples still take part (weight 0)."""
    r, n = comm.rank, comm.size
    ref, model = build("mlp"), build("mlp")
    ddp = wrap(model)
    ref_opt, opt = optim.SGD(ref.parameters(), lr=0.1), optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = data("mlp", 2, step)
        part = reference_step(ref, ref_opt, opt, x, y, r, n)
        if len(x[part]):
            F.cross_entropy(ddp(dt.tensor(x[part])), y[part]).backward()
        else:
            ddp.sync_without_backward()
        opt.step()
    diff = max_diff(ref, model)
    check(diff <= TOL, f"empty shard: max diff {diff:.3e} on rank {r}")
    if r == 0:
        print(f"empty-shard OK on {n} ranks", flush=True)


def syncbn(comm):
    """SyncBatchNorm + DDP on uneven shards equals BatchNorm on the whole batch in one process:
    parameters after 5 momentum-SGD steps and the running statistics (float64, 1e-12)."""
    r, n = comm.rank, comm.size

    def build_bn():
        dt.manual_seed(11)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(64, 3))

    ref = build_bn()
    model = dist.convert_sync_batchnorm(build_bn())
    check(isinstance(model[1], dist.SyncBatchNorm), "convert_sync_batchnorm did not convert")
    ddp = dist.DistributedDataParallel(model)
    ref_opt, opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), optim.SGD(model.parameters(), lr=0.1,
                                                                                    momentum=0.9)
    for step in range(5):
        x, y = data("cnn", 10, step)
        ref_opt.zero_grad()
        F.cross_entropy(ref(dt.tensor(x)), y).backward()
        ref_opt.step()
        opt.zero_grad()
        part = shard_slice(10, r, n)
        F.cross_entropy(ddp(dt.tensor(x[part])), y[part]).backward()
        opt.step()
    diff = max_diff(ref, model)
    check(diff <= TOL, f"syncbn: max parameter diff {diff:.3e} on rank {r}")
    for key in ("1.running_mean", "1.running_var"):
        d = float(np.abs(ref.state_dict()[key] - model.state_dict()[key]).max())
        check(d <= TOL, f"syncbn: {key} differs by {d:.3e} on rank {r}")
    model.eval()
    ref.eval()
    x, _ = data("cnn", 4, 99)
    with dt.no_grad():
        d = float(np.abs(ref(dt.tensor(x)).data - model(dt.tensor(x)).data).max())
    check(d <= 1e-10, f"syncbn eval output differs by {d:.3e}")
    if r == 0:
        print(f"syncbn OK on {n} ranks", flush=True)


SPECS = ["none", "fp16", "bf16", "powersgd:2", "topk:0.05", "randomk:0.1", "qsgd:16", "signsgd"]


class RecordingComm:
    """Wraps an mpi4py communicator and adds up the bytes of every send buffer handed to MPI."""

    def __init__(self, inner):
        self.inner, self.sent = inner, 0

    @staticmethod
    def _nbytes(buf):
        array = buf[0] if isinstance(buf, (list, tuple)) else buf
        return int(np.asarray(array).nbytes)

    def Sendrecv(self, sendbuf, *args, **kwargs):
        self.sent += self._nbytes(sendbuf)
        return self.inner.Sendrecv(sendbuf, *args, **kwargs)

    def Isend(self, buf, *args, **kwargs):
        self.sent += self._nbytes(buf)
        return self.inner.Isend(buf, *args, **kwargs)

    def Send(self, buf, *args, **kwargs):
        self.sent += self._nbytes(buf)
        return self.inner.Send(buf, *args, **kwargs)

    def Allreduce(self, sendbuf, recvbuf, *args, **kwargs):
        self.sent += self._nbytes(recvbuf)  # in place: the buffer is what MPI sends
        return self.inner.Allreduce(sendbuf, recvbuf, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def compression(comm):
    """Every compressor: 50 DDP steps leave bit-identical parameters on every rank, the loss falls,
    and the bytes DDP counts equal the bytes handed to MPI's send calls (recorded by a wrapper)."""
    r, n = comm.rank, comm.size
    for spec in SPECS:
        for kind in ("mlp", "cnn"):
            model = build(kind)
            ddp = dist.DistributedDataParallel(model, compression=spec, bucket_cap_mb=0.002)
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            recorder = None
            before = 0
            losses = []
            for step in range(50):
                x, y = data(kind, 24, step % 5)  # five batches, revisited: the loss must fall
                part = shard_slice(24, r, n)
                opt.zero_grad()
                loss = F.cross_entropy(ddp(dt.tensor(x[part])), y[part])
                loss.backward()
                opt.step()
                losses.append(float(loss.item()))
                if step == 0:  # the worker communicator exists now: record from here on
                    wc = ddp.worker_comm
                    recorder = RecordingComm(wc.comm)
                    wc.comm = recorder
                    before = ddp.bytes_sent
            counted = ddp.bytes_sent - before
            check(counted == recorder.sent, f"{spec}/{kind}: DDP counted {counted} bytes, MPI was handed "
                                            f"{recorder.sent} on rank {r}")
            sums = comm.comm.allgather(param_checksum(model))
            check(len(set(sums)) == 1, f"{spec}/{kind}: parameters differ across ranks after 50 steps")
            # random-k's error feedback releases each coordinate's backlog about every 1/ratio steps, so its
            # loss is too jumpy over 50 steps for this check; the others must learn.
            if not spec.startswith("randomk"):
                check(np.mean(losses[-5:]) < np.mean(losses[:5]), f"{spec}/{kind}: loss did not fall: "
                                                                   f"{losses[:5]} -> {losses[-5:]}")
            ratio = ddp.bytes_uncompressed / max(ddp.bytes_sent, 1)
            if r == 0:
                print(f"{spec:12s} {kind}: bytes/step {ddp.last_step_bytes[0]:8d} ratio {ratio:7.1f} "
                      f"loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}", flush=True)
    # dist.allreduce(..., compression=): lossless fp16 on small integers equals the plain sum; a Compressor
    # object keeps its error-feedback memory across calls (top-k's sent + memory == input + old memory)
    x = np.full(1000, float(r + 1))
    dist.allreduce(x, op="sum", compression="fp16")
    check(np.all(x == n * (n + 1) / 2), f"allreduce fp16: got {x[:3]}")
    topk = dist.compression.get("topk:0.01")
    g = np.random.default_rng(r).normal(size=(50, 20))
    total = g.copy()
    dist.allreduce(total, op="mean", compression=topk)
    check(topk.memory("allreduce") is not None and np.count_nonzero(topk.memory("allreduce")) > 900,
          "allreduce topk: no error-feedback memory kept")
    sums = comm.comm.allgather(total.tobytes())
    check(len(set(sums)) == 1, "allreduce topk: ranks differ")
    if r == 0:
        print(f"compression OK on {n} ranks", flush=True)


def mismatch(comm):
    """Rank 1 builds a wider first layer: every rank must raise ModelMismatchError naming it, quickly."""
    width = 8 if comm.rank == 1 else 16
    model = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3))
    start = time.perf_counter()
    message = None
    try:
        dist.DistributedDataParallel(model)
    except dist.ModelMismatchError as exc:
        message = f"rank {comm.rank} raised in {time.perf_counter() - start:.2f} s: {exc}"
    messages = comm.comm.gather(message, root=0)
    if comm.rank == 0:
        print("\n".join(str(m) for m in messages), flush=True)
    check(message is not None, f"rank {comm.rank}: no ModelMismatchError")


def main() -> None:
    world = dist.init()
    dt.set_default_dtype(np.float64)
    cases = {"equivalence": equivalence, "mismatch": mismatch, "empty-shard": empty_shard, "syncbn": syncbn,
             "compression": compression, "captured": captured}
    cases[sys.argv[1]](world)
    world.barrier()


if __name__ == "__main__":
    run_or_abort(main)
