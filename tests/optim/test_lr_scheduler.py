"""Learning-rate schedulers: values vs torch.optim.lr_scheduler and closed forms, state_dict round
trips through JSON, argument validation."""

import json
import math
import re

import numpy as np
import pytest

import dtrain as dt
from dtrain.optim import SGD, Adam, lr_scheduler
from dtrain.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearWarmup,
    MultiStepLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

BASE_LRS = (0.1, 0.05)
N_STEPS = 40


def _optimizer(lrs=BASE_LRS):
    groups = [{"params": [dt.tensor(np.zeros(2), requires_grad=True)], "lr": lr} for lr in lrs]
    return SGD(groups, lr=1.0, momentum=0.9)


def _torch_optimizer(torch, lrs=BASE_LRS):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _trajectory(opt, sched, n=N_STEPS):
    """Learning rates at construction and after each of n (optimizer step, scheduler step) pairs."""
    out = [_lrs(opt)]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(_lrs(opt))
    return out


def _assert_close(ours, theirs):
    # 1e-12 relative; the absolute floor only matters where the cosine reaches exactly 0.
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-12, atol=1e-17)


# Each case builds the same schedule for dtrain (ours) and torch (theirs) on a given optimizer.
TORCH_CASES = {
    "StepLR": (lambda o: StepLR(o, step_size=3, gamma=0.5),
               lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "MultiStepLR": (lambda o: MultiStepLR(o, milestones=[5, 12, 20], gamma=0.3),
                    lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[5, 12, 20], gamma=0.3)),
    "ExponentialLR": (lambda o: ExponentialLR(o, gamma=0.9),
                      lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    "CosineAnnealingLR": (lambda o: CosineAnnealingLR(o, T_max=25),
                          lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=25)),
    "CosineAnnealingLR-restart": (lambda o: CosineAnnealingLR(o, T_max=7, eta_min=0.001),
                                  lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.001)),
    "CosineAnnealingLR-zero": (lambda o: CosineAnnealingLR(o, T_max=10),
                               lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)),
    "LinearWarmup": (
        lambda o: LinearWarmup(o, warmup_steps=5, start_factor=0.25),
        lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=5),
    ),
    "LinearWarmup-cosine": (
        lambda o: LinearWarmup(o, 8, start_factor=0.1, after=CosineAnnealingLR(o, T_max=30, eta_min=1e-4)),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o,
            [t.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=8),
             t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30, eta_min=1e-4)],
            milestones=[8]),
    ),
    "LinearWarmup-step": (
        lambda o: LinearWarmup(o, 4, start_factor=0.5, after=StepLR(o, step_size=5, gamma=0.5)),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o,
            [t.optim.lr_scheduler.LinearLR(o, start_factor=0.5, end_factor=1.0, total_iters=4),
             t.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5)],
            milestones=[4]),
    ),
    "SequentialLR": (
        lambda o: SequentialLR(o, [ExponentialLR(o, gamma=0.9), StepLR(o, 3, 0.5), CosineAnnealingLR(o, 10)],
                               milestones=[6, 20]),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o,
            [t.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), t.optim.lr_scheduler.StepLR(o, 3, 0.5),
             t.optim.lr_scheduler.CosineAnnealingLR(o, 10)],
            milestones=[6, 20]),
    ),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    build_ours, build_theirs = TORCH_CASES[name]
    opt = _optimizer()
    ours = _trajectory(opt, build_ours(opt))
    topt = _torch_optimizer(torch)
    theirs = _trajectory(topt, build_theirs(torch, topt))
    _assert_close(ours, theirs)


