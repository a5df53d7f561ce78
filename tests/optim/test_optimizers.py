"""Optimizers: update rules vs hand-written NumPy references and torch.optim, param groups,
state_dict round trips (in memory and through npz + JSON), and argument validation."""

import json
import re

import numpy as np
import pytest

import dtrain as dt
from dtrain import optim
from dtrain.optim import SGD, Adagrad, Adam, AdamW, RMSprop

SHAPES = [(3, 4), (5,)]
N_STEPS = 10


# ----------------------------------------------------------------------------------------------
# Independent NumPy references, written straight from the published formulas (float64)
# ----------------------------------------------------------------------------------------------


def _reg(p, g, wd, l1, maximize):
    g = -g if maximize else g
    return g + wd * p + l1 * np.sign(p)


def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, l1=0.0, maximize=False):
    buf, out = None, []
    for g in grads:
        d = _reg(p, g, weight_decay, l1, maximize)
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
        out.append(p)
    return out


def ref_adam(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, l1=0.0,
             maximize=False, decoupled=False):
    b1, b2 = betas
    m = v = vmax = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        d = _reg(p, g, 0.0 if decoupled else weight_decay, l1, maximize)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - b2**t)
        m_hat = m / (1 - b1**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return out


def ref_adamw(p, grads, weight_decay=1e-2, **kw):
    return ref_adam(p, grads, weight_decay=weight_decay, decoupled=True, **kw)


def ref_rmsprop(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, l1=0.0,
                maximize=False):
    v = a = buf = np.zeros_like(p)
    out = []
    for g in grads:
        d = _reg(p, g, weight_decay, l1, maximize)
        v = alpha * v + (1 - alpha) * d * d
        if centered:
            a = alpha * a + (1 - alpha) * d
            denom = np.sqrt(v - a * a) + eps
        else:
            denom = np.sqrt(v) + eps
        if momentum > 0:
            buf = momentum * buf + d / denom
            p = p - lr * buf
        else:
            p = p - lr * d / denom
        out.append(p)
    return out


def ref_adagrad(p, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, l1=0.0,
                maximize=False):
    s = np.full_like(p, initial_accumulator_value)
    out = []
    for t, g in enumerate(grads, start=1):
        d = _reg(p, g, weight_decay, l1, maximize)
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + d * d
        p = p - clr * d / (np.sqrt(s) + eps)
        out.append(p)
    return out


# (dtrain class, reference, torch class name, constructor kwargs)
CASES = [
    (SGD, ref_sgd, "SGD", dict(lr=0.1)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, momentum=0.9)),
    (SGD, ref_sgd, "SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, weight_decay=0.1)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, l1=0.05)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, maximize=True)),
    (SGD, ref_sgd, "SGD", dict(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.2, l1=0.03, maximize=True)),
    (Adam, ref_adam, "Adam", dict(lr=0.1)),
    (Adam, ref_adam, "Adam", dict(lr=0.1, amsgrad=True)),
    (Adam, ref_adam, "Adam", dict(lr=0.05, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
    (Adam, ref_adam, "Adam", dict(lr=0.1, l1=0.05)),
    (Adam, ref_adam, "Adam", dict(lr=0.1, maximize=True, amsgrad=True, weight_decay=0.05, l1=0.02)),
    (AdamW, ref_adamw, "AdamW", dict(lr=0.1)),
    (AdamW, ref_adamw, "AdamW", dict(lr=0.1, weight_decay=0.3, amsgrad=True)),
    (AdamW, ref_adamw, "AdamW", dict(lr=0.1, weight_decay=0.1, l1=0.05, maximize=True)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01, centered=True)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01, momentum=0.9)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01, momentum=0.5, centered=True, alpha=0.9, eps=1e-4)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01, weight_decay=0.1, l1=0.05)),
    (RMSprop, ref_rmsprop, "RMSprop", dict(lr=0.01, maximize=True, centered=True)),
    (Adagrad, ref_adagrad, "Adagrad", dict(lr=0.1)),
    (Adagrad, ref_adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.05)),
    (Adagrad, ref_adagrad, "Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    (Adagrad, ref_adagrad, "Adagrad", dict(lr=0.1, weight_decay=0.1, l1=0.05)),
    (Adagrad, ref_adagrad, "Adagrad", dict(lr=0.1, maximize=True, lr_decay=0.1, weight_decay=0.05)),
]
CASE_IDS = [f"{c[0].__name__}-" + "-".join(f"{k}={v}" for k, v in c[3].items()) for c in CASES]


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def _grads(n=N_STEPS, seed=1):
    """grads[step][param]: fixed synthetic gradients (one entry exactly zero, to exercise sign(0))."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gs = [rng.standard_normal(s) for s in SHAPES]
        gs[1][0] = 0.0
        out.append(gs)
    return out


def _params(arrays, dtype=np.float64):
    return [dt.tensor(a, requires_grad=True, dtype=dtype) for a in arrays]


def _run(opt, params, grads):
    """Step ``opt`` once per entry of ``grads``; returns the parameter values after each step."""
    history = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.astype(p.dtype)
        opt.step()
        history.append([p.data.copy() for p in params])
    return history


# ----------------------------------------------------------------------------------------------
# Update rules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "ref", "torch_name", "kwargs"), CASES, ids=CASE_IDS)
def test_matches_numpy_reference(cls, ref, torch_name, kwargs):
    p0, grads = _initial(), _grads()
    params = _params(p0)
    history = _run(cls(params, **kwargs), params, grads)
    for i in range(len(SHAPES)):
        expected = ref(p0[i], [gs[i] for gs in grads], **kwargs)
        for step in range(N_STEPS):
            np.testing.assert_allclose(history[step][i], expected[step], rtol=1e-12, atol=1e-12,
                                       err_msg=f"param {i}, step {step + 1}")


def _torch_run(torch, torch_name, p0, grads, groups_kwargs, l1s, maximizes):
    """Run torch.optim.<torch_name>; l1 (no torch equivalent) is added to the gradient by hand."""
    tparams = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in p0]
    if len(groups_kwargs) == 1:
        # Constructor arguments, not a group dict: torch's Adagrad reads initial_accumulator_value
        # from its constructor only.
        topt = getattr(torch.optim, torch_name)(tparams, foreach=False, **groups_kwargs[0][1])
    else:
        groups = [{"params": [tparams[i] for i in idx], **kw} for idx, kw in groups_kwargs]
        topt = getattr(torch.optim, torch_name)(groups, foreach=False)
    history = []
    for gs in grads:
        for i, (tp, g) in enumerate(zip(tparams, gs)):
            sign = -1.0 if maximizes[i] else 1.0  # torch negates the grad first when maximizing
            tp.grad = torch.tensor(g + sign * l1s[i] * np.sign(tp.detach().numpy()), dtype=torch.float64)
        topt.step()
        history.append([tp.detach().numpy().copy() for tp in tparams])
    return history


@pytest.mark.parametrize(("cls", "ref", "torch_name", "kwargs"), CASES, ids=CASE_IDS)
def test_matches_torch(cls, ref, torch_name, kwargs):
    torch = pytest.importorskip("torch")
    p0, grads = _initial(), _grads()
    params = _params(p0)
    ours = _run(cls(params, **kwargs), params, grads)
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "l1"}
    n = len(SHAPES)
    theirs = _torch_run(torch, torch_name, p0, grads, [(range(n), torch_kwargs)], [kwargs.get("l1", 0.0)] * n,
                        [kwargs.get("maximize", False)] * n)
    for step in range(N_STEPS):
        for i in range(n):
            np.testing.assert_allclose(ours[step][i], theirs[step][i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("cls", "torch_name", "group_kwargs"), [
    (SGD, "SGD", [dict(lr=0.1, momentum=0.9), dict(lr=0.01, momentum=0.5, nesterov=True, weight_decay=0.1)]),
    (Adam, "Adam", [dict(lr=0.1), dict(lr=0.02, betas=(0.5, 0.6), amsgrad=True, weight_decay=0.01)]),
    (AdamW, "AdamW", [dict(lr=0.1, weight_decay=0.0), dict(lr=0.02, weight_decay=0.5)]),
    (RMSprop, "RMSprop", [dict(lr=0.01, centered=True), dict(lr=0.03, momentum=0.7, alpha=0.5)]),
    # (torch ignores a per-group initial_accumulator_value; dtrain honours it, checked vs NumPy below)
    (Adagrad, "Adagrad", [dict(lr=0.1, lr_decay=0.1), dict(lr=0.3, eps=1e-3, weight_decay=0.1)]),
])
def test_param_groups_with_different_hyperparameters(cls, torch_name, group_kwargs):
    p0, grads = _initial(), _grads()
    params = _params(p0)
    # lr is required by SGD's constructor (as docs/architecture.md spells it); both groups override it.
    opt = cls([{"params": [params[0]], **group_kwargs[0]}, {"params": [params[1]], **group_kwargs[1]}], lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [kw["lr"] for kw in group_kwargs]
    ours = _run(opt, params, grads)
    ref = {SGD: ref_sgd, Adam: ref_adam, AdamW: ref_adamw, RMSprop: ref_rmsprop, Adagrad: ref_adagrad}[cls]
    for i in range(2):
        expected = ref(p0[i], [gs[i] for gs in grads], **group_kwargs[i])
        np.testing.assert_allclose(ours[-1][i], expected[-1], rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    theirs = _torch_run(torch, torch_name, p0, grads, [([0], group_kwargs[0]), ([1], group_kwargs[1])], [0, 0],
                        [False, False])
    for i in range(2):
        np.testing.assert_allclose(ours[-1][i], theirs[-1][i], rtol=1e-12, atol=1e-12)


def test_adagrad_honours_a_per_group_initial_accumulator_value():
    p0, grads = _initial(), _grads()
    params = _params(p0)
    opt = Adagrad([{"params": [params[0]]}, {"params": [params[1]], "initial_accumulator_value": 2.0}], lr=0.1)
    ours = _run(opt, params, grads)
    expected = ref_adagrad(p0[1], [gs[1] for gs in grads], lr=0.1, initial_accumulator_value=2.0)
    np.testing.assert_allclose(ours[-1][1], expected[-1], rtol=1e-12, atol=1e-12)


def test_group_defaults_fill_missing_hyperparameters():
    a, b = _params(_initial())
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["momentum"] == 0.9
    assert opt.param_groups[0]["params"][0] is a


def test_add_param_group_later():
    a, b = _params(_initial())
    opt = Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.2})  # a single Tensor is accepted inside a group
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"] == [b]
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)


def test_float32_parameters_stay_float32():
    p0, grads = _initial(), _grads()
    params = _params(p0, dtype=np.float32)
    opt = Adam(params, lr=0.1, amsgrad=True, weight_decay=0.1, l1=0.01)
    history = _run(opt, params, grads)
    assert all(p.dtype == np.float32 for p in params)
    assert all(v.dtype == np.float32 for v in history[-1])
    assert all(v.dtype == np.float32 for v in opt.state[params[0]].values() if isinstance(v, np.ndarray))
    expected = ref_adam(p0[0], [gs[0] for gs in grads], lr=0.1, amsgrad=True, weight_decay=0.1, l1=0.01)
    np.testing.assert_allclose(history[-1][0], expected[-1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Step mechanics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), [(c[0], c[3]) for c in CASES if c[3].get("l1") or c[3].get("maximize")
                                             or c[3].get("weight_decay")])
def test_updates_in_place_and_leaves_grad_untouched(cls, kwargs):
    params = _params(_initial())
    opt = cls(params, **kwargs)
    data_ids = [id(p.data) for p in params]
    grads = _grads(3)
    for p, g in zip(params, grads[0]):
        p.grad = g.copy()
    opt.step()
    state_ids = {k: id(v) for k, v in opt.state[params[0]].items() if isinstance(v, np.ndarray)}
    for p, g in zip(params, grads[1]):
        p.grad = g.copy()
    opt.step()
    assert [id(p.data) for p in params] == data_ids
    assert {k: id(v) for k, v in opt.state[params[0]].items() if isinstance(v, np.ndarray)} == state_ids
    for p, g in zip(params, grads[1]):
        np.testing.assert_array_equal(p.grad, g)


def test_params_without_grad_are_skipped():
    a, b = _params(_initial())
    before = b.data.copy()
    opt = Adam([a, b], lr=0.1)
    a.grad = np.ones_like(a.data)
    opt.step()
    np.testing.assert_array_equal(b.data, before)
    assert b not in opt.state and opt.state[a]["step"] == 1
    assert list(opt.state_dict()["state"]) == [0]


def test_closure_runs_with_grad_enabled_and_returns_loss():
    (a,) = _params(_initial()[:1])
    opt = SGD([a], lr=0.1)
    seen = []

    def closure():
        seen.append(dt.is_grad_enabled())
        opt.zero_grad()
        loss = (a * a).sum()
        loss.backward()
        return loss

    before = a.data.copy()
    with dt.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert float(loss.item()) == pytest.approx(float((before * before).sum()))
    np.testing.assert_allclose(a.data, before - 0.1 * 2 * before, rtol=1e-12)
    assert opt.step() is None


def test_zero_grad():
    a, b = _params(_initial())
    opt = SGD([a, b], lr=0.1)
    a.grad = np.ones_like(a.data)
    grad_array = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is grad_array and not a.grad.any() and b.grad is None
    opt.zero_grad()
    assert a.grad is None


def test_first_momentum_step_has_no_dampening():
    (a,) = _params([np.array([1.0, 2.0])])
    opt = SGD([a], lr=1.0, momentum=0.9, dampening=0.5)
    a.grad = np.array([1.0, -1.0])
    opt.step()
    np.testing.assert_array_equal(opt.state[a]["momentum_buffer"], [1.0, -1.0])
    np.testing.assert_array_equal(a.data, [0.0, 3.0])


def test_repr_lists_groups():
    (a,) = _params(_initial()[:1])
    text = repr(SGD([a], lr=0.1))
    assert text.startswith("SGD (") and "Parameter Group 0" in text and "lr: 0.1" in text


# ----------------------------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (Adam, dict(lr=0.1, amsgrad=True, l1=0.01)),
    (AdamW, dict(lr=0.1, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
]


def through_npz_and_json(sd, tmp_path):
    """Write a state_dict as a checkpoint would (arrays -> npz, the rest -> JSON), read it back."""
    arrays = {}

    def split(obj, path):
        if isinstance(obj, np.ndarray):
            key = ".".join(path)
            arrays[key] = obj
            return {"__array__": key}
        if isinstance(obj, dict):
            return {str(k): split(v, [*path, str(k)]) for k, v in obj.items()}
        if isinstance(obj, list):
            return [split(v, [*path, str(i)]) for i, v in enumerate(obj)]
        assert obj is None or type(obj) in (int, float, str, bool), f"{'.'.join(path)} is a {type(obj).__name__}"
        return obj

    meta = split(sd, ["sd"])
    np.savez(tmp_path / "opt.npz", **arrays)
    (tmp_path / "opt.json").write_text(json.dumps(meta))
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}

    def join(obj):
        if isinstance(obj, dict):
            return loaded[obj["__array__"]] if "__array__" in obj else {k: join(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [join(v) for v in obj]
        return obj

    return join(json.loads((tmp_path / "opt.json").read_text()))


@pytest.mark.parametrize("via_files", [False, True], ids=["memory", "npz+json"])
@pytest.mark.parametrize(("cls", "kwargs"), ROUND_TRIP_CASES, ids=[c[0].__name__ for c in ROUND_TRIP_CASES])
def test_state_dict_round_trip_is_bit_identical(cls, kwargs, via_files, tmp_path):
    p0, grads = _initial(), _grads(6)
    params = _params(p0)
    straight = _run(cls([{"params": params[:1]}, {"params": params[1:], "lr": kwargs["lr"] / 2}], **kwargs),
                    params, grads)

    params = _params(p0)
    opt = cls([{"params": params[:1]}, {"params": params[1:], "lr": kwargs["lr"] / 2}], **kwargs)
    _run(opt, params, grads[:3])
    sd = opt.state_dict()
    if via_files:
        sd = through_npz_and_json(sd, tmp_path)
    resumed_params = _params([p.data for p in params])
    # A different lr: load_state_dict must restore the saved hyperparameters.
    fresh = cls([{"params": resumed_params[:1]}, {"params": resumed_params[1:]}], **{**kwargs, "lr": 0.5})
    fresh.load_state_dict(sd)
    assert [g["lr"] for g in fresh.param_groups] == [kwargs["lr"], kwargs["lr"] / 2]
    resumed = _run(fresh, resumed_params, grads[3:])
    for i in range(len(SHAPES)):
        np.testing.assert_array_equal(resumed[-1][i], straight[-1][i])


def test_state_dict_format():
    a, b = _params(_initial())
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = np.ones_like(a.data), np.ones_like(b.data)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][1]["params"] == [1]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == [0.9, 0.999]
    assert set(sd["state"]) == {0, 1}
    assert sd["state"][1]["step"] == 1 and type(sd["state"][1]["step"]) is int
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    # Copies: changing the returned arrays does not change the optimizer.
    sd["state"][0]["exp_avg"][...] = 123.0
    assert not (opt.state[a]["exp_avg"] == 123.0).any()
    json.dumps(sd["param_groups"])


def test_load_state_dict_copies_and_casts_to_the_parameter_dtype():
    (a,) = _params(_initial()[:1])
    opt = RMSprop([a], lr=0.01, momentum=0.9)
    a.grad = np.ones_like(a.data)
    opt.step()
    sd = opt.state_dict()
    (b,) = _params(_initial()[:1], dtype=np.float32)
    fresh = RMSprop([b], lr=0.01, momentum=0.9)
    fresh.load_state_dict(sd)
    assert fresh.state[b]["square_avg"].dtype == np.float32
    assert fresh.state[b]["square_avg"] is not sd["state"][0]["square_avg"]
    assert fresh.state[b]["step"] == 1


def test_load_state_dict_accepts_string_keys_and_array_step():
    (a,) = _params(_initial()[:1])
    opt = Adagrad([a], lr=0.1)
    a.grad = np.ones_like(a.data)
    opt.step()
    sd = opt.state_dict()
    sd["state"] = {"0": {**sd["state"][0], "step": np.array(1)}}
    (b,) = _params(_initial()[:1])
    fresh = Adagrad([b], lr=0.1)
    fresh.load_state_dict(sd)
    assert fresh.state[b]["step"] == 1 and type(fresh.state[b]["step"]) is int


def _stepped_adam():
    a, b = _params(_initial())
    opt = Adam([a, b], lr=0.1)
    a.grad, b.grad = np.ones_like(a.data), np.ones_like(b.data)
    opt.step()
    return opt


def test_load_state_dict_errors():
    sd = _stepped_adam().state_dict()
    a, b = _params(_initial())

    with pytest.raises(ValueError, match=r"has 2 param group\(s\), but the optimizer has 1"):
        Adam([{"params": [a, b]}], lr=0.1).load_state_dict({**sd, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(ValueError, match=r"loaded param group 0 has 2 parameter\(s\), but the optimizer's group 0 "):
        Adam([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['state'\]"):
        Adam([a, b], lr=0.1).load_state_dict({"param_groups": sd["param_groups"]})

    groups = sd["param_groups"]
    bad = {"state": {**sd["state"], 1: {**sd["state"][1], "exp_avg": np.zeros((2, 2))}}, "param_groups": groups}
    with pytest.raises(ValueError, match=r"state of parameter 1 \(param group 0, params\[1\]\): 'exp_avg' has shape "
                                         r"\(2, 2\), expected \(5,\)"):
        Adam([a, b], lr=0.1).load_state_dict(bad)

    bad = {"state": {0: {k: v for k, v in sd["state"][0].items() if k != "exp_avg_sq"}}, "param_groups": groups}
    with pytest.raises(ValueError, match=r"state of parameter 0 .* is missing key\(s\) \['exp_avg_sq'\]"):
        Adam([a, b], lr=0.1).load_state_dict(bad)

    groups = [{k: v for k, v in g.items() if k != "eps"} for g in sd["param_groups"]]
    with pytest.raises(ValueError, match=r"loaded param group 0 is missing hyperparameter\(s\) \['eps'\]"):
        Adam([a, b], lr=0.1).load_state_dict({"state": sd["state"], "param_groups": groups})

    with pytest.raises(ValueError, match="refers to parameter index 7, but the optimizer has 2"):
        Adam([a, b], lr=0.1).load_state_dict({**sd, "state": {7: sd["state"][0]}})

    groups = [{**sd["param_groups"][0], "lr": -1.0}]
    with pytest.raises(ValueError, match=r"loaded param group 0: lr must be a finite number >= 0, got -1\.0"):
        Adam([a, b], lr=0.1).load_state_dict({"state": sd["state"], "param_groups": groups})

    # amsgrad saved as True needs max_exp_avg_sq in every stepped parameter's state.
    groups = [{**sd["param_groups"][0], "amsgrad": True}]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['max_exp_avg_sq'\]"):
        Adam([a, b], lr=0.1).load_state_dict({"state": sd["state"], "param_groups": groups})


def test_load_accepts_a_zero_lr_reached_by_a_schedule():
    # Cosine annealing to eta_min=0 (or warmup from 0) can leave lr == 0 in a checkpoint.
    opt = _stepped_adam()
    opt.param_groups[0]["lr"] = 0.0
    a, b = _params(_initial())
    fresh = Adam([a, b], lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["lr"] == 0.0


def test_failed_load_leaves_the_optimizer_unchanged():
    opt = _stepped_adam()
    before = opt.state_dict()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.7
    sd["state"][1]["exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match="has shape"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == before["param_groups"][0]["lr"]
    np.testing.assert_array_equal(opt.state_dict()["state"][1]["exp_avg"], before["state"][1]["exp_avg"])


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (SGD, dict(lr=-0.1), "lr must be a positive finite number, got -0.1"),
    (SGD, dict(lr=0.0), "lr must be a positive finite number, got 0.0"),
    (SGD, dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
    (SGD, dict(lr=float("inf")), "lr must be a positive finite number, got inf"),
    (SGD, dict(lr="0.1"), "lr must be a positive finite number, got '0.1'"),
    (SGD, dict(lr=True), "lr must be a positive finite number, got True"),
    (SGD, dict(lr=0.1, momentum=-0.5), "momentum must be a finite number >= 0, got -0.5"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=1.5), r"dampening must be a number in \[0, 1\], got 1.5"),
    (SGD, dict(lr=0.1, nesterov=True), "nesterov=True requires momentum > 0 and dampening == 0, got momentum=0.0"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "requires momentum > 0 and dampening == 0"),
    (SGD, dict(lr=0.1, weight_decay=-1), "weight_decay must be a finite number >= 0, got -1"),
    (SGD, dict(lr=0.1, l1=-0.01), "l1 must be a finite number >= 0, got -0.01"),
    (SGD, dict(lr=0.1, maximize="yes"), "maximize must be True or False, got 'yes'"),
    (Adam, dict(betas=(0.9, 1.0)), r"betas\[1\] must be a number in \[0, 1\), got 1.0"),
    (Adam, dict(betas=(-0.1, 0.9)), r"betas\[0\] must be a number in \[0, 1\), got -0.1"),
    (Adam, dict(betas=(0.9,)), r"betas must be a pair \(beta1, beta2\) of numbers in \[0, 1\), got \(0.9,\)"),
    (Adam, dict(eps=-1e-8), "eps must be a finite number >= 0, got -1e-08"),
    (Adam, dict(amsgrad=1), "amsgrad must be True or False, got 1"),
    (AdamW, dict(weight_decay=-0.01), "weight_decay must be a finite number >= 0, got -0.01"),
    (RMSprop, dict(alpha=1.0), r"alpha must be a number in \[0, 1\), got 1.0"),
    (RMSprop, dict(momentum=-1.0), "momentum must be a finite number >= 0, got -1.0"),
    (RMSprop, dict(centered=None), "centered must be True or False, got None"),
    (Adagrad, dict(lr_decay=-0.1), "lr_decay must be a finite number >= 0, got -0.1"),
    (Adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value must be a finite number >= 0"),
    (Adagrad, dict(eps=float("inf")), "eps must be a finite number >= 0, got inf"),
])
def test_invalid_hyperparameters(cls, kwargs, message):
    (a,) = _params(_initial()[:1])
    with pytest.raises(ValueError, match=message):
        cls([a], **kwargs)


def test_invalid_group_override_names_the_group():
    a, b = _params(_initial())
    with pytest.raises(ValueError, match="param group 1: lr must be a positive finite number, got -1"):
        SGD([{"params": [a]}, {"params": [b], "lr": -1}], lr=0.1)
    with pytest.raises(ValueError, match="param group 0: nesterov=True requires momentum > 0"):
        SGD([{"params": [a], "momentum": 0.0}], lr=0.1, momentum=0.9, nesterov=True)


def test_invalid_params():
    a, b = _params(_initial())
    frozen = dt.tensor(np.ones(3))
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] is a ndarray, expected a dtrain Tensor"):
        SGD([a, np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] is a tuple, .*not named_parameters"):
        SGD([("w", a)], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] does not require grad"):
        SGD([a, frozen], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\] is not a leaf tensor"):
        SGD([a * 2], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[2\] is the same tensor as params\[0\]"):
        SGD([a, b, a], lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: params\[0\] is already in param group 0"):
        SGD([{"params": [a, b]}, {"params": [b]}], lr=0.1)
    with pytest.raises(TypeError, match="got a single Tensor"):
        SGD(a, lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        SGD({a, b}, lr=0.1)
    with pytest.raises(TypeError, match="not a mix of both"):
        SGD([a, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match="param group 0 has no 'params' key"):
        SGD([{"lr": 0.1}], lr=0.1)
    opt = SGD([a], lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: params\[0\] is already in param group 0"):
        opt.add_param_group({"params": [a]})
    assert len(opt.param_groups) == 1


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_create_by_name():
    (a,) = _params(_initial()[:1])
    assert set(optim.OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    opt = optim.create("AdamW", [a], lr=0.01, weight_decay=0.5)
    assert type(opt) is AdamW and opt.param_groups[0]["weight_decay"] == 0.5
    assert type(optim.create("sgd", [a], lr=0.1, momentum=0.9)) is SGD
    message = "unknown optimizer 'foo'; expected one of: adagrad, adam, adamw, rmsprop, sgd"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        optim.create("foo", [a], lr=0.1)


def test_public_names():
    for name in ("Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler", "clip_grad_norm_",
                 "clip_grad_value_", "create", "OPTIMIZERS"):
        assert hasattr(optim, name), name
    assert issubclass(AdamW, optim.Optimizer)
