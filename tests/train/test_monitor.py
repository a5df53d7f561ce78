"""dtrain.train.monitor: gradient/weight statistics against NumPy, activation statistics with dead
ReLUs built by hand; dtrain.train.plots: PNG plots (with and without matplotlib)."""

from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.train import plots
from dtrain.train.monitor import (
    ActivationMonitor,
    EpochMonitor,
    grad_norms,
    layer_grad_norms,
    layer_labels,
    summarize_layers,
    total_grad_norm,
    weight_stats,
)
from dtrain.train.plots import grad_flow_figure, learning_curves_figure, plot_grad_flow, plot_learning_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def _backward(model, rng, shape=(6, 3)):
    x = dt.tensor(rng.standard_normal(shape).astype(np.float32))
    out = model(x)
    (out * out).mean().backward()


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel()))


# -- gradients -----------------------------------------------------------------------------------


def test_grad_norms_match_numpy_in_registration_order(rng):
    model = _mlp()
    _backward(model, rng)
    norms = grad_norms(model)
    assert list(norms) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, p in model.named_parameters():
        assert isinstance(norms[name], float)
        assert norms[name] == pytest.approx(_norm(p.grad), rel=1e-6)


def test_layer_grad_norms_group_by_module_prefix(rng):
    model = _mlp()
    _backward(model, rng)
    layers = layer_grad_norms(model)
    assert list(layers) == ["0", "2"]
    for layer in ("0", "2"):
        w, b = model._modules[layer].weight.grad, model._modules[layer].bias.grad
        expected = math.sqrt(_norm(w) ** 2 + _norm(b) ** 2)
        assert layers[layer] == pytest.approx(expected, rel=1e-6)
    all_grads = np.concatenate([p.grad.ravel() for p in model.parameters()])
    assert total_grad_norm(model) == pytest.approx(_norm(all_grads), rel=1e-6)


def test_none_grads_are_skipped(rng):
    model = _mlp()
    assert grad_norms(model) == {} and layer_grad_norms(model) == {}
    assert total_grad_norm(model) == 0.0
    _backward(model, rng)
    model._modules["0"].weight.grad = None
    model._modules["0"].bias.grad = None
    assert list(grad_norms(model)) == ["2.weight", "2.bias"]
    assert list(layer_grad_norms(model)) == ["2"]
    model._modules["2"].bias.grad = None
    assert total_grad_norm(model) == pytest.approx(_norm(model._modules["2"].weight.grad), rel=1e-6)


def test_root_and_nested_layer_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.ones(2, dtype=np.float32))
            self.block = nn.Sequential(nn.Linear(2, 2))

    net = Net()
    net.scale.grad = np.array([3.0, 4.0], dtype=np.float32)
    net.block[0].weight.grad = np.full((2, 2), 0.5, dtype=np.float32)
    assert layer_grad_norms(net) == {"(root)": pytest.approx(5.0), "block.0": pytest.approx(1.0)}


def test_norms_of_half_precision_grads_do_not_overflow():
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight.grad = np.full((4, 4), 3e4, dtype=np.float16)  # squares overflow float16
    assert grad_norms(model)["0.weight"] == pytest.approx(4 * float(np.float16(3e4)), rel=1e-6)


def test_rejects_a_non_module():
    with pytest.raises(TypeError, match=r"expects a dtrain\.nn\.Module"):
        grad_norms([np.zeros(3)])


# -- weights -------------------------------------------------------------------------------------


def test_weight_stats_match_numpy():
    model = _mlp()
    stats = weight_stats(model)
    assert list(stats) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        a = p.data.astype(np.float64)
        s = stats[name]
        assert set(s) == {"mean", "std", "norm", "max_abs"}
        assert all(isinstance(v, float) for v in s.values())
        assert s["mean"] == pytest.approx(a.mean(), rel=1e-9, abs=1e-12)
        assert s["std"] == pytest.approx(a.std(), rel=1e-9)
        assert s["norm"] == pytest.approx(np.linalg.norm(a), rel=1e-9)
        assert s["max_abs"] == pytest.approx(np.abs(a).max(), rel=1e-9)
    json.dumps(stats)  # plain floats: loggable as is


def test_summarize_layers():
    rows = summarize_layers(_mlp())
    assert rows == [
        {"name": "0", "type": "Linear", "num_params": 20},
        {"name": "1", "type": "ReLU", "num_params": 0},
        {"name": "2", "type": "Linear", "num_params": 12},
    ]


# -- activations ---------------------------------------------------------------------------------


