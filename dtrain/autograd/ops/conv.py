"""2-D convolution over NCHW arrays, and the window helpers pooling shares (pool.py).

Windows are strided views of the (padded) input. Convolution (groups == 1) works channels-last: the input
becomes a padded NHWC array whose windows (N, OH, OW, KH, KW, C) are copied into column blocks (im2col, runs
of C contiguous values) of about BLOCK_BYTES, each multiplied by the weight while still in cache; the result
is the (N, C, OH, OW) view of NHWC memory. Stride-1 convolutions (and stride-1 input gradients) with a kernel
of several rows on NumPy float arrays run one GEMM per kernel row over row panels instead (conv_rows.py: each
pixel copied KW times, not KH*KW). An input with very few channels is copied offset by offset from
NCHW instead (runs of OW values). The weight gradient multiplies the forward's column matrix when it was
small enough to keep, else rebuilds it block by block; the stride-1 input gradient is a correlation of the
padded output gradient with the flipped kernel; larger strides sum each kernel offset's block of a batched
GEMM phase by phase of the stride (a 1x1 kernel scatters its one block: col2im). With groups the columns keep
the NCHW order (N, OH, OW, C, KH, KW), one block per group.
"""

from __future__ import annotations

import numpy as np

from ..autocast import cast_inputs
from ..function import FusedFunction, is_grad_enabled
from ..tensor import Tensor
from . import conv_rows
from ._util import tsum, xp_of
from .gemm import matmul_into, matmul_tn
from .linalg import mm


def _pair(v, name: str) -> tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # what nn.Conv2d passes: no conversion
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _strided(a, shape, strides):
    """A read-only view of ``a`` with the given shape and strides (in bytes, from ``a``'s first element). For
    a C-contiguous NumPy array the ndarray constructor on its buffer: NumPy's as_strided goes through an
    __array_interface__ object, 5 us a call, a tenth of a small convolution's forward."""
    if type(a) is np.ndarray and a.flags.c_contiguous:
        view = np.ndarray(shape, a.dtype, buffer=a, strides=strides)
        view.flags.writeable = False
        return view
    return xp_of(a).lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def _windows(x, k, s, d, out):
    """Strided view (N, C, OH, OW, KH, KW) of a padded NCHW array (no copy)."""
    n, c = x.shape[:2]
    st = x.strides
    shape = (n, c, out[0], out[1], k[0], k[1])
    strides = (st[0], st[1], st[2] * s[0], st[3] * s[1], st[2] * d[0], st[3] * d[1])
    return _strided(x, shape, strides)


def _pad2d(x, p, value=0.0):
    """The NCHW array ``x`` padded with ``value``: ``x`` itself when there is no padding, else one array filled
    with ``value`` and the interior copied in (faster than ``pad``)."""
    if p == (0, 0):
        return x
    n, c, h, w = x.shape
    out = xp_of(x).full((n, c, h + 2 * p[0], w + 2 * p[1]), value, dtype=x.dtype)
    out[:, :, p[0]:p[0] + h, p[1]:p[1] + w] = x
    return out


def _window_offsets(k, s, d, out):
    """(i, j, rows, cols) for every kernel offset: the slices of the padded input it reads, one per output."""
    for i in range(k[0]):
        for j in range(k[1]):
            yield (i, j, slice(i * d[0], i * d[0] + s[0] * (out[0] - 1) + 1, s[0]),
                   slice(j * d[1], j * d[1] + s[1] * (out[1] - 1) + 1, s[1]))


def _col2im(cols_at, padded_shape, dtype, xp, k, s, d, out):
    """Sum window contributions back into a padded input: cols_at(i, j) -> (N, C, OH, OW)."""
    gx = xp.zeros(padded_shape, dtype=dtype)
    for i, j, rows, cols in _window_offsets(k, s, d, out):
        gx[:, :, rows, cols] += cols_at(i, j)
    return gx


def _unpad(gx, p, shape):
    return gx[:, :, p[0] : p[0] + shape[2], p[1] : p[1] + shape[3]]


# -- channels-last (NHWC) inside the convolution ---------------------------------------------------------
# With the columns ordered (kh, kw, c), im2col copies runs of C contiguous values per kernel offset (not runs
# of KW values, as from NCHW), and col2im adds (N, OH, OW, C) blocks whose C axis is contiguous on both sides.
# Measured on the digits ResNet (1 thread): im2col 3x and col2im 2.5x faster. Groups > 1 keep the NCHW order,
# where each group's columns are one contiguous block.


