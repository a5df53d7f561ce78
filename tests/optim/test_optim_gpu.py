"""Optimizers and clipping on CuPy arrays agree with NumPy; state moves between devices on load.

Skipped where CuPy or a CUDA device is missing (CI never has one).
"""

import numpy as np
import pytest

import dtrain as dt
from dtrain.optim import SGD, Adagrad, Adam, AdamW, RMSprop, clip_grad_norm_, clip_grad_value_

pytestmark = pytest.mark.skipif(not dt.backend.cupy_available(), reason="needs CuPy and a CUDA GPU")

CASES = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, l1=0.01)),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.5, maximize=True)),
    (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1, l1=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, momentum=0.9, centered=True, l1=0.01)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1)),
]


def _run(cls, kwargs, device, steps=5):
    rng = np.random.default_rng(0)
    params = [dt.tensor(rng.standard_normal(s), dtype="float32", device=device, requires_grad=True)
              for s in [(64, 32), (32,)]]
    opt = cls(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = dt.get_array_module(p.data).asarray(rng.standard_normal(p.shape).astype(np.float32))
        opt.step()
    return params, opt


@pytest.mark.parametrize(("cls", "kwargs"), CASES, ids=[c[0].__name__ for c in CASES])
def test_gpu_matches_cpu(cls, kwargs):
    cpu, _ = _run(cls, kwargs, "cpu")
    gpu, opt = _run(cls, kwargs, "cuda")
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda"
        np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=1e-5, atol=1e-6)
    state = opt.state_dict()["state"][0]
    assert all(type(v).__module__.startswith("cupy") for v in state.values() if hasattr(v, "shape"))


def test_state_moves_between_devices_on_load():
    _, gpu_opt = _run(Adam, dict(lr=0.01), "cuda")
    params = [dt.tensor(np.zeros(s, np.float32), requires_grad=True) for s in [(64, 32), (32,)]]
    cpu_opt = Adam(params, lr=0.01)
    cpu_opt.load_state_dict(gpu_opt.state_dict())
    assert isinstance(cpu_opt.state[params[0]]["exp_avg"], np.ndarray)
    gpu_params = [dt.tensor(np.zeros(s, np.float32), device="cuda", requires_grad=True) for s in [(64, 32), (32,)]]
    back = Adam(gpu_params, lr=0.01)
    back.load_state_dict(cpu_opt.state_dict())
    assert type(back.state[gpu_params[0]]["exp_avg"]).__module__.startswith("cupy")


def test_clip_on_gpu():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) * 10 for s in [(64, 32), (32,)]]
    for norm_type in (2.0, 1.0, float("inf")):
        ps = {}
        for device in ("cpu", "cuda"):
            ps[device] = [dt.tensor(np.zeros(g.shape, np.float32), device=device, requires_grad=True) for g in grads]
            for p, g in zip(ps[device], grads):
                p.grad = dt.get_array_module(p.data).asarray(g)
        totals = [clip_grad_norm_(ps[d], 1.0, norm_type=norm_type) for d in ("cpu", "cuda")]
        assert totals[1] == pytest.approx(totals[0], rel=1e-5)
        for c, g in zip(ps["cpu"], ps["cuda"]):
            np.testing.assert_allclose(g.grad.get(), c.grad, rtol=1e-5, atol=1e-7)
    clip_grad_value_(ps["cuda"], 0.01)
    assert float(abs(ps["cuda"][0].grad).max()) <= 0.01
