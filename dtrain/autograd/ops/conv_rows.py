"""Stride-1 convolution on the CPU as one GEMM per kernel row, over row panels instead of im2col columns.

im2col copies every input pixel KH*KW times (in runs of KW*C values: the (KW, C) part of a window is
contiguous in an NHWC array). A *row panel* copies it KW times only: panel[r, n, v, :] holds the KW*C values
that one kernel row reads from padded input row r of image n at output column v. With the panels laid out
rows first, (RP, N, OW, KW*C), the panel rows a kernel row i reads for all outputs, r = u + d*i over output
rows u, are one contiguous (OH*N*OW, KW*C) matrix, so the convolution is KH GEMMs with K = KW*C whose
products are summed, then one copy of the (OH, N, OW, O) result into the (N, OH, OW, O) output (with the
bias added in that copy). Against blocked im2col (conv.py), measured in the op on one thread (float32, 3x3,
padding 1, the digits ResNet's convolutions):

    (64, 16, 8, 8) -> 16 channels   forward 341-352 -> 292-294 us   input gradient 338-346 -> 294-295 us
                                    weight gradient 198 -> 223-226 us
    (64, 32, 4, 4) -> 32 channels   forward 262 -> 254 us   input gradient 263-266 -> 255 us
                                    weight gradient 207 -> 221 us

The im2col copy those save is the larger part (45 us for the 16-channel panels against about 120 us of
columns); the three K = 48 GEMMs cost about what one K = 144 GEMM does, plus two additions of the products,
and the weight gradient pays for copying the output gradient into the panels' row order. The stride-1 input
gradient is a convolution itself and takes the same path. The products are summed in a different order than
im2col's single GEMM, so results differ from it in the last bits (not from torch beyond float rounding).
Blocks of whole images (or of rows of one image) keep each panel block and its products in cache, as conv.py's
blocks do; small panels are kept from forward for the weight gradient. Used for NumPy float32/float64 with a
stride of 1 and a kernel of more than one row (``applies``); CuPy and half types keep im2col.
"""

from __future__ import annotations

import numpy as np

from .gemm import matmul_into, matmul_tn

__all__ = ["applies", "image_blocks", "rows_conv", "rows_weight_grad", "weight_rows"]

# Panel bytes per block. The panels of the digits ResNet's 16-channel convolutions (64 images: 0.94 MiB) are
# one block at this size; in two blocks of 512 KiB (conv.py's im2col blocks) the forward is 10 % slower. A
# block, its products and its share of the output stay within the 2 MiB L2 cache of the machine measured.
BLOCK_BYTES = 1 << 20


# Output rows at least. With fewer, the panels' extra rows ((KH - 1) * dilation more than the output reads per
# kernel row) and the KH smaller GEMMs cost what the columns save: the digits CNN's 16 -> 32 channel 3x3
# convolution on 4x4 images took forward 152 -> 161 us, weight gradient 109 -> 121 us, input gradient 166 -> 157
# us; the ResNet's 32 -> 32 on 4x4 about broke even.
MIN_OUT_ROWS = 8


def applies(x, w, stride, out_rows: int) -> bool:
    """Whether ``rows_conv`` computes this convolution (groups == 1 is the caller's condition)."""
    return (type(x) is np.ndarray and stride == (1, 1) and w.shape[2] > 1 and out_rows >= MIN_OUT_ROWS
            and x.dtype in (np.float32, np.float64) and w.dtype == x.dtype)


def weight_rows(w):
    """The (O, C, KH, KW) weight as (KH, KW*C, O): kernel row i's matrix, columns ordered as a panel's values."""
    o, c, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh, kw * c, o)