CLOSED_FORMS = {
    "StepLR": (lambda o: StepLR(o, 4, gamma=0.5), lambda b, e: b * 0.5 ** (e // 4)),
    "MultiStepLR": (lambda o: MultiStepLR(o, [3, 10], gamma=0.1), lambda b, e: b * 0.1 ** ((e >= 3) + (e >= 10))),
    "ExponentialLR": (lambda o: ExponentialLR(o, 0.95), lambda b, e: b * 0.95**e),
    "CosineAnnealingLR": (lambda o: CosineAnnealingLR(o, 20, eta_min=0.01),
                          lambda b, e: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * e / 20)) / 2),
    "LinearWarmup": (lambda o: LinearWarmup(o, 10), lambda b, e: b * min(e, 10) / 10),
    "LinearWarmup-start": (lambda o: LinearWarmup(o, 10, start_factor=0.2),
                           lambda b, e: b * (0.2 + 0.8 * min(e, 10) / 10)),
    "LinearWarmup-cosine": (lambda o: LinearWarmup(o, 10, after=CosineAnnealingLR(o, T_max=30)),
                            lambda b, e: b * e / 10 if e < 10 else b * (1 + math.cos(math.pi * (e - 10) / 30)) / 2),
    "LinearWarmup-0": (lambda o: LinearWarmup(o, 0, after=ExponentialLR(o, 0.9)), lambda b, e: b * 0.9**e),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_closed_form(name):
    build, formula = CLOSED_FORMS[name]
    opt = _optimizer()
    sched = build(opt)
    ours = _trajectory(opt, sched)
    expected = [[formula(b, e) for b in BASE_LRS] for e in range(N_STEPS + 1)]
    _assert_close(ours, expected)
    assert sched.last_epoch == N_STEPS
    assert sched.get_last_lr() == ours[-1]
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASE_LRS)


def test_linear_warmup_keeps_the_after_scheduler_in_step():
    opt = _optimizer()
    after = CosineAnnealingLR(opt, T_max=20)
    warm = LinearWarmup(opt, 5, after=after)
    for _ in range(12):
        warm.step()
    assert after.last_epoch == 7 and after.get_last_lr() == warm.get_last_lr()
    assert warm.get_last_lr() == after.lr_at(7)


# ----------------------------------------------------------------------------------------------
# ReduceLROnPlateau
# ----------------------------------------------------------------------------------------------

METRICS = [10.0, 9.0, 9.0, 9.0, 9.0, 8.9995, 9.0, 9.5, 9.0, 5.0, 5.0, 5.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0,
           4.0, 4.0, 3.99999, 4.0, 4.0, 4.0, float("nan"), 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]

PLATEAU_CASES = [
    dict(mode="min", factor=0.5, patience=2),
    dict(mode="min", factor=0.5, patience=1, cooldown=2, min_lr=[0.02, 0.0]),
    dict(mode="min", factor=0.3, patience=0, threshold=0.1, threshold_mode="abs", min_lr=0.01),
    dict(mode="max", factor=0.5, patience=2, cooldown=1),
    dict(mode="max", factor=0.9, patience=1, threshold=0.01, threshold_mode="abs", eps=1e-3),
]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=[str(i) for i in range(len(PLATEAU_CASES))])
def test_reduce_on_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    # A falling loss is a rising score (kept positive: torch's relative threshold assumes it).
    def score(m):
        return 20.0 - m if kwargs["mode"] == "max" else m

    opt, topt = _optimizer(), _torch_optimizer(torch)
    ours, theirs = ReduceLROnPlateau(opt, **kwargs), torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    reductions = 0
    for m in METRICS:
        ours.step(score(m))
        theirs.step(score(m))
        _assert_close(_lrs(opt), _lrs(topt))
        assert ours.get_last_lr() == _lrs(opt)
        assert (ours.num_bad_epochs, ours.cooldown_counter) == (theirs.num_bad_epochs, theirs.cooldown_counter)
        reductions += _lrs(opt)[0] != BASE_LRS[0]
    assert reductions > 0


def test_reduce_on_plateau_accepts_tensors():
    opt = _optimizer()
    sched = ReduceLROnPlateau(opt, patience=0)
    sched.step(dt.tensor(1.0))
    sched.step(dt.tensor(2.0))
    assert _lrs(opt) == pytest.approx([0.01, 0.005])