def _engineered_model() -> nn.Sequential:
    """Linear(3, 4) + ReLU where unit 0 is always negative (dead), unit 1 always positive, unit 2
    follows x[..., 0] (alive when x[..., 0] takes both signs) and unit 3 is exactly 0 (dead)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    lin = model[0]
    lin.weight.data[...] = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    lin.bias.data[...] = np.array([-1, 1, 0, 0], dtype=np.float32)
    return model


def _capture(module):
    seen = []
    handle = module.register_forward_hook(lambda m, inputs, out: seen.append(out.data.copy()))
    return seen, handle


def test_dead_relu_fraction_is_exactly_as_constructed(rng):
    model = _engineered_model()
    x = rng.standard_normal((16, 3)).astype(np.float32)
    x[0, 0], x[1, 0] = 1.0, -1.0  # unit 2 sees both signs
    with ActivationMonitor(model) as mon:
        assert mon.names == ["0", "1"]
        with mon.recording():
            model(dt.tensor(x))
        assert mon.dead_relu_fraction() == {"1": 0.5}
        stats = mon.stats()
        assert stats["1"]["dead_fraction"] == 0.5
        assert "dead_fraction" not in stats["0"]  # only ReLU modules


def test_dead_units_span_all_non_batch_dims(rng):
    model = _engineered_model()
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)  # (batch, time, features)
    x[:, 0, 0] = -np.abs(x[:, 0, 0]) - 0.1  # unit 2 is dead at time step 0 only
    x[0, 1:, 0], x[1, 1:, 0] = 1.0, -1.0
    with ActivationMonitor(model, kinds=nn.ReLU) as mon, mon.recording():
        model(dt.tensor(x))
    assert mon.names == ["1"]
    assert mon.dead_relu_fraction() == {"1": (5 * 2 + 1) / (5 * 4)}


def test_stats_match_numpy_of_the_output(rng):
    model = _mlp()
    seen0, h0 = _capture(model[0])
    seen1, h1 = _capture(model[1])
    mon = ActivationMonitor(model)
    with mon.recording():
        model(dt.tensor(rng.standard_normal((7, 3)).astype(np.float32)))
    h0.remove()
    h1.remove()
    stats = mon.stats()
    assert list(stats) == ["0", "1", "2"]
    for name, out in (("0", seen0[0]), ("1", seen1[0])):
        a = out.astype(np.float64)
        assert stats[name]["mean"] == pytest.approx(a.mean(), rel=1e-9, abs=1e-12)
        assert stats[name]["std"] == pytest.approx(a.std(), rel=1e-9)
        assert stats[name]["zero_fraction"] == pytest.approx(np.mean(a == 0))
    alive = (seen1[0] != 0).any(axis=0)
    assert mon.dead_relu_fraction()["1"] == pytest.approx(1 - alive.mean())
    mon.remove()


def test_several_forwards_in_one_recording_are_pooled(rng):
    model = _engineered_model()
    seen, handle = _capture(model[1])
    batches = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)]
    batches[0][:, 0] = -1.0  # unit 2 dead in batch 0 ...
    batches[1][:, 0] = -1.0
    batches[2][:, 0] = -1.0
    batches[2][0, 0] = 2.0  # ... but fires once in batch 2, so it is not dead over the recording
    mon = ActivationMonitor(model, kinds="ReLU")
    with mon.recording():
        for b in batches:
            model(dt.tensor(b))
    handle.remove()
    all_out = np.concatenate(seen).astype(np.float64)
    stats = mon.stats()["1"]
    assert stats["mean"] == pytest.approx(all_out.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(all_out.std(), rel=1e-9)
    assert stats["dead_fraction"] == 0.5  # units 0 and 3 only
    with mon.recording():  # a new recording starts afresh
        model(dt.tensor(batches[0]))
    assert mon.dead_relu_fraction() == {"1": 0.75}
    mon.remove()


def test_records_only_inside_recording(rng):
    model = _mlp()
    mon = ActivationMonitor(model)
    model(dt.tensor(rng.standard_normal((2, 3)).astype(np.float32)))
    assert mon.stats() == {} and mon.dead_relu_fraction() == {}
    with mon.recording():
        model(dt.tensor(rng.standard_normal((2, 3)).astype(np.float32)))
    before = mon.stats()
    model(dt.tensor(rng.standard_normal((2, 3)).astype(np.float32)))  # outside: ignored
    assert mon.stats() == before
    mon.remove()


def test_remove_detaches_every_hook(rng):
    model = _mlp()
    with ActivationMonitor(model) as mon:
        assert all(len(m._forward_hooks) == 1 for _, m in model.named_modules() if not list(m.children()))
        assert len(model._forward_hooks) == 0  # the container is not a leaf
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    mon.remove()  # idempotent
    with pytest.raises(RuntimeError, match="removed"):
        with mon.recording():
            pass


def test_hooks_do_not_change_outputs_and_tuple_outputs_use_the_first(rng):
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2.0, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    net = Net()
    x = rng.standard_normal((3, 2)).astype(np.float32)
    with ActivationMonitor(net) as mon, mon.recording():
        out = net(dt.tensor(x))
    np.testing.assert_array_equal(out.data, 2 * x)
    assert mon.stats()["pair"]["mean"] == pytest.approx(float((2 * x.astype(np.float64)).mean()), rel=1e-6)


def test_kinds_validation():
    with pytest.raises(TypeError, match="kinds"):
        ActivationMonitor(_mlp(), kinds=[3])


# -- plots ---------------------------------------------------------------------------------------


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_plot_learning_curves_writes_png(tmp_path):
    records = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "test_loss": 2.2 / e, "test_accuracy": 0.2 * e}
               for e in range(1, 5)]
    path = tmp_path / "curves.png"
    assert plot_learning_curves(records, path) == str(path)
    assert _is_png(path)


def test_plot_learning_curves_without_test_metrics(tmp_path):
    records = [{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5, "test_loss": None}]
    path = str(tmp_path / "sub" / "regression.png")
    assert plot_learning_curves(records, path) == path
    assert _is_png(path)
    assert plot_learning_curves([], tmp_path / "empty.png") is None


def test_plot_grad_flow_writes_png(tmp_path):
    model = _mlp()
    rng = np.random.default_rng(0)
    history = []
    for _ in range(3):
        model.zero_grad()
        _backward(model, rng)
        history.append(layer_grad_norms(model))
    history.append({"0": 0.0, "2": 1e-3, "extra": 2.0})  # zero norm and a new layer: gaps, no warnings
    path = tmp_path / "grad_flow.png"
    assert plot_grad_flow(history, path, epochs=[1, 2, 5, 9]) == str(path)
    assert _is_png(path)
    many = [{"a": 1.0 / (i + 1), "b": 2.0} for i in range(12)]  # colorbar instead of a legend
    assert _is_png(plot_grad_flow(many, tmp_path / "many.png"))
    assert _is_png(plot_grad_flow([{"a": 0.0}], tmp_path / "zeros.png"))  # nothing positive: linear axis
    with pytest.raises(ValueError, match="epochs"):
        plot_grad_flow(history, tmp_path / "bad.png", epochs=[1])


def test_plots_return_none_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(plots, "_warned_no_matplotlib", False)
    records = [{"epoch": 1, "train_loss": 1.0}]
    with caplog.at_level(logging.WARNING, logger="dtrain"):
        assert plot_learning_curves(records, tmp_path / "a.png") is None
        assert plot_grad_flow([{"0": 1.0}], tmp_path / "b.png") is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # warned once
    assert "matplotlib" in caplog.records[0].getMessage()
    assert not list(tmp_path.iterdir())


def test_plotting_does_not_import_pyplot(tmp_path):
    """Figure + Agg canvas directly: a user's pyplot state and interactive backend are left alone."""
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plot_learning_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "c.png")
    plot_grad_flow([{"0": 1.0}], tmp_path / "d.png")
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