def image_blocks(n: int, oh: int, row_bytes: int, budget: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, h0, h1): whole images per block while their ``oh`` rows of ``row_bytes`` fit ``budget``, else rows
    of one image (none for no image). Each block's output rows are contiguous in an (N, OH, OW, O) array. Also
    conv.py's im2col blocks."""
    per_image = max(oh * row_bytes, 1)
    if per_image <= budget:
        step = max(budget // per_image, 1)
        return [(n0, min(n, n0 + step), 0, oh) for n0 in range(0, n, step)]
    step = max(budget // max(row_bytes, 1), 1)
    return [(i, i + 1, h0, min(oh, h0 + step)) for i in range(n) for h0 in range(0, oh, step)]


def _panels(xh, block, kw: int, dh: int, dw: int, ext: int, ow: int, out=None):
    """The row panels (rows, images, OW, KW*C) of block (n0, n1, h0, h1) of the padded NHWC input ``xh``."""
    n0, n1, h0, h1 = block
    c = xh.shape[3]
    st = xh.strides
    src = np.lib.stride_tricks.as_strided(xh[n0:n1, h0:h1 + ext], shape=(h1 + ext - h0, n1 - n0, ow, kw, c),
                                          strides=(st[1], st[0], st[2], st[2] * dw, st[3]), writeable=False)
    size = src.size
    out = np.empty(size, dtype=xh.dtype) if out is None else out[:size]
    np.copyto(out.reshape(src.shape), src)
    return out.reshape(-1, kw * c)


def rows_conv(xh, wrows, dilation, out_hw, keep: int, bias=None, budget: int | None = None):
    """(N, OH, OW, O) = the stride-1 convolution of the padded NHWC ``xh`` with ``wrows`` (``weight_rows``), plus
    ``bias`` (O,) if given, and, when all panels take at most ``keep`` bytes, the list of (block, panels) for
    ``rows_weight_grad`` (else None). ``budget``: panel bytes per block (default BLOCK_BYTES)."""
    n, _, _, c = xh.shape
    kh, kwc, o = wrows.shape
    kw = kwc // c
    oh, ow = out_hw
    ext = (kh - 1) * dilation[0]
    item = xh.itemsize
    blocks = image_blocks(n, oh, ow * kwc * item, BLOCK_BYTES if budget is None else budget)
    kept = [] if n * (oh + ext) * ow * kwc * item <= keep else None
    y = np.empty((n, oh, ow, o), dtype=xh.dtype)
    rows = max(((b[1] - b[0]) * (b[3] - b[2]) * ow for b in blocks), default=0)
    prod, part = np.empty((rows, o), dtype=xh.dtype), np.empty((rows, o), dtype=xh.dtype)
    buf = None if kept is not None else np.empty(max(((b[1] - b[0]) * (b[3] - b[2] + ext) * ow * kwc
                                                     for b in blocks), default=0), dtype=xh.dtype)
    for block in blocks:
        n0, n1, h0, h1 = block
        panels = _panels(xh, block, kw, dilation[0], dilation[1], ext, ow, None if buf is None else buf)
        m = (h1 - h0) * (n1 - n0) * ow
        step = (n1 - n0) * ow  # panel rows per image row
        acc, tmp = prod[:m], part[:m]
        for i in range(kh):
            r = i * dilation[0] * step
            matmul_into(acc if i == 0 else tmp, panels[r:r + m], wrows[i])
            if i:
                acc += tmp
        result = acc.reshape(h1 - h0, n1 - n0, ow, o).transpose(1, 0, 2, 3)
        if bias is None:
            np.copyto(y[n0:n1, h0:h1], result)
        else:
            np.add(result, bias, out=y[n0:n1, h0:h1])
        if kept is not None:
            kept.append((block, panels))
    return y, kept


def rows_weight_grad(xh, gyh, kernel, dilation, out_hw, kept=None, budget: int | None = None):
    """The weight gradient as the (O, KH*KW*C) matrix (columns ordered kh, kw, c) of the convolution
    ``rows_conv`` computed: per block and kernel row, the output gradient's rows times that row's panels
    (the kept ones, or rebuilt from ``xh``)."""
    n, _, _, c = xh.shape
    kh, kw = kernel
    o = gyh.shape[3]
    oh, ow = out_hw
    ext = (kh - 1) * dilation[0]
    if kept is None:
        budget = BLOCK_BYTES if budget is None else budget
        kept = ((b, None) for b in image_blocks(n, oh, ow * kw * c * xh.itemsize, budget))
    gw = np.zeros((kh, o, kw * c), dtype=xh.dtype)
    for block, panels in kept:
        n0, n1, h0, h1 = block
        if panels is None:
            panels = _panels(xh, block, kw, dilation[0], dilation[1], ext, ow)
        m = (h1 - h0) * (n1 - n0) * ow
        step = (n1 - n0) * ow
        g = np.ascontiguousarray(gyh[n0:n1, h0:h1].transpose(1, 0, 2, 3)).reshape(m, o)
        for i in range(kh):
            r = i * dilation[0] * step
            gw[i] += matmul_tn(g, panels[r:r + m])
    return gw.transpose(1, 0, 2).reshape(o, kh * kw * c)
