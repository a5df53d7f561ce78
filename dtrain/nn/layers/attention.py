"""MultiheadAttention, TransformerEncoderLayer and TransformerEncoder, with torch's names and shapes.

State dicts match torch's key for key (``in_proj_weight``, ``out_proj.weight``,
``layers.0.self_attn.in_proj_bias``, ``layers.1.norm2.weight`` ...), so weights move between the two.
Masks follow torch's MultiheadAttention conventions: a boolean mask marks positions that may NOT be
attended (True = masked out, the opposite of ``scaled_dot_product_attention``), a float mask is
added to the attention scores. Masks are constants (no gradient flows into them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ...autograd import ops
from ...autograd.capture_hooks import note_constant
from ...autograd.tensor import Tensor
from .. import init
from ..module import Module, ModuleList
from ._util import check_positive_int, new_parameter
from .activation import Dropout
from .linear import Linear
from .norm import LayerNorm

__all__ = ["MultiheadAttention", "TransformerEncoder", "TransformerEncoderLayer"]


def _mask_array(mask, name: str, xp, dtype):
    """A mask (bool: True = masked out; float: additive) as an additive float array in ``dtype``."""
    m = mask.data if isinstance(mask, Tensor) else xp.asarray(mask)
    if m.dtype == np.bool_:
        return xp.where(m, xp.asarray(-np.inf, dtype=dtype), xp.asarray(0.0, dtype=dtype))
    if m.dtype.kind != "f":
        raise TypeError(f"MultiheadAttention: {name} must be boolean (True = masked out) or floating point "
                        f"(added to the scores), got dtype {m.dtype}")
    return m.astype(dtype, copy=False)


class MultiheadAttention(Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017) with torch's parameters.

    Parameters: ``in_proj_weight`` (3·E, E) — the stacked query, key and value projections,
    xavier-uniform initialised; ``in_proj_bias`` (3·E,) zeros (absent with ``bias=False``);
    ``out_proj`` a Linear(E, E) whose bias starts at zero.

    Args:
        embed_dim: model width E; must be divisible by ``num_heads`` (each head gets E // num_heads).
        num_heads: number of parallel heads.
        dropout: dropout probability on the attention weights (training mode only).
        bias: add the input/output projection biases.
        add_bias_kv, add_zero_attn: torch options that are not supported (must be False).
        kdim, vdim: key/value feature sizes; only ``None`` or ``embed_dim`` is supported.
        batch_first: inputs and outputs are (N, L, E) instead of the default (L, N, E).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights)``: output shaped like
    ``query``; weights (N, L, S) averaged over heads, (N, num_heads, L, S) with
    ``average_attn_weights=False``, or None with ``need_weights=False`` (which uses the fused
    ``scaled_dot_product_attention`` path). Unbatched (L, E) inputs are accepted too.

    >>> mha = MultiheadAttention(16, 4, batch_first=True)
    >>> x = dt.randn(2, 5, 16)
    >>> out, w = mha(x, x, x)          # out (2, 5, 16), w (2, 5, 5)
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("MultiheadAttention", embed_dim=embed_dim, num_heads=num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads}); each head gets embed_dim // num_heads features")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1], got {dropout!r}")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        for name, v in (("kdim", kdim), ("vdim", vdim)):
            if v is not None and v != embed_dim:
                raise NotImplementedError(f"MultiheadAttention: {name}={v} differs from embed_dim={embed_dim}; "
                                          f"only key/value features of size embed_dim are supported")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = self.vdim = embed_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj_weight = new_parameter((3 * embed_dim, embed_dim), device, dtype)
        self.register_parameter("in_proj_bias", new_parameter((3 * embed_dim,), device, dtype) if bias else None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self, generator=None) -> None:
        """torch's init: xavier_uniform_ in_proj_weight, zero biases, out_proj.weight as a Linear."""
        init.xavier_uniform_(self.in_proj_weight, generator=generator)
        self.out_proj.reset_parameters(generator)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    # -- input checking --------------------------------------------------------------------------
    def _check_inputs(self, query, key, value) -> bool:
        """Validate shapes; returns whether the inputs are batched (3-D)."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"MultiheadAttention: {name} must be a Tensor, got {type(t).__name__}")
        layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError(f"MultiheadAttention expects query, key, value all 3-D {layout} (batch_first="
                             f"{self.batch_first}) or all 2-D (L, E) unbatched, got shapes {query.shape}, "
                             f"{key.shape}, {value.shape}")
        e = self.embed_dim
        if query.shape[-1] != e or key.shape[-1] != e or value.shape[-1] != e:
            raise ValueError(f"MultiheadAttention(embed_dim={e}): the last dimension of query, key and value must "
                             f"be {e}, got shapes {query.shape}, {key.shape}, {value.shape}")
        batched = query.ndim == 3
        seq_axis = 1 if batched and self.batch_first else 0
        if key.shape[seq_axis] != value.shape[seq_axis]:
            raise ValueError(f"MultiheadAttention: key and value must have the same sequence length, got shapes "
                             f"{key.shape} and {value.shape}")
        if batched:
            b_axis = 1 - seq_axis
            if not query.shape[b_axis] == key.shape[b_axis] == value.shape[b_axis]:
                raise ValueError(f"MultiheadAttention: query, key and value must have the same batch size "
                                 f"(dim {b_axis} for batch_first={self.batch_first}), got shapes {query.shape}, "
                                 f"{key.shape}, {value.shape}")
        return batched

    def _merged_mask(self, attn_mask, key_padding_mask, is_causal, n, length, s, batched, like: Tensor):
        """One additive float mask broadcastable to (N, H, L, S), or None when nothing is masked."""
        xp, dtype, h = like.xp, like.dtype, self.num_heads
        total = None
        if attn_mask is not None:
            m = _mask_array(attn_mask, "attn_mask", xp, dtype)
            if m.shape == (length, s):
                m = m.reshape(1, 1, length, s)
            elif m.shape == (n * h, length, s):
                m = m.reshape(n, h, length, s)
            else:
                lead = f"({n}*{h}, {length}, {s})" if batched else f"({h}, {length}, {s})"
                raise ValueError(f"MultiheadAttention: attn_mask must have shape ({length}, {s}) or {lead} "
                                 f"(target length L={length}, source length S={s}, num_heads={h}), got {m.shape}")
            total = m
        if key_padding_mask is not None:
            m = _mask_array(key_padding_mask, "key_padding_mask", xp, dtype)
            expect = (n, s) if batched else (s,)
            if m.shape != expect:
                raise ValueError(f"MultiheadAttention: key_padding_mask must have shape {expect} (batch, source "
                                 f"length), got {m.shape}")
            m = m.reshape(n, 1, 1, s)
            total = m if total is None else total + m
        if is_causal:
            # torch treats is_causal as a hint that attn_mask is the causal mask; here it also masks the
            # future on its own (a causal attn_mask combined with it is unchanged).
            future = xp.triu(xp.ones((length, s), dtype=bool), k=1)
            m = xp.where(future, xp.asarray(-np.inf, dtype=dtype), xp.asarray(0.0, dtype=dtype))
            if total is None:
                note_constant(m)  # the causal mask alone depends on the lengths only: a captured step reuses it
            total = m if total is None else total + m
        return total

    # -- forward ---------------------------------------------------------------------------------
    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if query is key and key is value:  # self-attention: one fused projection
            qkv = ops.linear(query, w, b)
            return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
        out = []
        for i, x in enumerate((query, key, value)):
            rows = slice(i * e, (i + 1) * e)
            out.append(ops.linear(x, w[rows], None if b is None else b[rows]))
        return tuple(out)

    def _split_heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = self._check_inputs(query, key, value)
        same_qkv = query is key and key is value
        # Work batch-first, (N, L, E), whatever the caller's layout.
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if same_qkv:
            key = value = query
        n, length, e = query.shape
        s = key.shape[1]
        with query.device.context():  # host masks go to the inputs' GPU, not the current one
            mask = self._merged_mask(attn_mask, key_padding_mask, is_causal, n, length, s, batched, query)
        q, k, v = (self._split_heads(t) for t in self._project(query, key, value))
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = ops.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + mask
            weights = ops.softmax(scores, -1)
            if dropout_p > 0.0:
                weights = ops.dropout(weights, dropout_p, True)
            heads = ops.matmul(weights, v)
        else:
            heads = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = self.out_proj(heads.permute(0, 2, 1, 3).reshape(n, length, e))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(axis=1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}")


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": ops.relu, "gelu": ops.gelu}


class TransformerEncoderLayer(Module):
    """Self-attention then a position-wise feed-forward block, each with a residual connection.

    Pre-norm by default (``norm_first=True``, as in most modern transformers; torch's default is
    post-norm): ``x = x + SA(norm1(x)); x = x + FF(norm2(x))``. With ``norm_first=False``:
    ``x = norm1(x + SA(x)); x = norm2(x + FF(x))``. FF(x) = linear2(dropout(activation(linear1(x)))).
    Submodules carry torch's names (self_attn, linear1, dropout, linear2, norm1, norm2, dropout1,
    dropout2), so state dicts are interchangeable with torch's for the same arguments.

    Args:
        d_model: model width; nhead: attention heads (d_model must be divisible by nhead).
        dim_feedforward: hidden width of the feed-forward block.
        dropout: dropout probability (attention weights, feed-forward hidden, both residual branches).
        activation: "relu", "gelu", or a callable / Module applied to the feed-forward hidden layer.
        layer_norm_eps: LayerNorm epsilon. batch_first: (N, L, E) instead of (L, N, E).
        norm_first: pre-norm (True, default) or post-norm (False). bias: biases in linears and norms.

    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``; masks follow
    MultiheadAttention's conventions.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = True, bias: bool = True, device=None, dtype=None):
        super().__init__()
        check_positive_int("TransformerEncoderLayer", d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward)
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation must be one of {sorted(_ACTIVATIONS)} or a "
                                 f"callable, got {activation!r}")
            act = _ACTIVATIONS[activation]
        elif callable(activation):
            act = activation
        else:
            raise TypeError(f"TransformerEncoderLayer: activation must be a string or a callable, "
                            f"got {type(activation).__name__}")
        # Remembered so TransformerEncoder can build fresh layers of the same configuration.
        self._init_kwargs = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                                 activation=activation, layer_norm_eps=layer_norm_eps, batch_first=batch_first,
                                 norm_first=norm_first, bias=bias, device=device, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            device=device, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, device=device, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = act  # a Module here is registered as a child, as in torch

    def _sa_block(self, x: Tensor, attn_mask, key_padding_mask, is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False,
                                attn_mask=attn_mask, is_causal=is_causal)
        return self.dropout1(out)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Tensor, src_mask=None, src_key_padding_mask=None, is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"


