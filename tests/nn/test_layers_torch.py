"""Every dtrain.nn layer against torch.nn as an oracle, for the same constructor arguments:

(a) the state_dict keys, their order and shapes equal torch's;
(b) with torch's weights loaded into dtrain, the same float64 inputs give the same outputs (1e-10),
    the same input and parameter gradients of a random projection of the outputs (1e-9), and the
    same state afterwards (batch-norm running statistics);
(c) dtrain's default-initialised state_dict loads into torch strictly, value for value.

dtrain never imports torch; this module is skipped when torch is not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn

torch = pytest.importorskip("torch")
tnn = torch.nn

FWD_TOL = 1e-10
GRAD_TOL = 1e-9

_rng = np.random.default_rng(0)


def R(*shape: int) -> np.ndarray:
    """A float64 input that requires a gradient."""
    return _rng.standard_normal(shape)


@dataclass(frozen=True)
class Const:
    """An input that is passed as a tensor without gradient (masks, float masks, indices)."""

    array: np.ndarray


@dataclass(frozen=True)
class Case:
    make_dt: Callable[[], nn.Module]
    make_torch: Callable[[], torch.nn.Module]
    inputs: tuple
    call: Callable  # call(module, *tensors): the same code drives both libraries
    train: bool


def _default_call(m, *xs):
    return m(*xs)


def case(id: str, make_dt, make_torch, *inputs, call=_default_call, train: bool = True):
    return pytest.param(Case(make_dt, make_torch, inputs, call, train), id=id)


def same(id: str, name: str, *args, inputs: tuple, call=_default_call, train: bool = True, **kwargs):
    """A case whose constructor reads the same in both libraries: nn.<name>(*args, **kwargs)."""
    return case(id, lambda: getattr(nn, name)(*args, **kwargs), lambda: getattr(tnn, name)(*args, **kwargs),
                *inputs, call=call, train=train)


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

L, S, N, E = 4, 5, 2, 6  # target length, source length, batch, model width
CAUSAL = np.triu(np.ones((L, L), dtype=bool), k=1)  # True = masked out (torch's MultiheadAttention rule)
PAD = np.array([[False] * S, [False, False, False, True, True]])  # (N, S): batch 1 ignores its last 2 keys
PAD_L = np.array([[False] * L, [False, False, True, True]])
FLOAT_MASK = _rng.standard_normal((L, S))
MASK3 = _rng.random((N * 2, L, S)) < 0.3
MASK3[..., 0] = False  # every query can attend at least one key
ATTN_KW = dict(attn_mask=Const(CAUSAL))

CASES = [
    # linear / conv / pooling / reshaping
    same("linear", "Linear", 4, 3, inputs=(R(5, 4),)),
    same("linear-nobias-3d", "Linear", 4, 3, bias=False, inputs=(R(2, 5, 4),)),
    same("conv2d", "Conv2d", 3, 4, 3, inputs=(R(2, 3, 6, 6),)),
    same("conv2d-stride-pad", "Conv2d", 3, 4, 3, stride=2, padding=1, inputs=(R(2, 3, 7, 6),)),
    same("conv2d-rect-nobias", "Conv2d", 2, 3, (3, 2), stride=(2, 1), padding=(1, 0), bias=False,
         inputs=(R(1, 2, 5, 4),)),
    same("conv2d-dilation", "Conv2d", 2, 2, 3, padding=2, dilation=2, inputs=(R(1, 2, 6, 6),)),
    same("maxpool2d", "MaxPool2d", 2, inputs=(R(2, 3, 6, 6),)),
    same("maxpool2d-stride-pad", "MaxPool2d", 3, stride=2, padding=1, inputs=(R(2, 2, 7, 6),)),
    same("avgpool2d", "AvgPool2d", 2, inputs=(R(2, 3, 6, 6),)),
    same("avgpool2d-stride-pad", "AvgPool2d", 3, stride=2, padding=1, inputs=(R(2, 2, 7, 6),)),
    same("avgpool2d-exclude-pad", "AvgPool2d", 3, stride=2, padding=1, count_include_pad=False,
         inputs=(R(1, 2, 5, 5),)),
    same("flatten", "Flatten", inputs=(R(2, 3, 2, 2),)),
    same("flatten-0-1", "Flatten", 0, 1, inputs=(R(2, 3, 4),)),
    same("identity", "Identity", inputs=(R(3, 2),)),
    # normalisation
    same("batchnorm1d-2d-train", "BatchNorm1d", 3, inputs=(R(6, 3),)),
    same("batchnorm1d-3d-train", "BatchNorm1d", 3, inputs=(R(4, 3, 5),)),
    same("batchnorm1d-eval", "BatchNorm1d", 3, inputs=(R(4, 3, 5),), train=False),
    same("batchnorm2d-train", "BatchNorm2d", 3, inputs=(R(2, 3, 4, 4),)),
    same("batchnorm2d-eval", "BatchNorm2d", 3, inputs=(R(2, 3, 4, 4),), train=False),
    same("batchnorm2d-no-affine-momentum", "BatchNorm2d", 2, affine=False, momentum=0.3, inputs=(R(3, 2, 3, 3),)),
    same("batchnorm1d-no-running-stats", "BatchNorm1d", 3, track_running_stats=False, inputs=(R(5, 3),),
         train=False),
    same("layernorm", "LayerNorm", 5, inputs=(R(3, 4, 5),)),
    same("layernorm-2d-shape", "LayerNorm", (3, 5), eps=1e-3, inputs=(R(2, 3, 5),)),
    same("layernorm-no-affine", "LayerNorm", 5, elementwise_affine=False, inputs=(R(4, 5),)),
    same("layernorm-no-bias", "LayerNorm", 5, bias=False, inputs=(R(4, 5),)),
    # dropout (deterministic settings; the train-mode mask statistics are tested below)
    same("dropout-p0-train", "Dropout", 0.0, inputs=(R(4, 5),)),
    same("dropout-eval", "Dropout", 0.5, inputs=(R(4, 5),), train=False),
    # embedding
    same("embedding", "Embedding", 7, 3, inputs=(Const(np.array([[0, 2, 6], [2, 2, 1]])),)),
    same("embedding-padding", "Embedding", 7, 3, padding_idx=2, inputs=(Const(np.array([[0, 2, 6], [2, 5, 1]])),)),
    same("embedding-padding-negative", "Embedding", 5, 2, padding_idx=-1, inputs=(Const(np.array([4, 0, 4, 3])),)),
    # activations
    same("relu", "ReLU", inputs=(R(3, 4),)),
    same("leaky_relu", "LeakyReLU", 0.2, inputs=(R(3, 4),)),
    same("elu", "ELU", 0.7, inputs=(R(3, 4),)),
    same("gelu", "GELU", inputs=(R(3, 4),)),
    same("gelu-tanh", "GELU", approximate="tanh", inputs=(R(3, 4),)),
    same("silu", "SiLU", inputs=(R(3, 4),)),
    same("sigmoid", "Sigmoid", inputs=(R(3, 4),)),
    same("tanh", "Tanh", inputs=(R(3, 4),)),
    same("softmax", "Softmax", dim=1, inputs=(R(2, 4, 3),)),
    # multi-head attention: (output, weights or None)
    same("mha-self", "MultiheadAttention", E, 2, inputs=(R(L, N, E),), call=lambda m, x: m(x, x, x)),
    same("mha-self-batch-first", "MultiheadAttention", E, 3, batch_first=True, inputs=(R(N, L, E),),
         call=lambda m, x: m(x, x, x)),
    same("mha-cross", "MultiheadAttention", E, 2, inputs=(R(L, N, E), R(S, N, E), R(S, N, E))),
    same("mha-cross-batch-first-shared-kv", "MultiheadAttention", E, 2, batch_first=True,
         inputs=(R(N, L, E), R(N, S, E)), call=lambda m, q, kv: m(q, kv, kv)),
    same("mha-bool-attn-mask-no-weights", "MultiheadAttention", E, 2, inputs=(R(L, N, E), Const(CAUSAL)),
         call=lambda m, x, mask: m(x, x, x, attn_mask=mask, need_weights=False)),
    same("mha-bool-attn-mask-weights", "MultiheadAttention", E, 2, batch_first=True,
         inputs=(R(N, L, E), Const(CAUSAL)), call=lambda m, x, mask: m(x, x, x, attn_mask=mask)),
    same("mha-key-padding-weights", "MultiheadAttention", E, 2, batch_first=True,
         inputs=(R(N, L, E), R(N, S, E), R(N, S, E), Const(PAD)),
         call=lambda m, q, k, v, pad: m(q, k, v, key_padding_mask=pad)),
    same("mha-key-padding-no-weights", "MultiheadAttention", E, 2,
         inputs=(R(L, N, E), R(S, N, E), R(S, N, E), Const(PAD)),
         call=lambda m, q, k, v, pad: m(q, k, v, key_padding_mask=pad, need_weights=False)),
    same("mha-both-masks-batch-first", "MultiheadAttention", E, 3, batch_first=True,
         inputs=(R(N, L, E), Const(CAUSAL), Const(PAD_L)),
         call=lambda m, x, mask, pad: m(x, x, x, key_padding_mask=pad, attn_mask=mask, need_weights=False)),
    same("mha-float-mask", "MultiheadAttention", E, 2, inputs=(R(L, N, E), R(S, N, E), R(S, N, E),
                                                              Const(FLOAT_MASK)),
         call=lambda m, q, k, v, mask: m(q, k, v, attn_mask=mask)),
    same("mha-float-mask-no-weights", "MultiheadAttention", E, 2, batch_first=True,
         inputs=(R(N, L, E), R(N, S, E), R(N, S, E), Const(FLOAT_MASK)),
         call=lambda m, q, k, v, mask: m(q, k, v, attn_mask=mask, need_weights=False)),
    same("mha-3d-mask-per-head-weights", "MultiheadAttention", E, 2, batch_first=True,
         inputs=(R(N, L, E), R(N, S, E), R(N, S, E), Const(MASK3)),
         call=lambda m, q, k, v, mask: m(q, k, v, attn_mask=mask, average_attn_weights=False)),
    same("mha-is-causal", "MultiheadAttention", E, 2, inputs=(R(L, N, E), Const(CAUSAL)),
         call=lambda m, x, mask: m(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)),
    same("mha-no-bias", "MultiheadAttention", E, 2, bias=False, inputs=(R(L, N, E), R(S, N, E), R(S, N, E))),
    same("mha-unbatched", "MultiheadAttention", E, 2, inputs=(R(L, E), Const(CAUSAL)),
         call=lambda m, x, mask: m(x, x, x, attn_mask=mask, average_attn_weights=False)),
    same("mha-dropout-eval", "MultiheadAttention", E, 2, dropout=0.5, inputs=(R(L, N, E),),
         call=lambda m, x: m(x, x, x), train=False),
    # transformer encoder
    same("encoder-layer-prenorm-relu", "TransformerEncoderLayer", E, 2, 10, 0.0, norm_first=True,
         inputs=(R(L, N, E),)),
    same("encoder-layer-prenorm-gelu", "TransformerEncoderLayer", E, 2, 10, 0.0, "gelu", norm_first=True,
         inputs=(R(L, N, E),)),
    same("encoder-layer-postnorm-relu", "TransformerEncoderLayer", E, 2, 10, 0.0, norm_first=False,
         inputs=(R(L, N, E),)),
    same("encoder-layer-postnorm-gelu", "TransformerEncoderLayer", E, 3, 10, 0.0, activation="gelu",
         norm_first=False, inputs=(R(L, N, E),)),
    same("encoder-layer-masks-batch-first", "TransformerEncoderLayer", E, 2, 8, 0.0, batch_first=True,
         norm_first=True, inputs=(R(N, L, E), Const(CAUSAL), Const(PAD_L)),
         call=lambda m, x, mask, pad: m(x, src_mask=mask, src_key_padding_mask=pad)),
    same("encoder-layer-causal-no-bias", "TransformerEncoderLayer", E, 2, 8, 0.0, norm_first=False, bias=False,
         layer_norm_eps=1e-6, inputs=(R(L, N, E), Const(CAUSAL)),
         call=lambda m, x, mask: m(x, src_mask=mask, is_causal=True)),
    same("encoder-layer-dropout-eval", "TransformerEncoderLayer", E, 2, 8, 0.3, norm_first=True,
         inputs=(R(L, N, E),), train=False),
    case("encoder-factory-norm",
         lambda: nn.TransformerEncoder(lambda: nn.TransformerEncoderLayer(E, 2, 8, 0.0), 2, norm=nn.LayerNorm(E)),
         lambda: tnn.TransformerEncoder(tnn.TransformerEncoderLayer(E, 2, 8, 0.0, norm_first=True), 2,
                                        norm=tnn.LayerNorm(E), enable_nested_tensor=False),
         R(L, N, E), Const(CAUSAL), call=lambda m, x, mask: m(x, mask=mask)),
    case("encoder-template-postnorm",
         lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 2, 8, 0.0, "gelu", batch_first=True,
                                                                  norm_first=False), 3),
         lambda: tnn.TransformerEncoder(tnn.TransformerEncoderLayer(E, 2, 8, 0.0, "gelu", batch_first=True), 3,
                                        enable_nested_tensor=False),
         R(N, L, E), Const(PAD_L), call=lambda m, x, pad: m(x, src_key_padding_mask=pad)),
    # recurrent layers: (output, h_n) / (output, (h_n, c_n))
    same("rnn-tanh", "RNN", 3, 4, inputs=(R(S, N, 3),)),
    same("rnn-relu-2-layers", "RNN", 3, 4, 2, nonlinearity="relu", inputs=(R(S, N, 3),)),
    same("rnn-tanh-2-layers-batch-first-hx", "RNN", 3, 4, 2, batch_first=True, inputs=(R(N, S, 3), R(2, N, 4))),
    same("rnn-relu-2-layers-hx", "RNN", 3, 4, 2, nonlinearity="relu", inputs=(R(S, N, 3), R(2, N, 4))),
    same("rnn-no-bias", "RNN", 3, 4, bias=False, inputs=(R(S, N, 3),)),
    same("rnn-unbatched-hx", "RNN", 3, 4, 2, inputs=(R(S, 3), R(2, 4))),
    same("rnn-dropout-eval", "RNN", 3, 4, 2, dropout=0.4, inputs=(R(S, N, 3),), train=False),
    same("lstm", "LSTM", 3, 4, inputs=(R(S, N, 3),)),
    same("lstm-2-layers", "LSTM", 3, 4, 2, inputs=(R(S, N, 3),)),
    same("lstm-2-layers-state", "LSTM", 3, 4, 2, inputs=(R(S, N, 3), R(2, N, 4), R(2, N, 4)),
         call=lambda m, x, h, c: m(x, (h, c))),
    same("lstm-2-layers-batch-first-state", "LSTM", 3, 5, 2, batch_first=True,
         inputs=(R(N, S, 3), R(2, N, 5), R(2, N, 5)), call=lambda m, x, h, c: m(x, (h, c))),
    same("lstm-no-bias", "LSTM", 3, 4, bias=False, inputs=(R(S, N, 3),)),
    same("lstm-unbatched-state", "LSTM", 3, 4, 2, inputs=(R(S, 3), R(2, 4), R(2, 4)),
         call=lambda m, x, h, c: m(x, (h, c))),
    same("lstm-dropout-eval", "LSTM", 3, 4, 2, dropout=0.4, inputs=(R(S, N, 3),), train=False),
]


# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


def _pair(c: Case):
    """A float64 dtrain module holding the weights of a freshly built float64 torch module."""
    dt.set_default_dtype(np.float64)
    d_mod = c.make_dt()
    t_mod = c.make_torch().double()
    d_mod.load_state_dict({k: v.detach().numpy() for k, v in t_mod.state_dict().items()})
    d_mod.train(c.train)
    t_mod.train(c.train)
    return d_mod, t_mod


def _tensors(inputs: tuple):
    d_in, t_in = [], []
    for a in inputs:
        if isinstance(a, Const):
            d_in.append(dt.tensor(a.array))
            t_in.append(torch.from_numpy(a.array.copy()))
        else:
            d_in.append(dt.tensor(a, dtype="float64", requires_grad=True))
            t_in.append(torch.tensor(a, dtype=torch.float64, requires_grad=True))
    return d_in, t_in


def _flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [y for o in out for y in _flat(o)]
    return [out]


def _shapes(state: dict) -> list:
    return [(k, tuple(v.shape)) for k, v in state.items()]


def _grad(g, like) -> np.ndarray:
    """A gradient as an array; None (never reached) counts as zeros."""
    if g is None:
        return np.zeros(tuple(like.shape))
    return g.detach().numpy() if hasattr(g, "detach") else np.asarray(g)


def check_step(d_mod, t_mod, call, inputs: tuple, seed: int = 7) -> None:
    """One forward and backward through both modules: outputs, gradients, and the state afterwards."""
    d_mod.zero_grad()
    t_mod.zero_grad()
    d_in, t_in = _tensors(inputs)
    d_out, t_out = _flat(call(d_mod, *d_in)), _flat(call(t_mod, *t_in))
    assert len(d_out) == len(t_out)
    rng = np.random.default_rng(seed)
    d_loss = t_loss = None
    for i, (d, t) in enumerate(zip(d_out, t_out)):
        if t is None:
            assert d is None, f"output {i}: torch returns None, dtrain a tensor of shape {d.shape}"
            continue
        tv = t.detach().numpy()
        assert d is not None and d.shape == tv.shape, f"output {i}: dtrain {d and d.shape}, torch {tv.shape}"
        np.testing.assert_allclose(d.numpy(), tv, rtol=FWD_TOL, atol=FWD_TOL, err_msg=f"output {i}")
        if not t.requires_grad:
            continue
        proj = rng.standard_normal(tv.shape)
        d_term, t_term = (d * proj).sum(), (t * torch.from_numpy(proj)).sum()
        d_loss = d_term if d_loss is None else d_loss + d_term
        t_loss = t_term if t_loss is None else t_loss + t_term
    if t_loss is not None:
        d_loss.backward()
        t_loss.backward()
        for i, (d, t) in enumerate(zip(d_in, t_in)):
            if t.requires_grad:
                np.testing.assert_allclose(_grad(d.grad, d), _grad(t.grad, t), rtol=GRAD_TOL, atol=GRAD_TOL,
                                           err_msg=f"gradient of input {i}")
        d_params = dict(d_mod.named_parameters())
        t_params = dict(t_mod.named_parameters())
        assert list(d_params) == list(t_params)
        for name, tp in t_params.items():
            dp = d_params[name]
            np.testing.assert_allclose(_grad(dp.grad, dp), _grad(tp.grad, tp), rtol=GRAD_TOL, atol=GRAD_TOL,
                                       err_msg=f"gradient of parameter {name}")
    d_state, t_state = d_mod.state_dict(), t_mod.state_dict()
    for name, tv in t_state.items():
        np.testing.assert_allclose(np.asarray(d_state[name], dtype=np.float64), tv.detach().double().numpy(),
                                   rtol=FWD_TOL, atol=FWD_TOL, err_msg=f"state {name} after the step")


# ---------------------------------------------------------------------------------------------
# (a), (b), (c) for every case
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES)
def test_state_dict_layout_matches_torch(c: Case):
    d_mod, t_mod = c.make_dt(), c.make_torch()
    assert _shapes(d_mod.state_dict()) == _shapes(t_mod.state_dict())
    assert [n for n, _ in d_mod.named_parameters()] == [n for n, _ in t_mod.named_parameters()]


@pytest.mark.parametrize("c", CASES)
def test_outputs_and_gradients_match_torch(c: Case):
    d_mod, t_mod = _pair(c)
    check_step(d_mod, t_mod, c.call, c.inputs)


@pytest.mark.parametrize("c", CASES)
def test_default_state_dict_loads_into_torch(c: Case):
    d_mod, t_mod = c.make_dt(), c.make_torch()  # default dtype float32 in both
    state = {k: torch.from_numpy(np.array(v)) for k, v in d_mod.state_dict().items()}
    t_mod.load_state_dict(state, strict=True)
    for name, tv in t_mod.state_dict().items():
        np.testing.assert_array_equal(tv.numpy(), d_mod.state_dict()[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# Layer-specific behaviour
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs", "shape"), [
    ("BatchNorm1d", {}, (6, 3)),
    ("BatchNorm1d", {}, (4, 3, 5)),
    ("BatchNorm2d", {}, (3, 3, 4, 4)),
    ("BatchNorm2d", {"momentum": None}, (2, 3, 3, 3)),
    ("BatchNorm1d", {"affine": False, "momentum": 0.5}, (5, 3)),
], ids=["1d-2d-input", "1d-3d-input", "2d", "2d-cumulative", "1d-no-affine"])
def test_batchnorm_running_stats_over_steps(name, kwargs, shape):
    """Three training steps (running statistics and num_batches_tracked follow torch), then eval mode."""
    c = Case(lambda: getattr(nn, name)(3, **kwargs), lambda: getattr(tnn, name)(3, **kwargs), (), _default_call,
             True)
    d_mod, t_mod = _pair(c)
    rng = np.random.default_rng(3)
    for step in range(3):
        check_step(d_mod, t_mod, _default_call, (2.0 + 3.0 * rng.standard_normal(shape),), seed=step)
    assert int(d_mod.num_batches_tracked) == int(t_mod.num_batches_tracked) == 3
    assert d_mod.num_batches_tracked.dtype == np.int64
    d_mod.eval()
    t_mod.eval()
    check_step(d_mod, t_mod, _default_call, (rng.standard_normal(shape),), seed=9)
    assert int(d_mod.num_batches_tracked) == 3


def test_dropout_train_mask_statistics():
    """In training, dropout zeroes about p of the entries, scales survivors by 1/(1-p), and its gradient
    is the same mask; torch's masks have the same statistics (the random streams differ)."""
    p = 0.3
    x = dt.ones(200, 100, requires_grad=True)
    y = nn.Dropout(p)(x)
    kept = y.numpy() != 0
    assert abs(1 - kept.mean() - p) < 0.015
    np.testing.assert_allclose(y.numpy()[kept], 1 / (1 - p), rtol=1e-6)
    y.backward(np.ones(y.shape, dtype=np.float32))
    np.testing.assert_array_equal(x.grad, y.numpy())
    t = tnn.Dropout(p)(torch.ones(200, 100))
    assert abs((t == 0).double().mean().item() - p) < 0.015
    # eval mode and p=0 are the identity (the same tensor comes back)
    assert nn.Dropout(p).eval()(x) is x
    assert nn.Dropout(0.0)(x) is x


def test_rnn_dropout_between_layers_in_training():
    """Inter-layer dropout is active in training only: train-mode outputs differ from torch's eval
    output, and drawing again gives a different mask; the last layer's output is never dropped."""
    c = Case(lambda: nn.LSTM(3, 4, 2, dropout=0.5), lambda: tnn.LSTM(3, 4, 2, dropout=0.5), (), _default_call,
             True)
    d_mod, t_mod = _pair(c)
    x = np.random.default_rng(0).standard_normal((S, N, 3))
    a, _ = d_mod(dt.tensor(x))
    b, _ = d_mod(dt.tensor(x))
    t_mod.eval()
    ref = t_mod(torch.from_numpy(x))[0].detach().numpy()
    assert not np.allclose(a.numpy(), ref) and not np.allclose(a.numpy(), b.numpy())
    d_mod.eval()
    np.testing.assert_allclose(d_mod(dt.tensor(x))[0].numpy(), ref, rtol=FWD_TOL, atol=FWD_TOL)
