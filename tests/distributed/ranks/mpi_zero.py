"""Run under mpiexec by tests/distributed/test_zero.py: ZeroRedundancyOptimizer against one process.

    mpiexec -n N python tests/distributed/ranks/mpi_zero.py equivalence|memory|empty-shard
    mpiexec -n N python tests/distributed/ranks/mpi_zero.py save DIR      (10 steps, then the gathered checkpoint)
    mpiexec -n M python tests/distributed/ranks/mpi_zero.py resume DIR    (load it at another world size, 10 more steps)
    mpiexec -n N python tests/distributed/ranks/mpi_zero.py window        (algorithm='shm' against DDP over shm)
    (virtual cluster) mpi_zero.py across-nodes                          (algorithm='shm' refused across nodes)

``--algorithm shm`` after the case runs it with ``ZeroRedundancyOptimizer(..., algorithm="shm")`` (the
parameters and gradients in a shared window, zero_shm.py) instead of the ring collectives.

Every rank computes the single-process reference itself (same seed, full batch, the unsharded
optimizer) and compares with it. Any failure prints the rank and aborts the whole job.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
from mpi_harness import run_or_abort

import dtrain as dt
import dtrain.distributed as dist
import dtrain.nn.functional as F
from dtrain import nn, optim
from dtrain.data import shard_slice
from dtrain.train import param_checksum

TOL = 1e-12
SAVE_AT, STEPS = 10, 20
ALGORITHM = "ring"  # set by --algorithm


def zero_opt(params, cls, **kwargs):
    return dist.ZeroRedundancyOptimizer(params, cls, algorithm=ALGORITHM, **kwargs)


def build():
    dt.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n, step):
    rng = np.random.default_rng(1000 + step)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def max_diff(a, b):
    return max(float(np.abs(p.data - q.data).max()) for p, q in zip(a.parameters(), b.parameters()))


def state_diff(a: dict, b: dict, where: str) -> float:
    """Max abs difference of two optimizer state dicts, after checking they have the same structure."""
    check(a["param_groups"] == b["param_groups"], f"{where}: param_groups differ:\n{a['param_groups']}\n"
                                                  f"{b['param_groups']}")
    check(sorted(a["state"]) == sorted(b["state"]), f"{where}: state indices {sorted(a['state'])} vs "
                                                    f"{sorted(b['state'])}")
    worst = 0.0
    for i in a["state"]:
        check(sorted(a["state"][i]) == sorted(b["state"][i]), f"{where}: state keys of parameter {i} differ")
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            if hasattr(v, "shape"):
                check(v.shape == w.shape, f"{where}: state {i}/{k} shape {v.shape} vs {w.shape}")
                worst = max(worst, float(np.abs(v - w).max()) if v.size else 0.0)
            else:
                check(v == w, f"{where}: state {i}/{k} = {v} vs {w}")
    return worst


OPTIMIZERS = {
    "adam": (optim.Adam, dict(lr=0.01)),
    "sgd-momentum": (optim.SGD, dict(lr=0.1, momentum=0.9)),
    "adamw": (optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    "rmsprop": (optim.RMSprop, dict(lr=0.01)),
}


def train_pair(comm, name, batch, weighted, groups=False, sched=False, steps=STEPS):
    """``steps`` steps of the reference (full batch) and of ZeRO (this rank's part); returns both models."""
    r, n = comm.rank, comm.size
    cls, kwargs = OPTIMIZERS[name]
    ref, model = build(), build()

    def params(m):
        if not groups:
            return m.parameters()
        ps = list(m.parameters())
        return [{"params": ps[:2], "lr": kwargs["lr"] * 0.5}, {"params": ps[2:]}]

    ref_opt = cls(params(ref), **kwargs)
    zero = zero_opt(params(model), cls, **kwargs)
    scheds = [optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5) for o in (ref_opt, zero)] if sched else []
    for step in range(steps):
        x, y = data(batch, step)
        ref_opt.zero_grad()
        F.cross_entropy(ref(dt.tensor(x)), y).backward()
        ref_opt.step()
        part = shard_slice(batch, r, n)
        zero.zero_grad()
        if len(x[part]):
            F.cross_entropy(model(dt.tensor(x[part])), y[part]).backward()
        zero.step(num_samples=len(x[part])) if weighted else zero.step()
        for s in scheds:
            s.step()
    return ref, model, ref_opt, zero