def _nhwc_padded(x, p):
    """The NCHW array ``x`` as a zero-padded NHWC array: a view when there is no padding (im2col copies only
    the pixels its windows read), else one copy (zeros, then the interior: faster than ``pad``)."""
    xp = xp_of(x)
    xh = x.transpose(0, 2, 3, 1)
    if p == (0, 0):
        return xh
    n, h, w, c = xh.shape
    out = xp.zeros((n, h + 2 * p[0], w + 2 * p[1], c), dtype=x.dtype)
    out[:, p[0]:p[0] + h, p[1]:p[1] + w, :] = xh
    return out


def _windows_nhwc(xh, k, s, d, out):
    """Strided view (N, OH, OW, KH, KW, C) of a padded NHWC array (no copy)."""
    st = xh.strides
    shape = (xh.shape[0], out[0], out[1], k[0], k[1], xh.shape[3])
    strides = (st[0], st[1] * s[0], st[2] * s[1], st[1] * d[0], st[2] * d[1], st[3])
    return _strided(xh, shape, strides)


def _col2im_nhwc(gc, padded_nhwc, k, s, d, out):
    """Sum the (N, OH, OW, KH, KW, C) column gradients back into a zero padded NHWC array."""
    xp = xp_of(gc)
    gx = xp.zeros(padded_nhwc, dtype=gc.dtype)
    for i, j, rows, cols in _window_offsets(k, s, d, out):
        gx[:, rows, cols, :] += gc[:, :, :, i, j, :]
    return gx


# -- few channels: columns by kernel offset ----------------------------------------------------------------
# With C * itemsize under SHORT_RUN_BYTES (the stem of an image model: 1 or 3 channels), channels-last columns
# are copied in runs of C values, a few bytes each (the digits stem: 106 us for a 4096 x 9 matrix). The column
# matrix transposed, (KH*KW*C, N*OH*OW) with the same column order, reads each kernel offset's rows of OW
# values from the NCHW input instead; the GEMM takes it transposed, at no cost. Only for a stride-1 width
# (contiguous runs) and a matrix small enough to build whole (KEEP_COLS_BYTES).

SHORT_RUN_BYTES = 16


def _conv_offset_major(xpad, wmat_t, k, d, out, stride_h: int):
    """(N, OH, OW, O) and the (N*OH*OW, KH*KW*C) column matrix (a transposed view of an offset-major copy) of
    a width-stride-1 convolution of the padded NCHW ``xpad``."""
    xp = xp_of(xpad)
    n, c = xpad.shape[:2]
    st = xpad.strides
    win = _strided(xpad, (k[0], k[1], c, n, out[0], out[1]),
                   (st[2] * d[0], st[3] * d[1], st[1], st[0], st[2] * stride_h, st[3]))
    cols_t = xp.empty(win.shape, dtype=xpad.dtype)
    xp.copyto(cols_t, win)
    cols = cols_t.reshape(k[0] * k[1] * c, n * out[0] * out[1]).T
    y = xp.empty((n, out[0], out[1], wmat_t.shape[1]), dtype=xpad.dtype)
    _product_into(y.reshape(cols.shape[0], wmat_t.shape[1]), cols, wmat_t)
    return y, cols


# -- blocked im2col + GEMM ---------------------------------------------------------------------------------
# The column matrix of a whole batch is 9x the input (2.4 MB for 64 digits at 16 channels): built at once, it
# has left the cache by the time the GEMM reads it, which then runs at half speed. Built and multiplied in
# blocks of about BLOCK_BYTES, each block is still in cache, and only the padded input is kept for backward
# (the weight gradient rebuilds the columns block by block): 2x faster on the digits ResNet's convolutions and
# 9x less memory held between forward and backward. On a GPU the whole batch is one block.

BLOCK_BYTES = 512 << 10
# ... except that a column matrix this small is kept whole from forward (built block by block into it, each
# block still multiplied in cache) for the weight gradient, which then is one GEMM instead of a second
# im2col: 25% off the weight gradient of the digits ResNet's convolutions, for at most this much memory
# per convolution between forward and backward (it stays in the L3 cache).
KEEP_COLS_BYTES = 4 << 20