def test_reduce_on_plateau_state_dict_round_trip():
    kwargs = dict(factor=0.5, patience=1, cooldown=2, min_lr=[0.02, 0.0])
    opt = _optimizer()
    sched = ReduceLROnPlateau(opt, **kwargs)
    straight = []
    for m in METRICS:
        sched.step(m)
        straight.append(_lrs(opt))

    opt = _optimizer()
    sched = ReduceLROnPlateau(opt, **kwargs)
    for m in METRICS[:11]:
        sched.step(m)
    saved_opt = opt.state_dict()
    saved = json.loads(json.dumps(sched.state_dict(), allow_nan=False))

    opt2 = _optimizer()
    sched2 = ReduceLROnPlateau(opt2, factor=0.1)  # hyperparameters come from the saved state
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    assert (sched2.factor, sched2.cooldown, sched2.min_lrs) == (0.5, 2, [0.02, 0.0])
    resumed = []
    for m in METRICS[11:]:
        sched2.step(m)
        resumed.append(_lrs(opt2))
    assert resumed == straight[11:]


def test_reduce_on_plateau_state_before_any_metric_is_strict_json():
    sched = ReduceLROnPlateau(_optimizer(), mode="max")
    sd = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    assert sd["best"] is None
    sched.load_state_dict(sd)
    assert sched.best == -math.inf


# ----------------------------------------------------------------------------------------------
# state_dict round trips
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_first", [True, False], ids=["optimizer-first", "scheduler-first"])
@pytest.mark.parametrize("name", list(CLOSED_FORMS) + ["SequentialLR"])
def test_state_dict_round_trip_is_exact(name, optimizer_first):
    build = TORCH_CASES["SequentialLR"][0] if name == "SequentialLR" else CLOSED_FORMS[name][0]
    opt = _optimizer()
    straight = _trajectory(opt, build(opt), n=30)

    opt = _optimizer()
    sched = build(opt)
    _trajectory(opt, sched, n=13)
    saved_opt = opt.state_dict()
    saved = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    assert saved["last_epoch"] == 13

    opt2 = _optimizer(lrs=(0.3, 0.2))  # a different configuration: the saved state must win
    sched2 = build(opt2)
    if optimizer_first:
        opt2.load_state_dict(saved_opt)
        sched2.load_state_dict(saved)
    else:
        sched2.load_state_dict(saved)
        opt2.load_state_dict(saved_opt)
    assert _lrs(opt2) == straight[13]
    resumed = [_lrs(opt2)]
    for _ in range(17):
        opt2.step()
        sched2.step()
        resumed.append(_lrs(opt2))
    assert resumed == straight[13:]


def test_resume_with_last_epoch():
    opt = _optimizer()
    sched = StepLR(opt, 5, 0.5)
    for _ in range(7):
        sched.step()
    sd = opt.state_dict()
    opt2 = _optimizer()
    opt2.load_state_dict(sd)
    sched2 = StepLR(opt2, 5, 0.5, last_epoch=6)
    assert _lrs(opt2) == _lrs(opt) and sched2.last_epoch == 7
    with pytest.raises(KeyError, match="param group 0 has no 'initial_lr'"):
        StepLR(_optimizer(), 5, last_epoch=3)


def test_load_state_of_another_scheduler_fails():
    opt = _optimizer()
    saved = StepLR(opt, 5).state_dict()
    with pytest.raises(ValueError, match="cannot load a state saved by StepLR into ExponentialLR"):
        ExponentialLR(opt, 0.9).load_state_dict(saved)
    with pytest.raises(ValueError, match=re.escape("StepLR state_dict is missing key(s) ['gamma']")):
        StepLR(opt, 5).load_state_dict({k: v for k, v in saved.items() if k != "gamma"})
    with pytest.raises(ValueError, match="has 1 param group"):
        StepLR(opt, 5).load_state_dict({**saved, "base_lrs": [0.1]})


