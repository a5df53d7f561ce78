"""ZeRO stage 1 through a shared-memory window: ``ZeroRedundancyOptimizer(..., algorithm="shm")``, every rank on one
node.

Each param group gets one MPI shared-memory window with two regions per rank, each the group's flat length:

* **gradients**: each parameter offers its place there to backward (``Tensor.set_grad_buffer``), so ``linear``
  writes its weight gradient straight into it; other gradients are copied in at ``step``. After a fence, rank r
  sums chunk r over the ranks' gradient regions (its own values first, then the others in rank order, weighted
  by the sample counts in the segments' headers: the shm bucket sum, ``sum_scaled``) into the shard's gradient,
  a private array, while the chunk is in cache; ``.grad`` keeps the local gradient, as with the ring.
* **values**: the parameters themselves live there (``p.data`` is a view of this rank's region; the shard is
  the view of chunk r), so the wrapped optimizer updates rank r's chunk in place. After a second fence every
  rank copies each other chunk from the rank that updated it: the all-gather, reading where the values are.

Against DDP over the shm window (sum, write the averaged gradients back, every rank updating every parameter),
a step moves the parameters instead of the gradients and updates 1/N of them per rank: the optimizer's pass,
bound by memory bandwidth when both ranks run it at once, is what shrinks.

Two fences a step and no barrier after it: a rank writes its gradient region again only in its next backward,
after every rank's sum has passed the second fence; it writes its chunk of the value region again only in the
next step's update, after the next step's first fence, which no rank reaches before it has copied the chunks.
The window is freed with the communicator, after the parameters are moved back to arrays of their own
(``close``): a model outlives its process group.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np

from .algorithms.shm import HEADER, SharedSegments, _node, sum_scaled, weights_and_scale

__all__ = ["ZeroWindow"]

_windows = itertools.count()  # windows made in this process: every rank makes them in the same order
_kept: list = []  # windows left allocated at close because arrays still viewed them (see ZeroWindow.close)


class ZeroWindow:
    """The shared storage of one ZeRO param group (``group``: zero.py's ``_Group``) on ``comm``."""

    @staticmethod
    def check(params: list, where: str) -> None:
        """ValueError unless the group's parameters can live in a window: NumPy float32/float64 arrays."""
        dtype = np.dtype(params[0].data.dtype)
        bad = [i for i, p in enumerate(params) if type(p.data) is not np.ndarray]
        if bad or dtype not in (np.float32, np.float64):
            what = f"params[{bad[0]}] is a {type(params[bad[0]].data).__name__}" if bad else f"their dtype is {dtype}"
            raise ValueError(f"{where}: algorithm='shm' shares NumPy float32/float64 parameters between the ranks of "
                             f"one node, but {what}; use algorithm='ring'")

    def __init__(self, comm, group):
        ps = group.params
        dtype = np.dtype(ps[0].data.dtype)
        self.comm, self.group, self.rank = comm, group, comm.rank
        n = group.total
        node = _node(comm, "ZeroRedundancyOptimizer with algorithm='shm'", "algorithm='ring'")
        self.seg = SharedSegments(node, max(2 * n * dtype.itemsize, 1))
        comm.cache[("shm.zero", next(_windows))] = self  # the same key on every rank: freed in order
        self._refs = [sys.getrefcount(s) for s in self.seg.segments]  # before any view of them exists
        self.freed = False
        views = self.seg.data(dtype, 2 * n)
        self.grads, self.values = [v[:n] for v in views], [v[n:] for v in views]
        self.headers = [s[:HEADER].view(np.float64) for s in self.seg.segments]
        self.homes = []  # each parameter's place in this rank's value region: p.data while it stays there
        self.grad_homes = []  # and in its gradient region: .grad when backward wrote it there
        for p, (a, b) in zip(ps, group.offsets):
            home = self.values[self.rank][a:b].reshape(p.data.shape)
            home[...] = p.data
            p.data = home
            self.grad_homes.append(self.grads[self.rank][a:b].reshape(home.shape))
            p.set_grad_buffer(self.grad_homes[-1])
            self.homes.append(home)
        group.shard.data = self.values[self.rank][group.lo:group.hi]
        self.shard_grad = np.empty(group.hi - group.lo, dtype=dtype)

    def reduce(self, num_samples: float) -> np.ndarray:
        """This rank's chunk of the sample-weighted mean of the ranks' gradients (collective): the shard's gradient.
        RuntimeError on every rank when no rank had samples."""
        g, r = self.group, self.rank
        if not self.homes:
            raise RuntimeError(f"ZeroRedundancyOptimizer.step (rank {r}): its communicator was closed "
                               "(destroy_process_group); make a new optimizer on a new one")
        mine = self.grads[r]
        for i, (p, (a, b)) in enumerate(zip(g.params, g.offsets)):
            if p.data is not self.homes[i]:  # the array was replaced (not loaded in place): move it back in
                self._rehome(i, p)
            grad = p.grad
            if grad is None:
                mine[a:b] = 0
            elif grad is not self.grad_homes[i]:  # (backward wrote the others in place)
                mine[a:b] = grad.reshape(-1)
        self.headers[r][0] = num_samples
        with self.comm.watch("ZeroRedundancyOptimizer shared window (gradients)"):
            self.seg.fence()
        weights, scale, total = weights_and_scale(self.headers)
        if total <= 0:
            raise RuntimeError(f"ZeroRedundancyOptimizer.step (rank {r}): no rank had any samples")
        if len(self.grads) == 1:  # one rank: its gradients are the (weighted) mean, as DDP leaves them
            return self.grads[r][g.lo:g.hi]
        sum_scaled(self.comm, self.grads, g.lo, g.hi, r, weights, scale, out=self.shard_grad)
        return self.shard_grad

    def gather(self) -> None:
        """After the update of every rank's chunk: copy the other ranks' chunks into this rank's parameters."""
        with self.comm.watch("ZeroRedundancyOptimizer shared window (parameters)"):
            self.seg.fence()
        mine = self.values[self.rank]
        for q, (lo, hi) in enumerate(self.group.bounds):
            if q != self.rank and hi > lo:
                mine[lo:hi] = self.values[q][lo:hi]

    def _rehome(self, i: int, p) -> None:
        home = self.homes[i]
        if p.data.shape != home.shape or p.data.dtype != home.dtype:
            raise ValueError(f"ZeroRedundancyOptimizer (rank {self.rank}): parameter {i} became "
                             f"{p.data.dtype}{tuple(p.data.shape)} after construction, expected "
                             f"{home.dtype}{tuple(home.shape)}; make a new optimizer after changing the model")
        home[...] = p.data
        p.data = home

    def close(self) -> None:
        """Give the parameters, their gradients and the shard arrays of their own, then free the window
        (collective; ``Communicator.close`` calls it).

        Arrays taken from the parameters before (``model.state_dict()`` returns the live arrays, as torch's
        does) would still point into the window, and reading freed shared memory kills the process. So the
        window is freed only when no array views it any more on any rank: every view's base is its segment's
        array, whose reference count says so. Otherwise it stays allocated, valid, until the process ends."""
        for p, home in zip(self.group.params, self.homes):
            p.set_grad_buffer(None)
            if p.data is home:
                p.data = home.copy()
            if p.grad is not None and np.may_share_memory(p.grad, self.seg.segments[self.rank]):
                p.grad = p.grad.copy()
        shard = self.group.shard
        shard.data = shard.data.copy()
        self.homes, self.grad_homes = [], []
        self.grads = self.values = self.headers = home = None  # (``home``: the loop's last view)
        views = sum(now - before for now, before in zip([sys.getrefcount(s) for s in self.seg.segments], self._refs))
        if self.seg.node.allreduce(views):
            _kept.append(self.seg)
            return
        self.seg.close()
        self.freed = True
