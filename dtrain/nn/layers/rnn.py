"""Recurrent layers: RNN (Elman, tanh or relu) and LSTM, unidirectional, with torch's parameters.

Each layer k owns ``weight_ih_l{k}`` (G·H, in), ``weight_hh_l{k}`` (G·H, H), ``bias_ih_l{k}`` and
``bias_hh_l{k}`` (G·H,), G = 1 for RNN and 4 for LSTM (gate rows in torch's order i, f, g, o), all
initialised U(-1/√H, 1/√H) as torch does, registered layer by layer in torch's order so state dicts
are interchangeable.

The forward pass is backpropagation through time over the unrolled sequence: per layer one fused
``linear`` projects the inputs of every time step at once (with both biases folded in), then a
Python loop over time adds the hidden-state matmul and applies the gate nonlinearities, and the
per-step hidden states are stacked into the output sequence.
"""

from __future__ import annotations

import math
import warnings

from ...autograd import ops
from ...autograd.capture_hooks import note_constant
from ...autograd.tensor import Tensor
from ...spec import is_real
from .. import init
from ..module import Module
from ._util import check_positive_int, new_parameter

__all__ = ["LSTM", "RNN"]


class _RNNBase(Module):
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
                 dropout: float, bidirectional: bool, device, dtype):
        super().__init__()
        name = type(self).__name__
        check_positive_int(name, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        if not is_real(dropout) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if bidirectional:
            raise NotImplementedError(f"{name}: bidirectional=True is not supported (unidirectional only)")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} is applied between stacked layers only, so it has no effect "
                          f"with num_layers=1", UserWarning, stacklevel=3)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional = False
        rows = self._gates * hidden_size
        for k in range(num_layers):
            in_features = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", new_parameter((rows, in_features), device, dtype))
            self.register_parameter(f"weight_hh_l{k}", new_parameter((rows, hidden_size), device, dtype))
            if bias:
                self.register_parameter(f"bias_ih_l{k}", new_parameter((rows,), device, dtype))
                self.register_parameter(f"bias_hh_l{k}", new_parameter((rows,), device, dtype))
        self.reset_parameters()

    def reset_parameters(self, generator=None) -> None:
        """torch's init: every weight and bias U(-1/√hidden_size, 1/√hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound, generator)

    def _layer_params(self, k: int) -> tuple:
        return (getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"),
                getattr(self, f"bias_ih_l{k}", None), getattr(self, f"bias_hh_l{k}", None))

    # -- shapes ----------------------------------------------------------------------------------
    def _check_input(self, x) -> bool:
        """Validate the input; returns whether it is batched (3-D)."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
        layout = "(N, L, input_size)" if self.batch_first else "(L, N, input_size)"
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"{name}(input_size={self.input_size}) expects a 3-D input {layout} (batch_first="
                             f"{self.batch_first}) or a 2-D unbatched (L, input_size) one, got shape {x.shape}")
        length = x.shape[1] if x.ndim == 3 and self.batch_first else x.shape[0]
        if length == 0:
            raise ValueError(f"{name}: the input sequence is empty (shape {x.shape})")
        return x.ndim == 3

    def _check_state(self, h, what: str, batch: int, batched: bool) -> Tensor:
        name = type(self).__name__
        expect = (self.num_layers, batch, self.hidden_size) if batched else (self.num_layers, self.hidden_size)
        if not isinstance(h, Tensor):
            raise TypeError(f"{name}: {what} must be a Tensor of shape {expect}, got {type(h).__name__}")
        if h.shape != expect:
            raise ValueError(f"{name}: {what} must have shape {expect} (num_layers, batch, hidden_size)"
                             f"{'' if batched else ' for unbatched input'}, got {h.shape}")
        return h if batched else h.unsqueeze(1)

    # -- the recurrence ----------------------------------------------------------------------------
    def _cell(self, gates: Tensor, state: tuple) -> tuple:
        """One time step: pre-activation gates (N, G·H) and the previous state -> the new state."""
        raise NotImplementedError

    def _run(self, x: Tensor, states: list[tuple], time_axis: int) -> tuple[Tensor, list[tuple]]:
        """Run every layer over the whole sequence; ``states[k]`` is layer k's initial state."""
        length = x.shape[time_axis]
        finals = []
        inp = x
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            proj = ops.linear(inp, w_ih, b_ih)  # every time step's input projection at once
            if b_hh is not None:
                proj = proj + b_hh
            state = states[k]
            outs = []
            for t in range(length):
                step = proj[t] if time_axis == 0 else proj[:, t]
                state = self._cell(step + ops.linear(state[0], w_hh), state)
                outs.append(state[0])
            out = ops.stack(outs, axis=time_axis)
            finals.append(state)
            if self.dropout > 0.0 and self.training and k < self.num_layers - 1:
                out = ops.dropout(out, self.dropout, True)
            inp = out
        return inp, finals

    def _forward(self, x: Tensor, hx, n_state: int):
        batched = self._check_input(x)
        if not batched:
            x = x.unsqueeze(1)  # unbatched input is (L, input_size) whatever batch_first says
        time_axis = 1 if batched and self.batch_first else 0
        batch = x.shape[1 - time_axis]
        if hx is None:
            with x.device.context():
                zeros = Tensor(x.xp.zeros((batch, self.hidden_size), dtype=x.dtype))
            note_constant(zeros.data)  # the default state depends on the shapes only: a captured step reuses it
            states = [(zeros,) * n_state] * self.num_layers
        else:
            parts = [self._check_state(h, what, batch, batched) for h, what in zip(hx, ("h_0", "c_0"))]
            states = [tuple(p[k] for p in parts) for k in range(self.num_layers)]
        out, finals = self._run(x, states, time_axis)
        last = [ops.stack([f[i] for f in finals], axis=0) for i in range(n_state)]
        if not batched:
            out = out.squeeze(1)
            last = [h.squeeze(1) for h in last]
        return out, last

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s


