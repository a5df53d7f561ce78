"""An alpha-beta-gamma cost model of all-reduce and of one data-parallel training step.

A link is three numbers (Hockney's model with a reduction term, as in Thakur, Rabenseifner & Gropp,
"Optimization of collective communication operations in MPICH", 2005):

* ``alpha``: seconds of latency per message (per step of a collective algorithm);
* ``beta``: seconds per byte moved through one rank's link (1 / bandwidth);
* ``gamma``: seconds per byte of local reduction (the additions of a reduce-scatter).

All-reduce of ``m`` bytes over ``n`` ranks:

============================  =============================================================
ring (ours)                   2(n-1) alpha + 2(n-1)/n m beta + (n-1)/n m gamma
recursive doubling            ceil(log2 n) (alpha + m beta + m gamma)
Rabenseifner                  2 ceil(log2 n) alpha + 2(n-1)/n m beta + (n-1)/n m gamma
mpi                           the faster of the two above (what MPICH's MPI_Allreduce chooses)
hierarchical                  reduce within a node (intra link), ring over the nodes (inter
                              link), broadcast within the node
compressed                    the same algorithm on ``ratio * m`` bytes (summable payloads),
                              or an all-gather of the n payloads (top-k, QSGD, signSGD)
============================  =============================================================

A step is forward + backward + exposed communication + optimizer. Gradients become ready during
backward at a constant rate in bucket order; each bucket's all-reduce starts when it is ready and the
previous one is done (one communication stream, as in DDP). The exposed part is what is left after
backward ends, so a step never takes less than ``max(compute, communication)``.

Nothing here imports MPI: ``calibrate_link`` fits the numbers from measurements taken elsewhere
(``dtrain.distributed.measure.measure_allreduce``, ``dtrain.bench.scaling``).

    link = Link(alpha=20e-6, beta=1 / 12.5e9, gamma=1 / 20e9)        # 100 Gb/s Ethernet
    allreduce_time(100e6, 64, "ring", link)                          # seconds
    step_time(StepModel(params=25.6e6, compute_s_per_sample=2.5e-3), batch=64, n=512, link=link)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["ALGORITHMS", "LINKS", "MODELS", "Compression", "Link", "StepBreakdown", "StepModel", "allreduce_time",
           "bucket_sizes", "calibrate_link", "efficiency", "overlap_exposed", "step_time"]

ALGORITHMS = ("ring", "recursive_doubling", "rabenseifner", "mpi", "hierarchical")


@dataclass(frozen=True)
class Link:
    """alpha (s per message), beta (s per byte), gamma (s per byte reduced); ``name`` for tables."""

    alpha: float
    beta: float
    gamma: float = 0.0
    name: str = ""

    def __post_init__(self):
        for k in ("alpha", "beta", "gamma"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Link.{k} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_bandwidth(cls, gbit_per_s: float, latency_s: float, reduce_gbyte_per_s: float = 20.0,
                       name: str = "") -> Link:
        """A link of ``gbit_per_s`` (1e9 bits/s) and ``latency_s``, reducing at ``reduce_gbyte_per_s``."""
        return cls(latency_s, 8.0 / (gbit_per_s * 1e9), 1.0 / (reduce_gbyte_per_s * 1e9),
                   name or f"{gbit_per_s:g} Gb/s")


# Links for the predictions. Latencies are typical MPI/NCCL small-message latencies of each fabric;
# gamma is a GPU-class reduction rate (CPU ranks reduce slower; calibrate for them).
LINKS = {
    "10GbE": Link.from_bandwidth(10, 30e-6, name="10 Gb/s Ethernet"),
    "25GbE": Link.from_bandwidth(25, 15e-6, name="25 Gb/s RoCE"),
    "100GbE": Link.from_bandwidth(100, 5e-6, name="100 Gb/s InfiniBand/RoCE"),
    "nvlink": Link.from_bandwidth(2400, 3e-6, reduce_gbyte_per_s=500, name="NVLink-class (300 GB/s)"),
}


@dataclass(frozen=True)
class Compression:
    """Bytes on the wire = ``ratio`` x the uncompressed bytes. ``exchange``: "allreduce" (summable
    payloads: fp16, PowerSGD) or "allgather" (every rank receives every payload: top-k, QSGD, signSGD).
    ``encode_s_per_byte``: compress + decompress time per uncompressed byte."""

    ratio: float = 1.0
    exchange: str = "allreduce"
    encode_s_per_byte: float = 0.0

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise ValueError(f"Compression.ratio must be in (0, 1], got {self.ratio!r}")
        if self.exchange not in ("allreduce", "allgather"):
            raise ValueError(f"Compression.exchange must be 'allreduce' or 'allgather', got {self.exchange!r}")


NO_COMPRESSION = Compression()


def _log2(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def allreduce_time(nbytes: float, n: int, algorithm: str = "ring", link: Link | None = None, *,
                   ranks_per_node: int = 1, intra: Link | None = None,
                   compression: Compression = NO_COMPRESSION) -> float:
    """Predicted seconds of one all-reduce of ``nbytes`` over ``n`` ranks (see the module docstring).

    ``hierarchical`` uses ``intra`` (default: ``link``) within nodes of ``ranks_per_node`` ranks and
    ``link`` between them; with one rank per node it is the ring.
    """
    if link is None:
        raise ValueError("allreduce_time needs a Link")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if n == 1:
        return 0.0
    encode = compression.encode_s_per_byte * nbytes
    m = nbytes * compression.ratio
    if compression.exchange == "allgather":
        # Ring all-gather of n payloads of m bytes, then n payloads decoded and summed locally.
        return encode + (n - 1) * (link.alpha + m * link.beta) + (n - 1) * m * link.gamma
    a, b, g = link.alpha, link.beta, link.gamma
    if algorithm == "ring":
        t = 2 * (n - 1) * a + 2 * (n - 1) / n * m * b + (n - 1) / n * m * g
    elif algorithm == "recursive_doubling":
        t = _log2(n) * (a + m * b + m * g)
    elif algorithm == "rabenseifner":
        t = 2 * _log2(n) * a + 2 * (n - 1) / n * m * b + (n - 1) / n * m * g
    elif algorithm == "mpi":
        t = min(allreduce_time(m, n, "recursive_doubling", link), allreduce_time(m, n, "rabenseifner", link))
    else:  # hierarchical
        p = max(1, min(int(ranks_per_node), n))
        nodes = math.ceil(n / p)
        il = intra or link
        # Binomial-tree reduce and broadcast inside the node (what MPI_Reduce/Bcast do for large counts
        # over shared memory is pipelined; the tree is the simple, slightly pessimistic bound).
        local = 0.0 if p == 1 else _log2(p) * (2 * il.alpha + 2 * m * il.beta + m * il.gamma)
        t = local + allreduce_time(m, nodes, "ring", link)
    return encode + t


def bucket_sizes(total_bytes: float, cap_bytes: float) -> list[float]:
    """Bucket sizes of a gradient of ``total_bytes`` cut at ``cap_bytes`` (the last one smaller)."""
    if total_bytes <= 0:
        return []
    k = max(1, math.ceil(total_bytes / cap_bytes))
    return [float(cap_bytes)] * (k - 1) + [float(total_bytes - cap_bytes * (k - 1))]


def overlap_exposed(backward_s: float, buckets: list[float], comm_times: list[float], overlap: bool = True) -> float:
    """Communication time left after backward ends (the exposed part).

    Bucket i (in launch order) is ready when backward has produced its bytes (constant gradient rate);
    it starts when ready and the previous bucket is done. Without overlap every bucket starts at the
    end of backward, so everything is exposed.
    """
    total = sum(buckets)
    end, done = 0.0, 0.0
    for size, t in zip(buckets, comm_times):
        done += size
        ready = backward_s * done / total if (overlap and total > 0) else backward_s
        end = max(end, ready) + t
    return max(0.0, end - backward_s)


@dataclass(frozen=True)
class StepModel:
    """A model's costs: ``params`` (count), ``compute_s_per_sample`` (forward + backward on one worker),
    ``backward_fraction`` of that compute, ``optimizer_s_per_param``, gradient ``bytes_per_param``
    (4: float32; 2: fp16 gradients), a fixed per-step overhead ``fixed_s`` and ``copy_s_per_byte``, the
    cost of packing gradients into buckets (during backward) and unpacking the averages (after the
    last bucket: exposed); 0 where the all-reduce works in place."""

    params: float
    compute_s_per_sample: float
    backward_fraction: float = 2 / 3
    optimizer_s_per_param: float = 0.0
    bytes_per_param: float = 4.0
    fixed_s: float = 0.0
    copy_s_per_byte: float = 0.0
    name: str = ""

    @property
    def grad_bytes(self) -> float:
        return self.params * self.bytes_per_param


# Models for the predictions: parameter counts are the published ones; compute per sample is a
# V100-class fp32 estimate: forward + backward = 3x forward FLOPs at 5 TFLOP/s sustained (ResNet-50 then
# trains ~400 images/s, about what a V100 does in fp32).
def _gpu_model(name: str, params: float, fwd_gflop: float, tflops: float = 5.0) -> StepModel:
    return StepModel(params, 3 * fwd_gflop / (tflops * 1e3), name=name)


MODELS = {
    "resnet50": _gpu_model("ResNet-50 (25.6 M params)", 25.6e6, 4.1),
    "resnet101": _gpu_model("ResNet-101 (44.5 M params)", 44.5e6, 7.8),
    "1b": _gpu_model("1 B-parameter model", 1.0e9, 2.0 * 1.0e9 * 512 / 1e9),  # 512 tokens per sample
}


@dataclass
class StepBreakdown:
    """Seconds of one step: forward, backward, exposed communication, optimizer, and the total
    communication (exposed + overlapped)."""

    forward: float
    backward: float
    exposed: float
    optimizer: float
    comm: float
    fixed: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def compute(self) -> float:
        return self.forward + self.backward

    @property
    def overlapped(self) -> float:
        return max(0.0, self.comm - self.exposed)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.exposed + self.optimizer + self.fixed


def step_time(model: StepModel, batch: float, n: int, link: Link, algorithm: str = "ring", *,
              bucket_cap_bytes: float = 25 * 2**20, overlap: bool = True, ranks_per_node: int = 1,
              intra: Link | None = None, compression: Compression = NO_COMPRESSION,
              buckets: list[float] | None = None, overlap_efficiency: float = 1.0,
              control_message: bool = False) -> StepBreakdown:
    """Predicted breakdown of one step with ``batch`` samples on each of ``n`` workers.

    ``buckets``: the bucket sizes in bytes, in launch order (default: the gradient cut at ``bucket_cap_bytes``).
    ``overlap_efficiency`` in [0, 1]: the share of the overlappable communication that really runs in
    the background. 1 when communication has resources of its own (a NIC with DMA, a spare core); 0
    when the rank's communication thread shares its only core with backward (the CPU time of the
    all-reduce then adds to the step whether or not it is "overlapped").
    ``control_message``: one more tiny all-reduce per step (DDP's sample counts) ahead of the first bucket.
    """
    if not 0.0 <= overlap_efficiency <= 1.0:
        raise ValueError(f"overlap_efficiency must be in [0, 1], got {overlap_efficiency!r}")
    compute = model.compute_s_per_sample * batch
    backward = compute * model.backward_fraction
    if buckets is None:
        buckets = bucket_sizes(model.grad_bytes, bucket_cap_bytes)
    times = [allreduce_time(b, n, algorithm, link, ranks_per_node=ranks_per_node, intra=intra,
                            compression=compression) for b in buckets]
    if n == 1 or not buckets:
        return StepBreakdown(compute - backward, backward, 0.0, model.optimizer_s_per_param * model.params,
                             0.0, model.fixed_s)
    if control_message:
        times[0] += allreduce_time(8.0, n, algorithm, link, ranks_per_node=ranks_per_node, intra=intra)
    total_bytes = sum(buckets)
    backward += model.copy_s_per_byte * total_bytes  # packing, in the hooks
    unpack = model.copy_s_per_byte * total_bytes
    comm = sum(times)
    hidden_best = comm - overlap_exposed(backward, buckets, times, overlap)
    exposed = comm - overlap_efficiency * hidden_best + unpack
    return StepBreakdown(compute - model.compute_s_per_sample * batch * model.backward_fraction, backward, exposed,
                         model.optimizer_s_per_param * model.params, comm + unpack, model.fixed_s)


def efficiency(model: StepModel, batch: float, n: int, link: Link, algorithm: str = "ring", **kw) -> float:
    """Weak-scaling efficiency: time of a step on 1 worker / time on ``n`` workers (same batch per worker)."""
    return step_time(model, batch, 1, link, algorithm, **kw).total / step_time(model, batch, n, link, algorithm,
                                                                                 **kw).total


def calibrate_link(rows: list[dict], gamma: float, algorithm: str = "ring", name: str = "calibrated") -> Link:
    """Fit alpha and beta (least squares, both >= 0) to measured all-reduce rows
    (``size_bytes``, ``world_size``, ``time_s``), with ``gamma`` measured separately (at one world size
    the beta and gamma terms are both proportional to the size, so one fit cannot tell them apart).

    For ``ring``: time - (n-1)/n m gamma = 2(n-1) alpha + 2(n-1)/n m beta.
    """
    a_col, b_col, y = [], [], []
    for r in rows:
        n, m, t = int(r["world_size"]), float(r["size_bytes"]), float(r["time_s"])
        if n < 2:
            continue
        if algorithm == "ring":
            a_col.append(2 * (n - 1))
            b_col.append(2 * (n - 1) / n * m)
            y.append(t - (n - 1) / n * m * gamma)
        else:  # mpi: Rabenseifner form (large messages dominate the fit)
            a_col.append(2 * _log2(n))
            b_col.append(2 * (n - 1) / n * m)
            y.append(t - (n - 1) / n * m * gamma)
    if len(y) < 2:
        raise ValueError(f"calibrate_link needs >= 2 measurements at world size >= 2, got {len(y)}")
    A, y = np.array([a_col, b_col]).T, np.array(y)
    # Relative least squares (weight 1/t): small messages fix alpha, large ones beta.
    w = 1.0 / np.maximum(np.array([float(r["time_s"]) for r in rows if int(r["world_size"]) >= 2]), 1e-9)
    coef, *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
    alpha, beta = (max(0.0, float(c)) for c in coef)
    if beta == 0.0 or alpha == 0.0:  # refit the other one alone
        if beta == 0.0:
            alpha = max(0.0, float(np.sum(A[:, 0] * w * y * w) / np.sum((A[:, 0] * w) ** 2)))
        else:
            beta = max(0.0, float(np.sum(A[:, 1] * w * y * w) / np.sum((A[:, 1] * w) ** 2)))
    return Link(alpha, beta, gamma, name)


def with_link(model: StepModel, **changes) -> StepModel:
    """A copy of ``model`` with fields changed (convenience for sweeps)."""
    return replace(model, **changes)
