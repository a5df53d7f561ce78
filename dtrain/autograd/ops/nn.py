"""Neural-network primitives: dropout, embedding and attention (the losses are in loss.py)."""

from __future__ import annotations

import math

import numpy as np

from ... import backend
from ..capture_hooks import note_constant
from ..function import FusedFunction
from ..tensor import Tensor
from ._util import as_tensor, scatter_add, xp_of
from .elementwise import mul, where
from .linalg import matmul
from .reduce import softmax
from .shape import permute

# ---------------------------------------------------------------------------------------------
# Dropout and embedding
# ---------------------------------------------------------------------------------------------


class FusedDropout(FusedFunction):
    composition = "x * mask (mask: 0 or 1/(1-p), a constant); fused so that only the mask is saved, not x"
    # dropout()'s frontend decides from p and the training flag (a module's is guarded); the mask is drawn
    # in forward from the generator object, so a replay draws the same sequence of masks as eager steps
    capturable = True

    def forward(self, x, p=0.5, generator=None):
        keep = generator.uniform(x.shape, x.dtype, backend.device_of(x)) >= p
        scale = xp_of(x).asarray(1.0 / (1.0 - p), dtype=x.dtype)
        mask = keep * scale  # 0 or 1/(1-p), in x's dtype
        self.saved = (mask,)
        return x * mask

    def backward(self, g):
        return g * self.saved[0]

    jvp = backward


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (identity in eval).

    ``generator`` (a ``dtrain.backend.Generator``) makes masks reproducible; the default is the one
    seeded by ``dtrain.manual_seed``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return FusedDropout.apply(x, p=p, generator=generator or backend.default_generator)


class FusedEmbedding(FusedFunction):
    composition = "weight[indices] (getitem), with no gradient into the padding_idx row"
    capturable = True

    @staticmethod
    def capture_check(arrays, params):
        """A captured step's replay re-runs the frontend's index check on this call's indices (NumPy would wrap a
        negative index silently): the same IndexError as eagerly."""
        _check_embedding_range(params["indices"], arrays[0].shape[0])
        return params

    def forward(self, w, indices=None, padding_idx=None):
        self.w_shape, self.indices, self.padding_idx = w.shape, indices, padding_idx
        return w[indices]

    def backward(self, g):
        xp = xp_of(g)
        gw = xp.zeros(self.w_shape, dtype=g.dtype)
        idx = self.indices.reshape(-1)
        scatter_add(gw, idx, g.reshape(idx.shape[0], -1))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return gw

    def jvp(self, tw):
        return tw[self.indices]


def _int_array(v, xp, name: str):
    a = v.data if isinstance(v, Tensor) else xp.asarray(v)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return a


def _check_embedding_range(idx, n: int) -> None:
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise IndexError(f"embedding index {bad} is out of range for {n} embeddings")


def embedding(indices, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``indices`` (any shape)."""
    idx = _int_array(indices, weight.xp, "embedding indices")
    n = weight.shape[0]
    _check_embedding_range(idx, n)
    if padding_idx is not None and padding_idx < 0:
        padding_idx += n
    return FusedEmbedding.apply(weight, indices=idx, padding_idx=padding_idx)


# ---------------------------------------------------------------------------------------------
# Attention (a composition: its pieces already have exact backward and jvp rules)
# ---------------------------------------------------------------------------------------------


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 generator=None) -> Tensor:
    """softmax(q kᵀ · scale + mask) v over the last two dims (torch's signature and mask rules).

    ``attn_mask`` may be boolean (True = attend) or additive floats; ``is_causal`` masks the future.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    perm = tuple(range(k.ndim - 2)) + (k.ndim - 1, k.ndim - 2)
    scores = mul(matmul(q, permute(k, perm)), scale)
    L, S = q.shape[-2], k.shape[-2]
    xp = q.xp
    if is_causal:
        causal = xp.tril(xp.ones((L, S), dtype=bool))
        note_constant(causal)  # a function of the shapes only: a captured step may reuse it
        scores = where(causal, scores, -np.inf)
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        scores = where(m, scores, -np.inf) if m.dtype == np.bool_ else scores + as_tensor(attn_mask, scores)
    attn = softmax(scores, axis=-1)
    if dropout_p > 0.0:
        attn = dropout(attn, dropout_p, True, generator)
    return matmul(attn, v)
