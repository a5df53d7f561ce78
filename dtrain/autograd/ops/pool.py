"""Max and average pooling over NCHW arrays.

Max pooling whose windows tile the input (stride == kernel, no padding or dilation: the usual 2x2) works
channels-last on one contiguous copy of the windows: a running comparison over the KH*KW offsets gives the
max and the first offset that reaches it (torch's argmax, NaN propagating), and backward is one broadcast
into the tiles. Other pooling reuses the strided windows of conv.py.
"""

from __future__ import annotations

import numpy as np

from ..function import FusedFunction
from ..tensor import Tensor
from ._util import xp_of
from .conv import _col2im, _out_size, _pad2d, _pair, _unpad, _windows


class _FusedPool(FusedFunction):
    def _setup(self, x, kernel, stride, padding, dilation):
        self.x_shape, self.k, self.s, self.p, self.d = x.shape, kernel, stride, padding, dilation
        self.out_hw = tuple(_out_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1))
        self.padded = (x.shape[0], x.shape[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])

    def _scatter(self, cols_at, dtype, xp):
        gxp = _col2im(cols_at, self.padded, dtype, xp, self.k, self.s, self.d, self.out_hw)
        return _unpad(gxp, self.p, self.x_shape)


class FusedMaxPool2d(_FusedPool):
    composition = "pad with -inf, strided getitem per window offset, stack, amax over the window"
    capturable = True  # the pooling frontends check shapes and normalise fixed arguments only

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)):
        self._setup(x, kernel, stride, padding, dilation)
        xp = xp_of(x)
        # Windows that tile the input (stride == kernel, no padding, no dilation: every CNN's 2x2 pool): a running
        # max over the KH*KW offsets of one contiguous copy of the windows, channels-last.
        self.tiled = stride == kernel and padding == (0, 0) and dilation == (1, 1)
        if self.tiled:
            best, arg = self._running_max(x)
            self.saved = (arg,)
            return best
        win = _windows(_pad2d(x, padding, -np.inf), kernel, stride, dilation, self.out_hw)
        flat = win.reshape(win.shape[:4] + (-1,))
        arg = flat.argmax(axis=-1)
        self.saved = (arg,)
        return xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def _tiles(self, a):
        """The (N, OH, KH, OW, KW, C) view of the tiled windows of ``a``, an NHWC array."""
        (kh, kw), (oh, ow) = self.k, self.out_hw
        return a[:, :kh * oh, :kw * ow, :].reshape(a.shape[0], oh, kh, ow, kw, a.shape[3])

    def _running_max(self, x):
        """(max, index of the first max in the window), as argmax gives: equal values keep the earlier offset
        (after a ReLU whole windows tie at 0), and a NaN is the max (max_pool2d propagates NaN). Channels-last
        inside (a convolution's output already is: no copy), and the windows are first copied into one
        contiguous (KH*KW, N, OH, OW, C) array: whole-slab operations, 3x faster than on strided views. The max
        comes back as the (N, C, OH, OW) view of channels-last memory, the index as (N, OH, OW, C)."""
        xp = xp_of(x)
        (kh, kw) = self.k
        xh = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))
        slabs = xp.ascontiguousarray(self._tiles(xh).transpose(2, 4, 0, 1, 3, 5))
        slabs = slabs.reshape((kh * kw,) + slabs.shape[2:])
        best = slabs.max(axis=0)
        nan = xp.isnan(best)
        nan = nan if nan.any() else None  # NaN == NaN is false: a NaN window's first NaN is its max

        def is_max(t):
            hit = xp.equal(slabs[t], best)
            return hit if nan is None else hit | (nan & xp.isnan(slabs[t]))

        itype = np.dtype(np.int8 if kh * kw <= 127 else np.int64)
        arg = xp.zeros(best.shape, dtype=itype)
        seen = is_max(0)
        first = xp.empty(best.shape, dtype=bool)
        for t in range(1, kh * kw):  # bool and int8 arithmetic: 5x faster than masked copies
            hit = is_max(t)
            xp.greater(hit, seen, out=first)  # a max here and none before
            arg += first.astype(itype) * itype.type(t)
            seen |= hit
        return best.transpose(0, 3, 1, 2), arg

    def backward(self, g):
        (arg,) = self.saved
        xp = xp_of(g)
        (kh, kw) = self.k
        zero = xp.zeros((), dtype=g.dtype)
        if self.tiled:  # the windows do not overlap: one broadcast selects each window's gradient
            n, c, h, w = self.x_shape
            gx = xp.zeros((n, h, w, c), dtype=g.dtype)
            offsets = xp.arange(kh * kw, dtype=arg.dtype).reshape(1, 1, kh, 1, kw, 1)
            gh = xp.ascontiguousarray(g.transpose(0, 2, 3, 1))[:, :, None, :, None, :]
            xp.multiply(arg[:, :, None, :, None, :] == offsets, gh, out=self._tiles(gx))
            return gx.transpose(0, 3, 1, 2)
        return self._scatter(lambda i, j: xp.where(arg == i * kw + j, g, zero), g.dtype, xp)

    def jvp(self, t):
        (arg,) = self.saved
        xp = xp_of(t)
        if self.tiled:
            tiles = self._tiles(xp.ascontiguousarray(t.transpose(0, 2, 3, 1)))
            out = xp.zeros(arg.shape, dtype=t.dtype)
            for k in range(self.k[0] * self.k[1]):
                i, j = divmod(k, self.k[1])
                xp.copyto(out, tiles[:, :, i, :, j, :], where=arg == k)
            return out.transpose(0, 3, 1, 2)
        win = _windows(_pad2d(t, self.p), self.k, self.s, self.d, self.out_hw)
        flat = win.reshape(win.shape[:4] + (-1,))
        return xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]


