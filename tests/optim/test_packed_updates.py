"""Every optimizer (SGD, Adam/AdamW, RMSprop, Adagrad) updates small NumPy parameters together on flat arrays
(``packing.PACK_MAX``): the same bits as one parameter at a time (``PACK_MAX = 0``), whatever the
hyperparameters, and the same state in torch's format."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
from dtrain import optim
from dtrain.optim import packing

CONFIGS = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    (optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    (optim.SGD, dict(lr=0.02, momentum=0.9, weight_decay=1e-2, l1=1e-3)),
    (optim.SGD, dict(lr=0.02, momentum=0.5, maximize=True, weight_decay=1e-3)),
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, amsgrad=True)),
    (optim.Adam, dict(lr=0.01, l1=1e-3, maximize=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True, l1=1e-3)),
    (optim.RMSprop, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-2)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9, l1=1e-3, maximize=True)),
    (optim.Adagrad, dict(lr=0.05)),
    (optim.Adagrad, dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=1e-2, l1=1e-3)),
]
SHAPES = [(3, 4), (4,), (2, 3, 2, 2), (7,), (40, 3), (5,)]  # (40, 3) is over the PACK_MAX the tests set


def make_params(dtypes=(np.float32,)):
    rng = np.random.default_rng(0)
    return [dt.tensor(rng.standard_normal(s).astype(dtypes[i % len(dtypes)]), requires_grad=True)
            for i, s in enumerate(SHAPES)]


def grads_for(step: int, params, skip=()):
    rng = np.random.default_rng(100 + step)
    return [None if i in skip else rng.standard_normal(p.shape).astype(p.dtype) for i, p in enumerate(params)]


def train(monkeypatch, pack_max: int, config: dict, steps: int = 5, dtypes=(np.float32,), skip_at=None,
          kind=optim.SGD):
    monkeypatch.setattr(packing, "PACK_MAX", pack_max)
    params = make_params(dtypes)
    opt = kind(params, **config)
    for step in range(steps):
        skip = skip_at.get(step, ()) if skip_at else ()
        for p, g in zip(params, grads_for(step, params, skip)):
            p.grad = g
        opt.step()
    if pack_max:  # the packed path ran (and did not fall back to one parameter at a time)
        assert any(len(plan.pack) > 1 for plan in opt._plans.values())
    return params, opt


def assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x.data, y.data)
        assert x.data.dtype == y.data.dtype
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for key in sa[k]:
            np.testing.assert_array_equal(sa[k][key], sb[k][key])


@pytest.mark.parametrize("kind, config", CONFIGS)
def test_packed_update_is_bitwise_the_per_parameter_update(monkeypatch, kind, config):
    params, opt = packed = train(monkeypatch, 100, config, kind=kind)
    assert_same(packed, train(monkeypatch, 0, config, kind=kind))
    small = [p for p in params if p.data.size <= 100]
    for key, value in opt.state[small[0]].items():  # the packed update ran: each state array is a view of one
        if isinstance(value, np.ndarray):
            assert value.base is not None and all(opt.state[p][key].base is value.base for p in small), key


@pytest.mark.parametrize("kind, config", [CONFIGS[1], CONFIGS[7], CONFIGS[10], CONFIGS[12], CONFIGS[15]])
def test_packed_update_with_skipped_gradients_mixed_dtypes_and_a_large_parameter(monkeypatch, kind, config):
    # a parameter without a gradient in a step is left alone (its state too: Adam's packed parameters are then
    # at different steps, which the packed update leaves to one parameter at a time); float64 parameters go
    # in their own update (the pack takes the first small one's dtype); the (40, 3) one is over PACK_MAX
    skips = {1: (0, 3), 2: (1,), 4: (0, 1, 2, 3, 5)}
    for dtypes in ((np.float32,), (np.float32, np.float64)):
        packed = train(monkeypatch, 100, config, steps=6, dtypes=dtypes, skip_at=skips, kind=kind)
        assert_same(packed, train(monkeypatch, 0, config, steps=6, dtypes=dtypes, skip_at=skips, kind=kind))


def test_momentum_buffers_are_views_of_one_flat_buffer_and_a_loaded_state_continues_alike(monkeypatch):
    config = dict(lr=0.05, momentum=0.9, nesterov=True)
    params, opt = train(monkeypatch, 100, config, steps=3)
    small = [p for p in params if p.data.size <= 100]
    bases = {id(opt.state[p]["momentum_buffer"].base) for p in small}
    assert len(bases) == 1 and None not in {opt.state[p]["momentum_buffer"].base is not None for p in small}
    saved = opt.state_dict()
    assert all(v["momentum_buffer"].base is None for v in saved["state"].values())  # copies, not views
    # a fresh optimizer loaded from the state goes on with the same bits as the uninterrupted one
    params2 = [dt.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt2 = optim.SGD(params2, **config)
    opt2.load_state_dict(saved)
    for step in range(3, 6):
        for ps in (params, params2):
            for p, g in zip(ps, grads_for(step, ps)):
                p.grad = g
        opt.step()
        opt2.step()
    assert_same((params, opt), (params2, opt2))
    # and both are what one parameter at a time gives
    assert_same((params, opt), train(monkeypatch, 0, config, steps=6))


def continue_both(monkeypatch, kind, config, steps: int, change, more=(2, 3)):
    """(packed run, one-parameter run): ``steps`` steps, then ``change(params, opt)``, then the steps ``more``."""
    runs = []
    for pack_max in (100, 0):
        params, opt = train(monkeypatch, pack_max, config, steps=steps, kind=kind)
        change(params, opt)
        for step in more:
            for p, g in zip(params, grads_for(step, params)):
                p.grad = g
            opt.step()
        runs.append((params, opt))
    return runs


def errors_of_both(monkeypatch, kind, config, steps: int, spoil, exc) -> list[str]:
    """The messages of ``exc`` that the next step raises in both paths after ``spoil(params, opt)``."""
    errors = []
    for pack_max in (100, 0):
        params, opt = train(monkeypatch, pack_max, config, steps=steps, kind=kind)
        for p, g in zip(params, grads_for(steps, params)):
            p.grad = g
        spoil(params, opt)
        with pytest.raises(exc) as info:
            opt.step()
        errors.append(str(info.value))
    return errors


def test_a_replaced_parameter_array_and_a_misshapen_gradient(monkeypatch):
    config = dict(lr=0.05, momentum=0.9)

    def replace(params, opt):
        params[0].data = params[0].data * 2  # a new array: the pack is planned again
    assert_same(*continue_both(monkeypatch, optim.SGD, config, 2, replace))

    def misshapen(params, opt):
        params[0].grad = np.ones((4, 3), np.float32)  # (4, 3) for a (3, 4) parameter
    errors = errors_of_both(monkeypatch, optim.SGD, config, 2, misshapen, ValueError)
    assert errors[0] == errors[1]


def test_adam_amsgrad_switched_on_later_and_a_state_missing_a_moment(monkeypatch):
    def amsgrad_on(params, opt):
        opt.param_groups[0]["amsgrad"] = True  # the maximum starts at zeros then, in both paths
    assert_same(*continue_both(monkeypatch, optim.Adam, dict(lr=0.01), 2, amsgrad_on))

    def momentum_and_centering_on(params, opt):  # RMSprop's buffers start at zeros then, in both paths
        opt.param_groups[0].update(momentum=0.9, centered=True)
    assert_same(*continue_both(monkeypatch, optim.RMSprop, dict(lr=0.01), 2, momentum_and_centering_on))

    def drop_a_moment(params, opt):
        for p in params:
            del opt.state[p]["exp_avg_sq"]
    errors = errors_of_both(monkeypatch, optim.Adam, dict(lr=0.01), 1, drop_a_moment, KeyError)
    assert errors[0] == errors[1] == "'exp_avg_sq'"


@pytest.mark.parametrize("kind, config", [CONFIGS[0], CONFIGS[1], CONFIGS[6]])
def test_a_gradient_of_another_dtype_is_left_to_the_one_parameter_rule(monkeypatch, kind, config):
    # a float16 or float64 gradient for a float32 parameter, after the pack was planned: the one-parameter rule
    # computes with it as it is (a float16 gradient times lr in float16), which concatenating it with the others
    # into float32 would not
    runs = []
    for pack_max in (100, 0):
        params, opt = train(monkeypatch, pack_max, config, steps=2, kind=kind)
        for step in (2, 3):
            for p, g in zip(params, grads_for(step, params)):
                p.grad = g
            params[1].grad = params[1].grad.astype(np.float16 if step == 2 else np.float64) / 3
            opt.step()
        runs.append((params, opt))
    assert_same(*runs)