def _blocks(n: int, oh: int, row_bytes: int, whole: bool):
    """(n0, n1, h0, h1): the whole batch (``whole``, or no image), else blocks of BLOCK_BYTES of columns
    (``conv_rows.image_blocks``)."""
    if whole or n == 0:
        return [(0, n, 0, oh)]
    return conv_rows.image_blocks(n, oh, row_bytes, BLOCK_BYTES)


def _gemm_blocks(win, each, keep: bool = False):
    """Call ``each(n0, n1, h0, h1, cols)`` with the (rows, KH*KW*C) column matrix of every block of the
    window view ``win`` (N, OH, OW, KH, KW, C), copied into one reused buffer; or, with ``keep``, into
    consecutive rows of the whole column matrix, which is returned (blocks are consecutive rows)."""
    xp = xp_of(win)
    n, oh, ow = win.shape[:3]
    k = win.shape[3] * win.shape[4] * win.shape[5]
    blocks = list(_blocks(n, oh, ow * k * win.itemsize, xp is not np))
    rows = n * oh * ow if keep else max(((n1 - n0) * (h1 - h0) * ow for n0, n1, h0, h1 in blocks), default=0)
    buf = xp.empty((rows, k), dtype=win.dtype)
    start = 0
    for n0, n1, h0, h1 in blocks:
        part = win[n0:n1, h0:h1]
        size = part.shape[0] * part.shape[1] * ow
        cols = buf[start:start + size]
        xp.copyto(cols.reshape(part.shape), part)
        each(n0, n1, h0, h1, cols)
        if keep:
            start += size
    return buf if keep else None


def _product_into(out, a, b):
    """out[...] = a @ b, without a temporary where the dtype allows (half products go through mm); in row blocks
    that OpenBLAS's small-matrix kernels take where they apply (gemm.py)."""
    if out.dtype.itemsize >= 4 and a.dtype == b.dtype == out.dtype:
        matmul_into(out, a, b)
    else:
        out[...] = mm(a, b)


def _conv_nhwc(win, wmat_t, keep: bool = False):
    """(N, OH, OW, O) = the windows (N, OH, OW, KH, KW, C) times the (KH*KW*C, O) weight matrix, blocked;
    with ``keep``, also the whole column matrix (else None)."""
    xp = xp_of(win)
    n, oh, ow = win.shape[:3]
    y = xp.empty((n, oh, ow, wmat_t.shape[1]), dtype=win.dtype)

    def each(n0, n1, h0, h1, cols):
        _product_into(y[n0:n1, h0:h1].reshape(cols.shape[0], y.shape[3]), cols, wmat_t)
    cols = _gemm_blocks(win, each, keep)
    return y, cols


def _sum_of_products(gy, cols):
    """gy.T @ cols: in row blocks for OpenBLAS's small kernels where they apply (gemm.py); half types via mm."""
    if gy.dtype == cols.dtype and gy.dtype.itemsize >= 4:
        return matmul_tn(gy, cols)
    return mm(gy.T, cols)


def _weight_grad_nhwc(win, gyh, cols=None):
    """(O, KH*KW*C) = gy.T @ columns: the forward's whole column matrix when it was kept, else summed over
    blocks whose columns are rebuilt from the saved input."""
    xp = xp_of(win)
    acc = xp.result_type(gyh.dtype, np.float32) if gyh.dtype.itemsize < 4 else gyh.dtype
    if cols is not None:
        return _sum_of_products(gyh.reshape(cols.shape[0], gyh.shape[3]), cols).astype(acc, copy=False)
    gw = xp.zeros((gyh.shape[3], win.shape[3] * win.shape[4] * win.shape[5]), dtype=acc)

    def each(n0, n1, h0, h1, cols):
        gw[...] += _sum_of_products(gyh[n0:n1, h0:h1].reshape(cols.shape[0], gyh.shape[3]), cols)
    _gemm_blocks(win, each)
    return gw


