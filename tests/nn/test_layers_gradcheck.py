"""The composite layers (RNN, LSTM, MultiheadAttention, TransformerEncoderLayer/Encoder) without torch:
float64 finite-difference gradient checks through inputs and parameters (reverse and forward mode),
default-initialisation statistics, dtype handling, and argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.autograd import gradcheck


@pytest.fixture
def f64():
    dt.set_default_dtype(np.float64)


def _check_module(module: nn.Module, inputs: list, call=None, check_forward: bool = True) -> None:
    """gradcheck ``call(module, *inputs)`` w.r.t. the float inputs and every parameter of ``module``.

    The parameters are passed to gradcheck as extra inputs and swapped into the module for the call
    (a functional call), so forward mode sees their tangents too.
    """
    call = call or (lambda m, *xs: m(*xs))
    named = list(module.named_parameters())
    n = len(inputs)

    def fn(*args):
        owners = []
        for (name, _), t in zip(named, args[n:]):
            *path, leaf = name.split(".")
            owner = module
            for part in path:
                owner = owner.__dict__[part]
            owners.append((owner, leaf, owner.__dict__[leaf]))
            owner.__dict__[leaf] = t
        try:
            out = call(module, *args[:n])
        finally:
            for owner, leaf, p in owners:
                owner.__dict__[leaf] = p
        flat, stack = [], [out]
        while stack:
            o = stack.pop(0)
            if isinstance(o, (tuple, list)):
                stack[:0] = list(o)
            elif o is not None:
                flat.append(o)
        return tuple(flat)

    assert gradcheck(fn, [*inputs, *(p for _, p in named)], atol=1e-6, rtol=1e-4, check_forward=check_forward)


def _x(*shape, grad=True, seed=0):
    return dt.tensor(np.random.default_rng(seed).standard_normal(shape), dtype="float64", requires_grad=grad)


# ---------------------------------------------------------------------------------------------
# Gradient checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("f64")
def test_gradcheck_rnn_two_layers_with_initial_state():
    rnn = nn.RNN(2, 3, num_layers=2)
    _check_module(rnn, [_x(3, 2, 2), _x(2, 2, 3, seed=1)])


@pytest.mark.usefixtures("f64")
def test_gradcheck_rnn_relu_batch_first():
    rnn = nn.RNN(2, 3, nonlinearity="relu", batch_first=True)
    _check_module(rnn, [_x(2, 3, 2)])


@pytest.mark.usefixtures("f64")
def test_gradcheck_lstm_two_layers_with_state():
    lstm = nn.LSTM(2, 2, num_layers=2, batch_first=True)
    _check_module(lstm, [_x(2, 3, 2), _x(2, 2, 2, seed=1), _x(2, 2, 2, seed=2)],
                  call=lambda m, x, h, c: m(x, (h, c)))


@pytest.mark.usefixtures("f64")
def test_gradcheck_lstm_unbatched_no_bias():
    _check_module(nn.LSTM(2, 3, bias=False), [_x(3, 2)])


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("need_weights", [True, False])
def test_gradcheck_mha_self_attention_with_masks(need_weights):
    mha = nn.MultiheadAttention(4, 2)
    causal = np.triu(np.ones((3, 3), dtype=bool), k=1)
    pad = np.array([[False, False, False], [False, False, True]])
    _check_module(mha, [_x(3, 2, 4)], call=lambda m, x: m(x, x, x, key_padding_mask=pad, attn_mask=causal,
                                                          need_weights=need_weights))


@pytest.mark.usefixtures("f64")
def test_gradcheck_mha_cross_attention_per_head_weights():
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    _check_module(mha, [_x(1, 2, 4), _x(1, 3, 4, seed=1), _x(1, 3, 4, seed=2)],
                  call=lambda m, q, k, v: m(q, k, v, average_attn_weights=False))


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize(("norm_first", "activation"), [(True, "relu"), (False, "gelu")])
def test_gradcheck_transformer_encoder_layer(norm_first, activation):
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=5, dropout=0.0, activation=activation,
                                      norm_first=norm_first, batch_first=True)
    mask = np.triu(np.ones((3, 3), dtype=bool), k=1)
    _check_module(layer, [_x(2, 3, 4)], call=lambda m, x: m(x, src_mask=mask))


@pytest.mark.usefixtures("f64")
def test_gradcheck_transformer_encoder_stack():
    enc = nn.TransformerEncoder(lambda: nn.TransformerEncoderLayer(4, 2, 3, dropout=0.0), 2, norm=nn.LayerNorm(4))
    _check_module(enc, [_x(2, 1, 4)])


# ---------------------------------------------------------------------------------------------
# Default initialisation (torch's formulas)
# ---------------------------------------------------------------------------------------------


def _assert_uniform(a, bound: float, what: str) -> None:
    a = np.asarray(a, dtype=np.float64).ravel()
    assert np.all(np.abs(a) <= bound), f"{what}: values outside ±{bound}"
    assert np.abs(a).max() > 0.8 * bound, f"{what}: values do not fill ±{bound}"
    # U(-b, b) has std b/sqrt(3); allow sampling error for a few hundred draws
    assert abs(a.std() - bound / math.sqrt(3)) < 0.2 * bound / math.sqrt(3), f"{what}: std {a.std()}"


def test_linear_and_conv_default_init():
    lin = nn.Linear(50, 40)
    _assert_uniform(lin.weight.data, 1 / math.sqrt(50), "Linear.weight")
    _assert_uniform(lin.bias.data, 1 / math.sqrt(50), "Linear.bias")
    conv = nn.Conv2d(4, 8, 3)
    _assert_uniform(conv.weight.data, 1 / math.sqrt(4 * 9), "Conv2d.weight")


def test_mha_default_init():
    e = 32
    mha = nn.MultiheadAttention(e, 4)
    _assert_uniform(mha.in_proj_weight.data, math.sqrt(6 / (e + 3 * e)), "in_proj_weight (xavier)")
    assert not mha.in_proj_bias.data.any() and not mha.out_proj.bias.data.any()
    _assert_uniform(mha.out_proj.weight.data, 1 / math.sqrt(e), "out_proj.weight")
    assert mha.in_proj_weight.dtype == np.float32


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM])
def test_recurrent_default_init(cls):
    h = 16
    m = cls(8, h, num_layers=2)
    bound = 1 / math.sqrt(h)
    for name, p in m.named_parameters():
        assert np.all(np.abs(p.data) <= bound), f"{name}: values outside ±{bound}"
    _assert_uniform(np.concatenate([p.data.ravel() for p in m.parameters()]), bound, "all parameters")
    gates = 4 if cls is nn.LSTM else 1
    assert m.weight_ih_l0.shape == (gates * h, 8) and m.weight_ih_l1.shape == (gates * h, h)
    assert m.weight_hh_l1.shape == (gates * h, h) and m.bias_hh_l1.shape == (gates * h,)


def test_init_is_reproducible_from_the_seed():
    dt.manual_seed(5)
    a = nn.LSTM(3, 4).state_dict()
    dt.manual_seed(5)
    b = nn.LSTM(3, 4).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_encoder_layers_are_independent():
    template = nn.TransformerEncoderLayer(8, 2, 16)
    for enc in (nn.TransformerEncoder(template, 3), nn.TransformerEncoder(lambda: nn.TransformerEncoderLayer(8, 2, 16),
                                                                          3)):
        assert [n for n, _ in enc.named_children()] == ["layers"]
        w = [layer.self_attn.in_proj_weight for layer in enc.layers]
        assert len({id(p.data) for p in w}) == 3 and all(p is not template.self_attn.in_proj_weight for p in w)
        assert not np.array_equal(w[0].data, w[1].data)  # freshly initialised, not copies of one array
        assert all(layer.norm_first for layer in enc.layers)
        assert len(list(enc.parameters())) == 3 * len(list(template.parameters()))
    # the template's configuration carries over
    post = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", norm_first=False,
                                                            batch_first=True, dtype=np.float64), 2)
    assert all(layer.norm_first is False and layer.self_attn.batch_first for layer in post.layers)
    assert post.layers[1].linear1.weight.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes and modes
# ---------------------------------------------------------------------------------------------


def test_float32_stays_float32():
    x = dt.randn(3, 2, 8)
    mha = nn.MultiheadAttention(8, 2)
    out, w = mha(x, x, x, attn_mask=np.zeros((3, 3)), key_padding_mask=np.zeros((2, 3), dtype=bool))
    assert out.dtype == w.dtype == np.float32
    y, (h, c) = nn.LSTM(8, 5)(x)
    assert y.dtype == h.dtype == c.dtype == np.float32
    assert nn.TransformerEncoderLayer(8, 2, 16)(x).dtype == np.float32


def test_mha_shapes_and_need_weights_false():
    mha = nn.MultiheadAttention(8, 4, batch_first=True)
    q, kv = dt.randn(2, 3, 8), dt.randn(2, 5, 8)
    out, w = mha(q, kv, kv)
    assert out.shape == (2, 3, 8) and w.shape == (2, 3, 5)
    out, w = mha(q, kv, kv, average_attn_weights=False)
    assert w.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(w.numpy().sum(-1), 1.0, rtol=1e-5)
    out2, none = mha(q, kv, kv, need_weights=False)
    assert none is None
    np.testing.assert_allclose(out2.numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def test_mha_is_causal_without_a_mask_masks_the_future():
    mha = nn.MultiheadAttention(4, 1)
    x = dt.randn(4, 1, 4)
    _, w = mha(x, x, x, is_causal=True)
    assert not np.triu(w.numpy()[0], k=1).any()
    causal = np.triu(np.ones((4, 4), dtype=bool), k=1)
    np.testing.assert_allclose(mha(x, x, x, is_causal=True, need_weights=False)[0].numpy(),
                               mha(x, x, x, attn_mask=causal)[0].numpy(), rtol=1e-5, atol=1e-6)


def test_attention_dropout_only_in_training():
    mha = nn.MultiheadAttention(4, 2, dropout=0.5)
    x = dt.randn(3, 2, 4)
    a, b = mha(x, x, x)[0].numpy(), mha(x, x, x)[0].numpy()
    assert not np.allclose(a, b)
    mha.eval()
    np.testing.assert_array_equal(mha(x, x, x)[0].numpy(), mha(x, x, x)[0].numpy())


def test_rnn_output_is_last_layer_hidden_states():
    rnn = nn.RNN(3, 4, num_layers=2, batch_first=True)
    out, h_n = rnn(dt.randn(2, 5, 3))
    assert out.shape == (2, 5, 4) and h_n.shape == (2, 2, 4)
    np.testing.assert_array_equal(out.numpy()[:, -1], h_n.numpy()[-1])
    out, h_n = rnn(dt.randn(5, 3))  # unbatched
    assert out.shape == (5, 4) and h_n.shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# Errors name the bad value and what was expected
# ---------------------------------------------------------------------------------------------


def test_mha_errors():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(3\)"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(NotImplementedError, match="kdim"):
        nn.MultiheadAttention(8, 2, kdim=4)
    mha = nn.MultiheadAttention(8, 2)
    x = dt.randn(3, 2, 8)
    with pytest.raises(ValueError, match="last dimension of query, key and value must be 8"):
        mha(dt.randn(3, 2, 6), x, x)
    with pytest.raises(ValueError, match="all 3-D"):
        mha(dt.randn(2, 3, 2, 8), x, x)
    with pytest.raises(ValueError, match="same batch size"):
        mha(dt.randn(3, 1, 8), x, x)
    with pytest.raises(ValueError, match="same sequence length"):
        mha(x, x, dt.randn(4, 2, 8))
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(3, 3\)"):
        mha(x, x, x, attn_mask=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 3\)"):
        mha(x, x, x, key_padding_mask=np.zeros((3, 2), dtype=bool))
    with pytest.raises(TypeError, match=r"boolean .* or floating point"):
        mha(x, x, x, attn_mask=np.zeros((3, 3), dtype=np.int64))


def test_recurrent_errors():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(NotImplementedError, match="unidirectional"):
        nn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        nn.RNN(3, 0)
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        nn.LSTM(3, 4, dropout=0.2)
    lstm = nn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"input_size=3\) expects a 3-D input \(L, N, input_size\)"):
        lstm(dt.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        lstm(dt.randn(5, 2, 3), (dt.zeros(1, 2, 4), dt.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 4\)"):
        lstm(dt.randn(5, 2, 3), (dt.zeros(2, 2, 4), dt.zeros(2, 4)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(dt.randn(5, 2, 3), dt.zeros(2, 2, 4))


def test_encoder_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")
    with pytest.raises(ValueError, match="divisible"):
        nn.TransformerEncoderLayer(8, 3)
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match="same Module twice"):
        nn.TransformerEncoder(lambda: layer, 2)
    with pytest.raises(TypeError, match="pass a factory"):
        nn.TransformerEncoder(nn.Linear(8, 8), 2)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        nn.TransformerEncoder(layer, 0)