def _fresh_copy(layer: Module) -> Module:
    """A new layer of ``layer``'s class and configuration, on its device and dtype, freshly initialised."""
    kwargs = getattr(layer, "_init_kwargs", None)
    if kwargs is None:
        raise TypeError(f"TransformerEncoder cannot rebuild a {type(layer).__name__} (it does not record its "
                        f"constructor arguments); pass a factory instead, e.g. "
                        f"TransformerEncoder(lambda: {type(layer).__name__}(...), num_layers)")
    p = next(layer.parameters(), None)
    if p is not None:  # follow the template if it was moved or cast after construction
        kwargs = {**kwargs, "device": p.device, "dtype": p.dtype}
    new = type(layer)(**kwargs)
    return new.train(layer.training)


class TransformerEncoder(Module):
    """A stack of ``num_layers`` encoder layers (children ``layers.0`` ... as in torch), then ``norm``.

    Args:
        encoder_layer: a zero-argument factory returning a new layer (called ``num_layers`` times), or
            a TransformerEncoderLayer used as a template: ``num_layers`` new layers of the same
            configuration are constructed. Every layer owns its own, independently initialised
            parameters (torch instead deep-copies the template, so its layers start out identical;
            the state-dict layout is the same). The template itself is not part of the encoder.
        num_layers: how many layers.
        norm: optional final Module (e.g. a LayerNorm, usual with pre-norm layers), key ``norm.*``.
        enable_nested_tensor, mask_check: accepted for torch compatibility; they only steer torch's
            fast paths and have no effect here.

    ``forward(src, mask=None, src_key_padding_mask=None, is_causal=False)`` passes the masks to every
    layer.

    >>> enc = TransformerEncoder(lambda: TransformerEncoderLayer(32, 4, 64), 3, norm=LayerNorm(32))
    """

    def __init__(self, encoder_layer: Module | Callable[[], Module], num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True):
        super().__init__()  # enable_nested_tensor, mask_check: torch fast-path switches, accepted and unused
        check_positive_int("TransformerEncoder", num_layers=num_layers)
        if isinstance(encoder_layer, Module):
            layers = [_fresh_copy(encoder_layer) for _ in range(num_layers)]
        elif callable(encoder_layer):
            layers = []
            for i in range(num_layers):
                layer = encoder_layer()
                if not isinstance(layer, Module):
                    raise TypeError(f"TransformerEncoder: the layer factory returned a {type(layer).__name__} "
                                    f"(call {i}), expected a Module")
                if any(layer is other for other in layers):
                    raise ValueError("TransformerEncoder: the layer factory returned the same Module twice; it must "
                                     "construct a new layer on every call")
                layers.append(layer)
        else:
            raise TypeError(f"TransformerEncoder: encoder_layer must be a Module or a factory returning one, "
                            f"got {type(encoder_layer).__name__}")
        if norm is not None and not isinstance(norm, Module):
            raise TypeError(f"TransformerEncoder: norm must be a Module or None, got {type(norm).__name__}")
        self.layers = ModuleList(layers)
        self.num_layers = num_layers
        self.register_module("norm", norm)

    def forward(self, src: Tensor, mask=None, src_key_padding_mask=None, is_causal: bool = False) -> Tensor:
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        if self.norm is not None:
            out = self.norm(out)
        return out
