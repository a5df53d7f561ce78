"""SyncBatchNorm: batch normalisation whose statistics cover the whole global batch, across ranks.

Forward all-reduces the per-channel sum and count, then the sum of squared deviations (two passes:
as stable as single-process batch norm), so every rank normalises with the global mean and
variance and updates identical running statistics.

Backward keeps DDP's convention that each rank differentiates its own mean loss L_r and DDP
weights ranks by their sample counts n_r. The global objective is L = Σ_r (n_r/N) L_r, so the
upstream gradient of rank r, as seen by the global objective, is w_r·g with w_r = n_r/N. The two
per-channel sums of the normalisation backward are all-reduced over those weighted gradients;
the input gradient is handed back divided by w_r (DDP multiplies by it again when it averages).
With one rank this is exactly ordinary batch norm.

Every rank must run the same SyncBatchNorm forwards and backwards in the same order, each with at
least one sample (an empty shard would leave the others waiting in the all-reduce).
"""

from __future__ import annotations

import numpy as np

from ..autograd.ops.norm import FusedBatchNorm as _BatchNormFn
from ..autograd.ops.norm import batch_norm
from ..autograd.tensor import Tensor
from ..backend import to_device
from ..nn.layers.norm import BatchNormBase
from ..nn.module import Module
from .collectives import allreduce
from .comm import Communicator, get_world

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _SyncBatchNormFn(_BatchNormFn):
    """Batch norm whose two statistics passes and two gradient sums are all-reduced over ``comm``."""

    capturable = False  # SyncBatchNorm's forward counts batches and passes buffers outside capture's rules

    def forward(self, x, *wb, comm=None, **options):
        self.comm = comm
        return super().forward(x, *wb, training=True, **options)

    def _statistics(self, xm):
        cm, xp = self.cm, self.cm.xp
        c = cm.c
        self.n_local = xm.shape[0]
        first = np.empty(c + 1, dtype=np.float64)
        first[:c] = to_device(cm.sum(xm), "cpu")
        first[c] = self.n_local
        allreduce(first, op="sum", comm=self.comm)
        self.count = float(first[c])
        mean = xp.asarray(first[:c] / self.count, dtype=cm.dtype)
        d = cm.apply(xp.subtract, xm, mean)
        second = to_device(cm.sum(d * d), "cpu").astype(np.float64)
        allreduce(second, op="sum", comm=self.comm)
        # float64 statistics, as all-reduced: the running statistics and invstd are taken from them
        return xp.asarray(first[:c] / self.count), xp.asarray(second / self.count), d

    def _gradient_means(self, sum_g, sum_gx):
        weight = self.n_local / self.count  # this rank's share of the global objective
        c = self.cm.c
        sums = np.empty(2 * c, dtype=np.float64)
        sums[:c] = to_device(sum_g, "cpu") * weight
        sums[c:] = to_device(sum_gx, "cpu") * weight
        allreduce(sums, op="sum", comm=self.comm)
        means = self.cm.xp.asarray(sums / (self.count * weight), dtype=self.cm.dtype)
        return means[:c], means[c:]

    def jvp(self, *tangents):
        raise NotImplementedError("forward-mode differentiation through SyncBatchNorm is not supported")


class SyncBatchNorm(BatchNormBase):
    """Batch norm over (N, C, ...) input with statistics all-reduced over the ranks of ``comm``.

    Same parameters, buffers and state_dict keys as BatchNorm1d/2d; in eval mode it uses the running
    statistics like them. Build one directly or convert a model with :func:`convert_sync_batchnorm`.
    """

    _expected_ndims = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, comm: Communicator | None = None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.comm = comm

    def forward(self, x: Tensor) -> Tensor:
        comm = self.comm or get_world()
        if not self.training and self.track_running_stats:
            return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if x.ndim not in self._expected_ndims or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}) expects (N, {self.num_features}, ...) input, "
                             f"got shape {x.shape}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        inputs = [x] + [t for t in (self.weight, self.bias) if t is not None]
        return _SyncBatchNormFn.apply(*inputs, has_w=self.weight is not None, has_b=self.bias is not None,
                                      running_mean=self.running_mean if self.training else None,
                                      running_var=self.running_var if self.training else None,
                                      momentum=momentum, eps=self.eps, comm=comm)


def convert_sync_batchnorm(module: Module, comm: Communicator | None = None) -> Module:
    """Replace every BatchNorm1d/2d in ``module`` by a SyncBatchNorm holding the same Parameter objects
    and buffers (so optimizers built before stay valid); returns the (possibly new) module."""
    if isinstance(module, BatchNormBase) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm.__new__(SyncBatchNorm)
        Module.__init__(sync)
        for key in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(sync, key, getattr(module, key))
        sync.comm = comm
        for name, p in module._parameters.items():
            sync.register_parameter(name, p)
        for name, b in module._buffers.items():
            sync.register_buffer(name, b)
        sync.train(module.training)
        return sync
    for name, child in list(module.named_children()):
        new = convert_sync_batchnorm(child, comm)
        if new is not child:
            module.register_module(name, new)
    return module