def test_scheduler_works_with_any_optimizer():
    opt = Adam([dt.tensor(np.zeros(2), requires_grad=True)], lr=0.01)
    sched = lr_scheduler.ExponentialLR(opt, 0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "error", "message"), [
    (lambda o: StepLR(o, 0), ValueError, "step_size must be an integer >= 1, got 0"),
    (lambda o: StepLR(o, 2.5), ValueError, "step_size must be an integer >= 1, got 2.5"),
    (lambda o: StepLR(o, 3, gamma=0), ValueError, "gamma must be a positive finite number, got 0"),
    (lambda o: StepLR(o, 3, gamma=-0.5), ValueError, "gamma must be a positive finite number, got -0.5"),
    (lambda o: MultiStepLR(o, [5, 3]), ValueError, r"milestones must be strictly increasing, got \[5, 3\]"),
    (lambda o: MultiStepLR(o, [2, 2]), ValueError, "milestones must be strictly increasing"),
    (lambda o: MultiStepLR(o, [0, 3]), ValueError, "each milestone must be an integer >= 1, got 0"),
    (lambda o: MultiStepLR(o, 5), ValueError, "milestones must be a list of increasing integers"),
    (lambda o: ExponentialLR(o, float("nan")), ValueError, "gamma must be a positive finite number, got nan"),
    (lambda o: CosineAnnealingLR(o, 0), ValueError, "T_max must be an integer >= 1, got 0"),
    (lambda o: CosineAnnealingLR(o, 10, eta_min=-1.0), ValueError, "eta_min must be a finite number >= 0, got -1.0"),
    (lambda o: LinearWarmup(o, -1), ValueError, "warmup_steps must be an integer >= 0, got -1"),
    (lambda o: LinearWarmup(o, 10, start_factor=1.5), ValueError,
     r"start_factor must be a number in \[0, 1\], got 1.5"),
    (lambda o: LinearWarmup(o, 10, after=StepLR(_optimizer(), 3)), ValueError,
     r"scheduler 0 \(StepLR\) was built for another optimizer"),
    (lambda o: LinearWarmup(o, 10, after=ReduceLROnPlateau(o)), TypeError, "ReduceLROnPlateau cannot be composed"),
    (lambda o: SequentialLR(o, [StepLR(o, 3), StepLR(o, 4)], milestones=[]), ValueError,
     "one milestone fewer than schedulers"),
    (lambda o: SequentialLR(o, [], milestones=[]), ValueError, "needs at least one scheduler"),
    (lambda o: StepLR(object(), 3), TypeError, "object is not an optimizer"),
    (lambda o: StepLR(o, 3, last_epoch=-2), ValueError, "last_epoch must be an integer >= -1, got -2"),
    (lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, r"factor must be a number in \(0, 1\), got 1.0"),
    (lambda o: ReduceLROnPlateau(o, factor=0), ValueError, r"factor must be a number in \(0, 1\), got 0"),
    (lambda o: ReduceLROnPlateau(o, mode="avg"), ValueError, "mode must be 'min' or 'max', got 'avg'"),
    (lambda o: ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode must be 'rel' or 'abs'"),
    (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "patience must be an integer >= 0, got -1"),
    (lambda o: ReduceLROnPlateau(o, cooldown=1.5), ValueError, "cooldown must be an integer >= 0, got 1.5"),
    (lambda o: ReduceLROnPlateau(o, threshold=-1e-4), ValueError, "threshold must be a finite number >= 0"),
    (lambda o: ReduceLROnPlateau(o, min_lr=[0.1]), ValueError,
     r"min_lr has 1 value\(s\), but the optimizer has 2 param group\(s\)"),
    (lambda o: ReduceLROnPlateau(o, min_lr=-0.1), ValueError, "min_lr must be a finite number >= 0, got -0.1"),
])
def test_invalid_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build(_optimizer())


def test_param_group_added_after_the_scheduler_is_an_error():
    opt = _optimizer()
    sched = StepLR(opt, 3)
    opt.add_param_group({"params": [dt.tensor(np.zeros(1), requires_grad=True)]})
    with pytest.raises(RuntimeError, match="build the scheduler after adding param groups"):
        sched.step()