class FusedAvgPool2d(_FusedPool):
    composition = "pad, strided getitem per window offset, sum, / window size (or the count of real pixels)"
    capturable = True

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), count_include_pad=True):
        self._setup(x, kernel, stride, padding, (1, 1))
        xp = xp_of(x)
        if count_include_pad or padding == (0, 0):
            self.div = kernel[0] * kernel[1]
        else:  # how many real (unpadded) pixels each window covers
            ones = xp.ones((1, 1) + x.shape[2:], dtype=x.dtype)
            self.div = _windows(_pad2d(ones, padding), kernel, stride, (1, 1), self.out_hw).sum(axis=(4, 5))
        return self._pool(x)

    def _pool(self, x):
        win = _windows(_pad2d(x, self.p), self.k, self.s, self.d, self.out_hw)
        return win.sum(axis=(4, 5)) / self.div

    def backward(self, g):
        xp = xp_of(g)
        gd = g / self.div
        return self._scatter(lambda i, j: gd, g.dtype, xp)

    def jvp(self, t):
        return self._pool(t)


def _pool_args(x: Tensor, kernel_size, stride, padding, name: str):
    if x.ndim != 4:
        raise ValueError(f"{name}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    if min(k) < 1 or min(s) < 1:
        raise ValueError(f"{name}: kernel_size {k} and stride {s} must be >= 1")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k}")
    for a in (0, 1):
        if _out_size(x.shape[2 + a], k[a], s[a], p[a], 1) < 1:
            raise ValueError(f"{name}: input size {x.shape[2:]} is smaller than the kernel {k}")
    return k, s, p


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1) -> Tensor:
    """Max over windows (torch's F.max_pool2d; stride defaults to kernel_size)."""
    k, s, p = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    return FusedMaxPool2d.apply(x, kernel=k, stride=s, padding=p, dilation=_pair(dilation, "dilation"))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Mean over windows (torch's F.avg_pool2d; stride defaults to kernel_size)."""
    k, s, p = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    return FusedAvgPool2d.apply(x, kernel=k, stride=s, padding=p, count_include_pad=count_include_pad)
