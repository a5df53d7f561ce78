"""Rank-side checks that every compressor rides every all-reduce algorithm, and that a user's comm hook
replaces the built-in one; run as ``mpiexec -n 4 python mpi_compression_algorithms.py`` with
DTRAIN_RANKS_PER_NODE=2 (4 ranks as 2 "nodes"). tests/distributed/test_compression_algorithms.py runs it.

* ``compression.reduce`` of every compressor over ring, mpi, hierarchical and shm: every rank holds the same
  bits; the result equals the flat ring's (bit for bit for ``none`` on integer-valued data and for the
  all-gather compressors; within the compressor's own rounding otherwise);
* the bytes this rank sent to the other node under ``hierarchical`` are exactly those of the hierarchical
  schedule (leaders only: the leaders' ring over the payloads), not the flat ring's;
* DistributedDataParallel with ``algorithm="hierarchical"`` and fp16 / powersgd / topk keeps every rank's
  parameters bit-identical and close to the flat ring's;
* a user's comm hook that casts buckets to fp16 itself gives the same parameters as ``compression="fp16"``,
  bit for bit.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mpi_harness import run_or_abort, segments

import dtrain as dt
import dtrain.distributed as dist
import dtrain.nn.functional as F
from dtrain import nn, optim
from dtrain.backend import finfo_eps
from dtrain.distributed import compression
from dtrain.distributed.algorithms import ring_allreduce_bytes
from dtrain.distributed.algorithms.base import offsets_of

SHAPES = [("w1", (24, 10)), ("b1", (24,)), ("w2", (6, 24)), ("b2", (6,))]
SIZE = sum(int(np.prod(s)) for _, s in SHAPES)
SPECS = ["none", "fp16", "bf16", "powersgd:2:start=0", "randomk:0.1", "topk:0.05", "qsgd:16", "signsgd"]
ALGORITHMS = ("ring", "mpi", "hierarchical", "shm")
STEPS = 4


def digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def same_on_all_ranks(world, a, what: str) -> None:
    everyone = world.comm.allgather(digest(a))
    assert len(set(everyone)) == 1, f"{what}: ranks hold different bits"


def segments_of(flat: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return segments(flat, SHAPES)


def rank_input(r: int, step: int, dtype, integer: bool) -> np.ndarray:
    rng = np.random.default_rng([r, step])
    x = rng.integers(-8, 9, SIZE).astype(np.float64) if integer else rng.standard_normal(SIZE)
    return x.astype(dtype)


class Spy:
    """Records the arrays the exchange hands to the all-reduce and the all-gather."""

    def __init__(self):
        self.calls = []
        self.real_allreduce = compression.exchange.plain_allreduce
        self.real_allgather = compression.exchange.allgather

    def __enter__(self):
        def allreduce(a, *args, **kw):
            self.calls.append(("allreduce", a.size, a.dtype.itemsize))
            return self.real_allreduce(a, *args, **kw)

        def allgather(a, *args, **kw):
            self.calls.append(("allgather", a.nbytes, 1))
            return self.real_allgather(a, *args, **kw)

        compression.exchange.plain_allreduce, compression.exchange.allgather = allreduce, allgather
        return self

    def __exit__(self, *exc):
        compression.exchange.plain_allreduce = self.real_allreduce
        compression.exchange.allgather = self.real_allgather


def hierarchical_inter_node_bytes(world, calls) -> int:
    """What the hierarchical schedule sends between nodes from this rank: leaders run a ring over the
    nodes (all-reduce: the payload; all-gather: the node blocks); every other rank sends nothing."""
    if world.leader_comm is None:
        return 0
    nodes = len(set(world.node_of))
    me = world.leader_comm.Get_rank()
    members = [sum(1 for x in world.node_of if x == leader) for leader in sorted(set(world.node_of))]
    total = 0
    for kind, count, itemsize in calls:
        if kind == "allreduce":
            total += ring_allreduce_bytes(count, itemsize, nodes, me)
        else:  # node blocks of count bytes per rank, ring all-gather over the leaders
            blocks = offsets_of([m * count for m in members])
            total += sum(blocks[(me - s) % nodes][1] - blocks[(me - s) % nodes][0] for s in range(nodes - 1))
    return total


def check_reduce(world, spec: str) -> None:
    dtype = np.float32 if spec in ("fp16", "bf16") else np.float64
    integer = spec == "none"
    n = world.size
    results = {}
    for alg in ALGORITHMS:
        c = compression.get(spec)
        outs = []
        for step in range(STEPS):
            flat = rank_input(world.rank, step, dtype, integer)
            before = world.bytes_inter_node
            with Spy() as spy:
                compression.reduce(c, world, "bucket0", segments_of(flat), flat, step, algorithm=alg)
            sent = world.bytes_inter_node - before
            same_on_all_ranks(world, flat, f"{spec} over {alg}, step {step}")
            if alg == "hierarchical":
                want = hierarchical_inter_node_bytes(world, spy.calls)
                assert sent == want, f"{spec} over hierarchical: {sent} bytes to the other node, schedule says {want}"
            outs.append(flat)
        results[alg] = outs
    for alg in ("mpi", "hierarchical", "shm"):
        for step, (got, ring) in enumerate(zip(results[alg], results["ring"])):
            what = f"{spec} over {alg}, step {step}, vs the ring"
            if spec == "none" or compression.get(spec).exchange == "allgather":
                assert np.array_equal(got, ring), what + ": not bit for bit"
                continue
            xs = [rank_input(r, step, dtype, integer).astype(np.float64) for r in range(n)]
            scale = np.sum(np.abs(xs), axis=0) + np.abs(ring.astype(np.float64))
            wire = np.float16 if spec == "fp16" else (dt.bfloat16 if spec == "bf16" else dtype)
            bound = 2 * (n + 1) * finfo_eps(wire) * scale + (2 * n * 2.0**-24 if spec == "fp16" else 0.0)
            if spec.startswith("powersgd"):  # the orthonormalisation amplifies rounding a little
                bound = 1e-9 * (np.linalg.norm(ring) + 1)
            err = np.abs(got.astype(np.float64) - ring.astype(np.float64))
            assert np.all(err <= bound), f"{what}: error {np.max(err / np.maximum(bound, 1e-300))}x the bound"


def model_and_data(seed: int = 0):
    dt.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 4, 64)
    return model, x, y


def train(world, steps: int = 6, hook=None, **ddp_kwargs):
    model, x, y = model_and_data()
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.002, **ddp_kwargs)
    if hook is not None:
        ddp.register_comm_hook(dist.HookState(world, ddp_kwargs.get("algorithm", "ring")), hook)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per = len(x) // world.size
    mine = slice(world.rank * per, (world.rank + 1) * per)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(ddp(dt.tensor(x[mine])), y[mine]).backward()
        opt.step()
    ddp.remove_hooks()
    return np.concatenate([p.data.reshape(-1) for p in model.parameters()]), ddp


def check_ddp_hierarchical(world) -> None:
    for spec in ("fp16", "powersgd:2:start=0", "topk:0.05"):
        hier, ddp = train(world, compression=spec, algorithm="hierarchical")
        same_on_all_ranks(world, hier, f"DDP {spec} over hierarchical")
        ring, _ = train(world, compression=spec, algorithm="ring")
        tol = 1e-2 if spec == "fp16" else 1e-4
        assert np.allclose(hier, ring, rtol=tol, atol=tol), f"DDP {spec}: hierarchical far from the ring"
        if world.leader_comm is None:
            assert ddp.bytes_inter_node == 0, f"DDP {spec}: a non-leader sent {ddp.bytes_inter_node} B across nodes"


def fp16_hook(state, bucket):
    """A user's own hook: cast the bucket to float16, sum it over the state's algorithm, cast back."""
    def job(wcomm):
        half = bucket.buffer.astype(np.float16)
        dist.allreduce(half, op="sum", algorithm=state.algorithm, comm=wcomm)
        bucket.buffer[...] = half
        return bucket.buffer

    return state.comm.submit(f"user fp16 hook {bucket.key}", job)


def check_user_hook(world) -> None:
    for alg in ("ring", "hierarchical"):
        builtin, _ = train(world, compression="fp16", algorithm=alg)
        mine, _ = train(world, hook=fp16_hook, algorithm=alg)
        assert np.array_equal(mine.view(np.uint8), builtin.view(np.uint8)), (
            f"user fp16 hook over {alg}: parameters differ from compression='fp16'")
        plain, _ = train(world, algorithm=alg)
        assert not np.array_equal(plain, builtin), "the fp16 hook changed nothing (the test would prove nothing)"


def main() -> None:
    world = dist.init()
    assert world.node_count == 2 and world.size == 4, "run with 4 ranks and DTRAIN_RANKS_PER_NODE=2"
    for spec in SPECS:
        if spec == "bf16" and dt.bfloat16 is None:
            continue
        check_reduce(world, spec)
        world.barrier()
    check_ddp_hierarchical(world)
    check_user_hook(world)
    print(f"compression x algorithms OK on rank {world.rank}", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