class RNN(_RNNBase):
    """Elman RNN, unidirectional: h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh), act tanh or relu.

    Args:
        input_size, hidden_size: feature sizes of x_t and h_t.
        num_layers: stacked layers (layer k > 0 reads layer k-1's outputs).
        nonlinearity: "tanh" (default) or "relu".
        bias: use bias_ih/bias_hh.
        batch_first: input/output (N, L, ·) instead of (L, N, ·); h_0/h_n are (num_layers, N, H) either way.
        dropout: dropout on each layer's outputs except the last, in training mode.
        bidirectional: must be False (only unidirectional RNNs are implemented).

    ``forward(input, hx=None)`` -> ``(output, h_n)``: output (L, N, H) (or (N, L, H)), the last
    layer's h_t for every t; h_n (num_layers, N, H), every layer's final state. ``hx`` (the initial
    state, same shape as h_n) defaults to zeros. Unbatched input (L, input_size) with hx
    (num_layers, H) gives output (L, H) and h_n (num_layers, H).

    >>> rnn = RNN(8, 16, num_layers=2, batch_first=True)
    >>> out, h_n = rnn(dt.randn(4, 10, 8))      # out (4, 10, 16), h_n (2, 4, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
                         dtype)
        self.nonlinearity = nonlinearity
        self._act = ops.tanh if nonlinearity == "tanh" else ops.relu

    def _cell(self, gates: Tensor, state: tuple) -> tuple:
        return (self._act(gates),)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, (h_n,) = self._forward(input, None if hx is None else (hx,), 1)
        return out, h_n

    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(_RNNBase):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), unidirectional, torch's gate layout.

    Per step, with gates = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh split in four (i, f, g, o)::

        i, f, o = sigmoid(.), g = tanh(.);  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

    Args as :class:`RNN` (no nonlinearity); ``proj_size`` must be 0 and ``bidirectional`` False.

    ``forward(input, hx=None)`` -> ``(output, (h_n, c_n))``; ``hx`` is ``(h_0, c_0)``, each
    (num_layers, N, H) (or (num_layers, H) for unbatched input), zeros by default.

    >>> lstm = LSTM(8, 16, num_layers=2)
    >>> out, (h_n, c_n) = lstm(dt.randn(10, 4, 8))   # out (10, 4, 16), h_n and c_n (2, 4, 16)
    """

    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        if proj_size:
            raise NotImplementedError(f"LSTM: proj_size={proj_size} is not supported (only proj_size=0)")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
                         dtype)
        self.proj_size = 0

    def _cell(self, gates: Tensor, state: tuple) -> tuple:
        _, c = state
        h = self.hidden_size
        i = ops.sigmoid(gates[:, :h])
        f = ops.sigmoid(gates[:, h:2 * h])
        g = ops.tanh(gates[:, 2 * h:3 * h])
        o = ops.sigmoid(gates[:, 3 * h:])
        c = f * c + i * g
        return o * ops.tanh(c), c

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
        out, (h_n, c_n) = self._forward(input, hx, 2)
        return out, (h_n, c_n)