def _input_grad_by_correlation(gyh, w, x_hw, p, d):
    """The input gradient of a stride-1 convolution as a convolution itself: the NHWC output gradient, zero
    padded by (k - 1) * d - p on each side, correlated with the kernel flipped and transposed (O <-> C). Blocked
    im2col copies and GEMMs whose rows are the input's pixels, instead of KH*KW scattered additions (col2im),
    whose contiguous runs are only C values long. Returns (N, C, H, W) with channels-last memory."""
    xp = xp_of(gyh)
    n, oh, ow, o = gyh.shape
    kh, kw = w.shape[2:]
    ext = ((kh - 1) * d[0], (kw - 1) * d[1])
    buf = xp.zeros((n, x_hw[0] + ext[0], x_hw[1] + ext[1], o), dtype=gyh.dtype)
    # output row u lands on buffer row u + ext - p; rows outside the buffer only reached the padding
    (r0, r1), (c0, c1) = ((max(ext[a] - p[a], 0), min(ext[a] - p[a] + (oh, ow)[a], buf.shape[1 + a])) for a in (0, 1))
    buf[:, r0:r1, c0:c1, :] = gyh[:, r0 - ext[0] + p[0]:r1 - ext[0] + p[0], c0 - ext[1] + p[1]:c1 - ext[1] + p[1], :]
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # the kernel of the correlation: (C, O, KH, KW)
    if conv_rows.applies(buf, flipped, (1, 1), x_hw[0]):
        gx, _ = conv_rows.rows_conv(buf, conv_rows.weight_rows(flipped), d, x_hw, 0)
    else:
        wflip = flipped.transpose(0, 2, 3, 1).reshape(w.shape[1], kh * kw * o).T
        gx, _ = _conv_nhwc(_windows_nhwc(buf, (kh, kw), (1, 1), d, x_hw), xp.ascontiguousarray(wflip))
    return gx.transpose(0, 3, 1, 2)