# -- what the plots say: layer names, integer epochs ------------------------------------------------


def test_layer_labels_name_each_layer_with_its_class():
    from dtrain.models import build_model

    cnn = build_model("cnn", (1, 8, 8), 10, "classification")
    assert layer_labels(cnn) == {"0": "0 (Conv2d)", "3": "3 (Conv2d)", "7": "7 (Linear)", "10": "10 (Linear)"}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(dt.ones(1))
            self.head = nn.Linear(2, 1)

    assert layer_labels(Net()) == {"(root)": "Net (root)", "head": "head (Linear)"}
    with pytest.raises(TypeError, match=r"^layer_labels expects a dtrain\.nn\.Module, got dict$"):
        layer_labels({})


def test_grad_flow_plot_shows_layer_names_not_indices(rng):
    """What the Trainer stores for grad_flow.png (EpochMonitor) is keyed by the labels; the figure's x axis
    shows them: "0 (Linear)", not "0". metrics.jsonl's grad_norms keep the plain layer names."""
    model = _mlp()
    monitor = EpochMonitor(model)
    history = []
    for _ in range(3):
        model.zero_grad()
        _backward(model, rng)
        monitor.capture_grads()
        record = {}
        monitor.add_to(record, history)
        assert list(record["grad_norms"]) == ["0", "2"]
    monitor.close()
    assert [list(h) for h in history] == [["0 (Linear)", "2 (Linear)"]] * 3
    fig = grad_flow_figure(history)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["0 (Linear)", "2 (Linear)"]


def _visible_ticks(axis) -> list[float]:
    lo, hi = sorted(axis.get_view_interval())
    return [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]


@pytest.mark.parametrize("n_epochs", [2, 3, 7])
def test_epoch_axes_have_integer_ticks(n_epochs):
    records = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "test_accuracy": 0.5 + e / 20}
               for e in range(1, n_epochs + 1)]
    fig = learning_curves_figure(records)
    for ax in fig.axes:  # loss and accuracy panels
        ticks = _visible_ticks(ax.xaxis)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    many = [{"0": 1.0 / (e + 1)} for e in range(12)]  # more than 8 epochs: a colour bar for the epochs
    bar = grad_flow_figure(many, epochs=list(range(1, 13))).axes[1]
    ticks = _visible_ticks(bar.yaxis)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
