"""BatchNorm1d/2d (running statistics as buffers) and LayerNorm."""

from __future__ import annotations

import numpy as np

from ...autograd import ops
from ...autograd.capture_hooks import CaptureError, is_tracing, note_buffers, replay_effect
from ...autograd.tensor import Tensor
from ...backend import as_device, get_default_dtype, resolve_dtype
from .. import init
from ..module import Module
from ._util import check_positive_int, new_parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNormBase", "LayerNorm"]


class BatchNormBase(Module):
    """What BatchNorm1d/2d (and distributed.SyncBatchNorm) share: parameters, running statistics as
    buffers, and the forward over ``F.batch_norm``; subclasses set the input ranks they accept."""

    _expected_ndims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        check_positive_int(name, num_features=num_features)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None (cumulative average), got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter("weight", new_parameter((num_features,), device, dtype) if affine else None)
        self.register_parameter("bias", new_parameter((num_features,), device, dtype) if affine else None)
        if track_running_stats:
            dev = as_device(device)
            dt = get_default_dtype() if dtype is None else resolve_dtype(dtype)
            with dev.context():
                self.register_buffer("running_mean", dev.xp.zeros(num_features, dtype=dt))
                self.register_buffer("running_var", dev.xp.ones(num_features, dtype=dt))
                self.register_buffer("num_batches_tracked", dev.xp.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self._expected_ndims or x.shape[1] != self.num_features:
            dims = " or ".join(f"{n}-D" for n in self._expected_ndims)
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects {dims} input with "
                             f"{self.num_features} channels in dim 1, got shape {x.shape}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self._count_batch()
            if self.momentum is None:  # cumulative moving average, as torch
                momentum = 1.0 / float(self.num_batches_tracked)
                if is_tracing():
                    raise CaptureError(
                        f"captured step: {type(self).__name__}(momentum=None) averages with a momentum that changes "
                        "every step, which a replay would freeze; give it a fixed momentum or run eagerly")
            replay_effect(self._count_batch)  # a replay runs the ops, not this method: count there too
        note_buffers(self, "running_mean", "running_var")
        # Batch statistics in training, or always when no running statistics are tracked.
        use_batch_stats = self.training or not self.track_running_stats
        return ops.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch_stats,
                              momentum, self.eps)

    def _count_batch(self) -> None:
        self.num_batches_tracked[...] += 1  # in place: no buffer reassignment (Module.__setattr__) per step

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(BatchNormBase):
    """Batch normalisation over (N, C) or (N, C, L) input; running stats in buffers running_mean/var."""

    _expected_ndims = (2, 3)


class BatchNorm2d(BatchNormBase):
    """Batch normalisation over (N, C, H, W) input; running stats in buffers running_mean/var."""

    _expected_ndims = (4,)


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` dims, then scale (weight) and shift (bias)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        check_positive_int("LayerNorm", **{f"normalized_shape[{i}]": s for i, s in enumerate(shape)})
        self.normalized_shape, self.eps = shape, eps
        self.elementwise_affine = elementwise_affine
        self.register_parameter("weight", new_parameter(shape, device, dtype) if elementwise_affine else None)
        self.register_parameter("bias", new_parameter(shape, device, dtype) if elementwise_affine and bias else None)
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