def _input_grad_by_phases(gyh, w, x_hw, p, s, d):
    """The input gradient of a strided convolution. One batched GEMM gives every kernel offset's contribution
    as a contiguous (N, OH, OW, C) block. Offset (i, j) of output (u, v) lands on padded input row s*u + d*i,
    which is row u + (d*i) // s of the row phase (d*i) % s: the blocks are summed into an (SH, SW, N, QH, QW,
    C) array of phases, where each addition runs over contiguous rows of QW*C values (col2im's additions into
    every s-th pixel run over C values at a time: 1.5x slower on the digits ResNet's stride-2 convolution),
    and each phase is then copied to its pixels of the NHWC gradient. Returns (N, C, H, W), channels-last."""
    xp = xp_of(gyh)
    n, oh, ow, o = gyh.shape
    c, kh, kw = w.shape[1:]
    taps = xp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, o, c)
    blocks = mm(gyh.reshape(1, n * oh * ow, o), taps).reshape(kh, kw, n, oh, ow, c)
    (hp, wp), (h, wd) = (x_hw[0] + 2 * p[0], x_hw[1] + 2 * p[1]), x_hw
    phases = xp.zeros((s[0], s[1], n, -(-hp // s[0]), -(-wp // s[1]), c), dtype=blocks.dtype)
    for i in range(kh):
        e, a = divmod(d[0] * i, s[0])
        for j in range(kw):
            f, b = divmod(d[1] * j, s[1])
            phases[a, b, :, e:e + oh, f:f + ow, :] += blocks[i, j]
    gx = xp.empty((n, h, wd, c), dtype=blocks.dtype)
    for a in range(s[0]):
        h0 = (a - p[0]) % s[0]  # the first input row in this phase: (h0 + p) % s == a
        for b in range(s[1]):
            w0 = (b - p[1]) % s[1]
            if h0 < h and w0 < wd:
                q, r = (h0 + p[0]) // s[0], (w0 + p[1]) // s[1]
                gx[:, h0::s[0], w0::s[1], :] = phases[a, b, :, q:q + len(range(h0, h, s[0])),
                                                      r:r + len(range(w0, wd, s[1])), :]
    return gx.transpose(0, 3, 1, 2)


class FusedConv2d(FusedFunction):
    composition = "pad, strided getitem per kernel offset, stack, reshape, matmul with the weight (per group), + b"
    capturable = True  # conv2d()'s frontend checks shapes and normalises fixed arguments only

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        self.cfg = (stride, padding, dilation, groups)
        self.x_shape = x.shape
        kh, kw = w.shape[2:]
        self.out_hw = tuple(_out_size(x.shape[2 + a], (kh, kw)[a], stride[a], padding[a], dilation[a]) for a in (0, 1))
        if groups == 1:  # channels-last, blocked; the padded input is kept, and small column matrices
            cols_bytes = x.shape[0] * self.out_hw[0] * self.out_hw[1] * kh * kw * x.shape[1] * x.itemsize
            keep = is_grad_enabled() and cols_bytes <= KEEP_COLS_BYTES
            self.panels, self.rows = None, False
            if x.shape[1] * x.itemsize < SHORT_RUN_BYTES and stride[1] == 1 and cols_bytes <= KEEP_COLS_BYTES:
                xpad = _pad2d(x, padding)
                wmat_t = xp_of(w).ascontiguousarray(self._wmat_nhwc(w).T)
                y, cols = _conv_offset_major(xpad, wmat_t, (kh, kw), dilation, self.out_hw, stride[0])
                xpad = xpad.transpose(0, 2, 3, 1)  # an NHWC view: what backward's and jvp's windows read
            elif conv_rows.applies(x, w, stride, self.out_hw[0]):  # one GEMM per kernel row (conv_rows.py)
                xpad = _nhwc_padded(x, padding)
                y, self.panels = conv_rows.rows_conv(xpad, conv_rows.weight_rows(w), dilation, self.out_hw,
                                                     KEEP_COLS_BYTES if is_grad_enabled() else 0, b)
                cols, keep, self.rows, b = None, False, True, None  # (the bias is added in the final copy)
            else:
                xpad = _nhwc_padded(x, padding)
                wmat_t = xp_of(w).ascontiguousarray(self._wmat_nhwc(w).T)
                y, cols = _conv_nhwc(self._win(xpad, (kh, kw)), wmat_t, keep)
            self.cols = cols if keep else None
            self.saved = (xpad, w)
            if b is not None:
                y += b
            return y.transpose(0, 3, 1, 2)  # channels-last memory under the NCHW shape
        cols = self._im2col(x, (kh, kw))
        self.saved = (cols, w)
        return self._gemm(cols, w, b)

    def _win(self, xpad, k):
        stride, _, dilation, _ = self.cfg
        return _windows_nhwc(xpad, k, stride, dilation, self.out_hw)

    def _im2col(self, x, k):
        """(N*OH*OW, C*KH*KW) matrix of all windows in NCHW order (groups > 1), so that each group's columns
        are one block. One copy of a strided view."""
        stride, padding, dilation, _ = self.cfg
        m = x.shape[0] * self.out_hw[0] * self.out_hw[1]
        win = _windows(_pad2d(x, padding), k, stride, dilation, self.out_hw)
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(m, x.shape[1] * k[0] * k[1])  # explicit sizes: N may be 0

    @staticmethod
    def _wmat_nhwc(w):
        """The weight (O, C, KH, KW) as the (O, KH*KW*C) matrix the channels-last columns multiply."""
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)

    def _gemm(self, cols, w, b):
        """Grouped convolution: one GEMM per group over the NCHW-ordered columns."""
        groups = self.cfg[3]
        n, (oh, ow), o = self.x_shape[0], self.out_hw, w.shape[0]
        m = cols.shape[0]
        cg_cols = cols.reshape(m, groups, cols.shape[1] // groups).transpose(1, 0, 2)
        y = mm(cg_cols, w.reshape(groups, o // groups, -1).transpose(0, 2, 1)).transpose(1, 0, 2).reshape(m, o)
        if y.dtype != cols.dtype:  # bfloat16 products come back as float32
            y = y.astype(cols.dtype)
        if b is not None:
            y += b
        return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)

    def backward(self, g):
        saved, w = self.saved
        stride, padding, dilation, groups = self.cfg
        nx, nw = self.needs_grad[:2]
        has_b = len(self.needs_grad) > 2
        xp = xp_of(g)
        n, c, h, wd = self.x_shape
        o, _, kh, kw = w.shape
        oh, ow = self.out_hw
        gyh = xp.ascontiguousarray(g.transpose(0, 2, 3, 1))  # free when g is channels-last
        gw = gx = gb = None
        if groups == 1:
            if nw:
                gwm = (conv_rows.rows_weight_grad(saved, gyh, (kh, kw), dilation, self.out_hw, self.panels) if self.rows
                       else _weight_grad_nhwc(self._win(saved, (kh, kw)), gyh, self.cols))
                gw = xp.ascontiguousarray(gwm.reshape(o, kh, kw, c).transpose(0, 3, 1, 2)).astype(w.dtype, copy=False)
            if nx and stride == (1, 1):
                gx = _input_grad_by_correlation(gyh, w, (h, wd), padding, dilation)
            elif nx and kh * kw > 1:
                gx = _input_grad_by_phases(gyh, w, (h, wd), padding, stride, dilation)
            elif nx:  # one kernel offset: one phase, no sums
                gc = mm(gyh.reshape(-1, o), self._wmat_nhwc(w)).reshape(n, oh, ow, kh, kw, c)
                padded = (n, h + 2 * padding[0], wd + 2 * padding[1], c)
                gxp = _col2im_nhwc(gc, padded, (kh, kw), stride, dilation, self.out_hw)
                gx = gxp[:, padding[0]:padding[0] + h, padding[1]:padding[1] + wd, :].transpose(0, 3, 1, 2)
        else:
            m = n * oh * ow
            gyg = gyh.reshape(m, groups, o // groups).transpose(1, 0, 2)
            if nw:
                colsg = saved.reshape(m, groups, saved.shape[1] // groups).transpose(1, 0, 2)
                gw = mm(gyg.transpose(0, 2, 1), colsg).reshape(w.shape)
            if nx:
                gcols = mm(gyg, w.reshape(groups, o // groups, -1)).transpose(1, 0, 2).reshape(m, saved.shape[1])
                gc = gcols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 1, 2, 4, 5)
                padded = (n, c, h + 2 * padding[0], wd + 2 * padding[1])
                gxp = _col2im(lambda i, j: gc[..., i, j], padded, g.dtype, xp, (kh, kw), stride, dilation,
                              self.out_hw)
                gx = _unpad(gxp, padding, self.x_shape)
        if has_b and self.needs_grad[2]:
            gy2d = gyh.reshape(-1, o)  # per-channel sums as a matrix-vector product: 20x faster than sum(axis=0)
            gb = mm(xp.ones(gy2d.shape[0], dtype=gy2d.dtype), gy2d)
        return (gx, gw, gb) if has_b else (gx, gw)

    def _linear_part(self, t, w):
        """conv(t, w) without bias: of a new input with the saved weight's configuration."""
        if self.cfg[3] == 1:
            win = self._win(_nhwc_padded(t, self.cfg[1]), w.shape[2:])
            return _conv_nhwc(win, xp_of(w).ascontiguousarray(self._wmat_nhwc(w).T))[0].transpose(0, 3, 1, 2)
        return self._gemm(self._im2col(t, w.shape[2:]), w, None)

    def jvp(self, tx, tw, tb=None):
        # d conv(x, w, b) = conv(tx, w) + conv(x, tw) + tb: all linear in each argument
        saved, w = self.saved
        if tw is None:
            on_x = None
        elif self.cfg[3] == 1:
            on_x = _conv_nhwc(self._win(saved, w.shape[2:]),
                              xp_of(w).ascontiguousarray(self._wmat_nhwc(tw).T))[0].transpose(0, 3, 1, 2)
        else:
            on_x = self._gemm(saved, tw, None)
        return tsum(
            None if tx is None else self._linear_part(tx, w),
            on_x,
            None if tb is None else tb.reshape(1, -1, 1, 1),
        )


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D cross-correlation, torch's F.conv2d: x (N, C, H, W), weight (O, C/groups, KH, KW)."""
    x, weight, bias = cast_inputs(x, weight, bias)
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if x.ndim != 4:
        raise ValueError(f"conv2d: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (out, in/groups, kh, kw), got shape {weight.shape}")
    if groups < 1 or x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"conv2d: groups={groups} must divide in_channels {x.shape[1]} and out_channels "
                         f"{weight.shape[0]}")
    if x.shape[1] // groups != weight.shape[1]:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, weight expects {weight.shape[1] * groups} "
                         f"(weight shape {weight.shape}, groups={groups})")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: stride {stride} and dilation {dilation} must be >= 1, padding {padding} >= 0")
    for axis, (n, k) in enumerate(zip(x.shape[2:], weight.shape[2:])):
        if _out_size(n, k, stride[axis], padding[axis], dilation[axis]) < 1:
            raise ValueError(f"conv2d: input size {x.shape[2:]} (padded by {padding}) is smaller than the "
                             f"dilated kernel {weight.shape[2:]} (dilation {dilation})")
    args = (x, weight) if bias is None else (x, weight, bias)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"conv2d: bias shape {bias.shape} != ({weight.shape[0]},)")
    return FusedConv2d.apply(*args, stride=stride, padding=padding, dilation=dilation, groups=groups)