def equivalence(comm):
    r, n = comm.rank, comm.size
    cases = [(name, 12, False, False, False) for name in OPTIMIZERS]  # 12 splits evenly over 1..4 ranks
    cases += [("adam", 10, True, False, False),  # uneven shards, sample-weighted
              ("sgd-momentum", 12, False, True, True)]  # two param groups and an lr schedule
    for name, batch, weighted, groups, sched in cases:
        what = f"{name} batch={batch} weighted={weighted} groups={groups} sched={sched}"
        ref, model, ref_opt, zero = train_pair(comm, name, batch, weighted, groups, sched)
        diff = max_diff(ref, model)
        check(diff <= TOL, f"{what}: max |zero - single| = {diff:.3e} > {TOL} on rank {r} of {n}")
        sums = comm.comm.allgather(param_checksum(model))
        check(len(set(sums)) == 1, f"{what}: parameters differ across ranks: {sums}")
        sdiff = state_diff(zero.state_dict(), ref_opt.state_dict(), what)
        check(sdiff <= TOL, f"{what}: gathered state differs from the unsharded optimizer's by {sdiff:.3e} "
                            f"on rank {r}")
        if sched:
            check(zero.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"], f"{what}: lr not scheduled")
        if r == 0:
            print(f"{what}: max diff {diff:.2e}, state diff {sdiff:.2e}", flush=True)
    if r == 0:
        print(f"equivalence OK on {n} ranks", flush=True)


def memory(comm):
    """Per-rank optimizer state is the rank's chunk of the flat vector: 2 Adam moments of 8 bytes each."""
    r, n = comm.rank, comm.size
    model = build()
    total = sum(p.data.size for p in model.parameters())
    zero = zero_opt(model.parameters(), optim.Adam, lr=0.01)
    x, y = data(12, 0)
    F.cross_entropy(model(dt.tensor(x[shard_slice(12, r, n)])), y[shard_slice(12, r, n)]).backward()
    zero.step()
    lo, hi = dist.chunk_bounds(total, n)[r]
    check(zero.state_bytes() == 2 * 8 * (hi - lo), f"rank {r}: state_bytes {zero.state_bytes()} != "
                                                    f"{2 * 8 * (hi - lo)}")
    sizes = comm.comm.allgather(zero.state_bytes())
    check(sum(sizes) == 2 * 8 * total, f"state bytes over ranks {sizes} do not add up to {2 * 8 * total}")
    if r == 0:
        print(f"memory OK on {n} ranks: {sizes}", flush=True)


def empty_shard(comm):
    """Two parameters over more ranks: some ranks own an empty shard and still take part."""
    p, q = nn.Parameter(np.array([1.0, 2.0])), nn.Parameter(np.array([1.0, 2.0]))
    zero, ref = zero_opt([p], optim.Adam, lr=0.1), optim.Adam([q], lr=0.1)
    for step in range(3):
        p.grad = np.array([0.5, -1.0 + step])
        q.grad = p.grad.copy()
        zero.step()
        ref.step()
    check(np.abs(p.data - q.data).max() <= TOL, f"empty shard: {p.data} vs {q.data} on rank {comm.rank}")
    sdiff = state_diff(zero.state_dict(), ref.state_dict(), "empty shard")
    check(sdiff <= TOL, f"empty shard: state differs by {sdiff:.3e}")
    if comm.rank == 0:
        print(f"empty-shard OK on {comm.size} ranks", flush=True)


def save(comm, directory):
    """SAVE_AT Adam steps, then the gathered optimizer state and the parameters, written by rank 0."""
    _, model, ref_opt, zero = train_pair(comm, "adam", 12, False, steps=SAVE_AT)
    full = zero.state_dict()
    sdiff = state_diff(full, ref_opt.state_dict(), "save")
    check(sdiff <= TOL, f"save: gathered state differs by {sdiff:.3e}")
    if comm.rank == 0:
        blob = {"optimizer": full, "model": model.state_dict(), "world": comm.size}
        Path(directory, "zero.pkl").write_bytes(pickle.dumps(blob))
        print(f"save OK on {comm.size} ranks", flush=True)


def resume(comm, directory):
    """Load the checkpoint (written at another world size), continue to STEPS; equals one process."""
    r, n = comm.rank, comm.size
    blob = pickle.loads(Path(directory, "zero.pkl").read_bytes())
    check(blob["world"] != n, f"resume: the checkpoint was written at {blob['world']} ranks, the same world")
    ref, _, ref_opt, _ = train_pair(comm, "adam", 12, False, steps=0)
    model = build()
    zero = zero_opt(model.parameters(), optim.Adam, lr=0.5)  # lr comes from the checkpoint
    model.load_state_dict(blob["model"])  # after construction: step() must take the loaded values
    zero.load_state_dict(blob["optimizer"])
    check(zero.param_groups[0]["lr"] == 0.01, f"resume: lr {zero.param_groups[0]['lr']} not loaded")
    for step in range(STEPS):
        x, y = data(12, step)
        ref_opt.zero_grad()
        F.cross_entropy(ref(dt.tensor(x)), y).backward()
        ref_opt.step()
        if step < SAVE_AT:
            continue
        part = shard_slice(12, r, n)
        zero.zero_grad()
        F.cross_entropy(model(dt.tensor(x[part])), y[part]).backward()
        zero.step()
    diff = max_diff(ref, model)
    check(diff <= TOL, f"resume: max |zero - single| = {diff:.3e} > {TOL} on rank {r} of {n}")
    sdiff = state_diff(zero.state_dict(), ref_opt.state_dict(), "resume")
    check(sdiff <= TOL, f"resume: state differs by {sdiff:.3e} on rank {r}")
    if r == 0:
        print(f"resume OK on {n} ranks (saved at {blob['world']}): max diff {diff:.2e}", flush=True)


def window(comm):
    """algorithm='shm': float32 MLP, momentum SGD with weight decay, uneven shards weighted by sample counts, against
    DDP over the shm window with the unsharded optimizer: the same bits after every step at 1 and 2 ranks (within
    float32 rounding at more), and the same bits on every rank. Also: ``.grad`` keeps the local gradient; the
    parameters live in the window; a parameter whose array is replaced is moved back in;
    zero_grad(set_to_none=False) accumulates; closing the communicator gives the parameters their own memory,
    with the same values, and a step after it raises; the window outlives arrays taken from the parameters
    before the close (a state_dict), and is freed when none is left."""
    r, n = comm.rank, comm.size
    dt.set_default_dtype(np.float32)
    sub = dist.Communicator(comm.comm.Dup(), owns_comm=True, label="zero-window")
    ddp_model, model = build(), build()
    ddp = dist.DistributedDataParallel(ddp_model, comm=comm, algorithm="shm")
    ref_opt = optim.SGD(ddp_model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, comm=sub, algorithm="shm", lr=0.1,
                                        momentum=0.9, weight_decay=0.01)
    check(all(not p.data.flags.owndata for p in model.parameters()), f"rank {r}: parameters not in the window")
    batch = 7 * n + 3  # uneven shards
    for step in range(12):
        x, y = data(batch, step)
        part = shard_slice(batch, r, n)
        xs, ys = dt.tensor(x[part].astype(np.float32)), y[part]
        ref_opt.zero_grad()
        F.cross_entropy(ddp(xs), ys).backward()
        ref_opt.step()
        keep = step % 4 == 3  # accumulate over two backwards into the same .grad
        zero.zero_grad(set_to_none=not keep)
        loss = F.cross_entropy(model(xs), ys)
        if keep:
            (loss * 0.0).backward(retain_graph=True)
        loss.backward()
        local = [p.grad.copy() for p in model.parameters()]
        if step == 5:  # a parameter's array replaced, not loaded in place
            first = next(iter(model.parameters()))
            first.data = first.data.copy()
        zero.step(num_samples=len(ys))
        for p, g in zip(model.parameters(), local):
            check(np.array_equal(p.grad, g), f"step {step}: .grad is not the local gradient after step on rank {r}")
        for (name, p), q in zip(model.named_parameters(), ddp_model.parameters()):
            # At 2 ranks a + b = b + a: the same bits. With more, a value is summed on the rank that owns its
            # chunk, that rank's term first, and ZeRO's chunks are not DDP's buckets': float32 rounding apart.
            diff = float(np.abs(p.data - q.data).max())
            check(diff == 0 if n <= 2 else diff <= 1e-5, f"step {step}: {name} differs from DDP over shm by "
                                                         f"{diff:.3e} on rank {r} of {n}")
        sums = comm.comm.allgather(param_checksum(model))
        check(len(set(sums)) == 1, f"step {step}: parameters differ across ranks: {sums}")
    check(not next(iter(model.parameters())).data.flags.owndata, f"rank {r}: the replaced array was not moved back")
    before = [p.data.copy() for p in model.parameters()]
    live = model.state_dict()  # the live arrays, views of the window: it must outlive them (else a crash)
    sub.close()
    for p, b, a in zip(model.parameters(), before, live.values()):
        check(p.data.flags.owndata and np.array_equal(p.data, b), f"rank {r}: parameters lost when the window closed")
        check(np.array_equal(a, b), f"rank {r}: an array taken before the close changed")
    check(not zero._windows[0].freed, f"rank {r}: the window was freed while arrays still viewed it")
    del live
    other = dist.Communicator(comm.comm.Dup(), owns_comm=True, label="zero-window-2")
    small = build()
    opt = dist.ZeroRedundancyOptimizer(small.parameters(), optim.Adam, comm=other, algorithm="shm", lr=0.01)
    F.cross_entropy(small(dt.tensor(x[part].astype(np.float32))), y[part]).backward()
    opt.step()
    other.close()
    check(opt._windows[0].freed, f"rank {r}: the window was not freed although no array viewed it")
    try:
        zero.step()
    except RuntimeError as exc:
        check("closed" in str(exc), f"rank {r}: unexpected error after close: {exc}")
    else:
        check(False, f"rank {r}: step after the communicator closed did not raise")
    if r == 0:
        print(f"window OK on {n} ranks", flush=True)


def across_nodes(comm):
    """Ranks on more than one node (the virtual cluster): algorithm='shm' is refused on every rank, naming what
    to use instead, and the model is left as it was; the ring works."""
    model = build()
    try:
        dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, algorithm="shm", lr=0.1)
    except ValueError as exc:
        check("ZeroRedundancyOptimizer with algorithm='shm' (rank" in str(exc)
              and "every rank must be on one node" in str(exc) and "use algorithm='ring' across nodes" in str(exc),
              f"rank {comm.rank}: unexpected message: {exc}")
    else:
        check(False, f"rank {comm.rank}: algorithm='shm' across nodes was not refused")
    check(all(p.data.flags.owndata for p in model.parameters()), f"rank {comm.rank}: the refusal moved parameters")
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, lr=0.1)
    x, y = data(12, 0)
    part = shard_slice(12, comm.rank, comm.size)
    F.cross_entropy(model(dt.tensor(x[part])), y[part]).backward()
    zero.step()
    if comm.rank == 0:
        print(f"across-nodes OK on {comm.size} ranks", flush=True)


def main() -> None:
    global ALGORITHM
    world = dist.init()
    dt.set_default_dtype(np.float64)
    args = sys.argv[1:]
    if "--algorithm" in args:
        i = args.index("--algorithm")
        ALGORITHM = args[i + 1]
        del args[i:i + 2]
    case = args[0]
    if case in ("save", "resume"):
        {"save": save, "resume": resume}[case](world, args[1])
    else:
        cases = {"equivalence": equivalence, "memory": memory, "empty-shard": empty_shard, "window": window,
                 "across-nodes": across_nodes}
        cases[case](world)
    world.barrier()


if __name__ == "__main__":
    run_or_abort(main)
