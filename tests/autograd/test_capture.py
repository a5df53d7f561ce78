"""Captured steps (dtrain.autograd.capture): a replay equals the eager step bit for bit, and what it cannot
replay faithfully is refused with a CaptureError naming the cause."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain import nn, optim
from dtrain.autograd import CaptureError, capture, queue_callback


def mlp(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = [(16, 12), (16,), (5, 16), (5,)]
    return [dt.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def batch(step, n=8, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return dt.tensor(rng.standard_normal((n, 12)).astype(dtype)), rng.integers(0, 5, n)


def loss_of(params):
    w1, b1, w2, b2 = params

    def loss_fn(x, y):
        return F.cross_entropy(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), y)

    return loss_fn


def eager_step(loss_fn, *args):
    loss = loss_fn(*args)
    loss.backward()
    return loss


def assert_same(eager_params, captured_params):
    for p, q in zip(eager_params, captured_params):
        assert p.grad is not None and q.grad is not None
        np.testing.assert_array_equal(p.grad, q.grad)
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_equals_eager_bit_for_bit_across_optimizer_steps(dtype):
    pe, pc = mlp(dtype=dtype), mlp(dtype=dtype)
    oe, oc = optim.SGD(pe, lr=0.1, momentum=0.9), optim.SGD(pc, lr=0.1, momentum=0.9)
    fe, step = loss_of(pe), capture(loss_of(pc))
    for k in range(6):
        x, y = batch(k, dtype=dtype)
        oe.zero_grad()
        oc.zero_grad()
        le = eager_step(fe, x, y)
        lc = step(x, y)
        assert not lc.requires_grad and lc.data.dtype == le.data.dtype
        np.testing.assert_array_equal(le.data, lc.data)
        assert_same(pe, pc)
        oe.step()
        oc.step()
    assert step.traces == 1  # traced once, replayed five times, and the optimizer's updates were read


def test_gradients_accumulate_like_backward_when_not_zeroed():
    pe, pc = mlp(), mlp()
    fe, step = loss_of(pe), capture(loss_of(pc))
    for k in range(3):
        eager_step(fe, *batch(k))
        step(*batch(k))
    assert_same(pe, pc)


def test_a_new_shape_traces_again_and_each_signature_is_kept():
    pe, pc = mlp(), mlp()
    fe, step = loss_of(pe), capture(loss_of(pc))
    for n in (8, 3, 8, 3):
        for p in pe + pc:
            p.grad = None
        eager_step(fe, *batch(n, n=n))
        step(*batch(n, n=n))
        assert_same(pe, pc)
    assert step.traces == 2
    small = capture(loss_of(pc), max_traces=1)
    for n in (8, 3, 8):
        small(*batch(0, n=n))
    assert small.traces == 3  # only the latest signature is kept


def test_outputs_come_back_with_the_loss_and_before_backward_sees_each_loss():
    pe, pc = mlp(), mlp()
    w1, b1, w2, b2 = pc
    seen = []

    def loss_fn(x, y):
        logits = F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)
        return F.cross_entropy(logits, y), logits

    step = capture(loss_fn, before_backward=lambda loss: seen.append((float(loss), pc[0].grad is None)))
    for k in range(3):
        for p in pe + pc:
            p.grad = None
        x, y = batch(k)
        le = eager_step(loss_of(pe), x, y)
        lc, logits = step(x, y)
        np.testing.assert_array_equal(le.data, lc.data)
        np.testing.assert_array_equal(logits.data, F.linear(F.relu(F.linear(x, *pe[:2])), *pe[2:]).data)
        assert not logits.requires_grad
        assert_same(pe, pc)
        assert seen[-1] == (float(le.data), True)  # called with the loss, before any gradient exists
    assert len(seen) == 3 and step.traces == 1
    with pytest.raises(CaptureError, match="output 1 of the loss function must be a tensor its ops computed, got"):
        capture(lambda x, y: (loss_of(pc)(x, y), 3))(*batch(0))
    with pytest.raises(TypeError, match="before_backward must be callable, got int"):
        capture(loss_fn, before_backward=1)


def test_autocast_is_part_of_the_signature():
    pc = mlp()
    step = capture(loss_of(pc))
    step(*batch(0))
    step(*batch(1))  # replayed through the fast guard
    with dt.autograd.autocast("float16"), pytest.raises(CaptureError, match="op Cast cannot be replayed"):
        step(*batch(0))  # not the float32 tape: a new trace, which meets autocast's casts
    assert step.traces == 1


def test_a_parameter_whose_shape_changes_is_traced_again():
    pc = mlp()
    step = capture(loss_of(pc))
    step(*batch(0))
    pc[2].data = np.zeros((5, 16), np.float64)  # the dtype of a parameter changed: the old tape no longer fits
    pc[2].grad = None
    step(*batch(0))
    assert step.traces == 2 and pc[2].grad.dtype == np.float64


def test_cross_entropy_re_decides_its_path_and_errors_on_each_replay():
    pe, pc = mlp(), mlp()
    fe = lambda x, y: F.cross_entropy(F.linear(F.relu(F.linear(x, pe[0], pe[1])), pe[2], pe[3]), y,  # noqa: E731
                                      ignore_index=2)
    fc = lambda x, y: F.cross_entropy(F.linear(F.relu(F.linear(x, pc[0], pc[1])), pc[2], pc[3]), y,  # noqa: E731
                                      ignore_index=2)
    step = capture(fc)
    x, _ = batch(0)
    no_ignored = np.array([0, 1, 3, 4, 0, 1, 3, 4])  # traced on the fast path (every index a real class)
    with_ignored = np.array([0, 2, 3, 4, 2, 1, 3, 4])  # replayed: the ignored index needs the general path
    for y in (no_ignored, with_ignored, no_ignored):
        for p in pe + pc:
            p.grad = None
        le, lc = eager_step(fe, x, y), step(x, y)
        np.testing.assert_array_equal(le.data, lc.data)
        assert_same(pe, pc)
    assert step.traces == 1
    with pytest.raises(IndexError, match="cross_entropy: target class 7 is out of range for 5 classes"):
        step(x, np.array([0, 1, 7, 4, 0, 1, 3, 4]))


def test_tied_weights_and_a_reused_activation_sum_gradients_in_the_eager_order():
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((8, 8))
    pe, pc = dt.tensor(w0, requires_grad=True), dt.tensor(w0.copy(), requires_grad=True)

    def make(w):
        def loss_fn(x, y):
            h = F.relu(F.linear(x, w))
            z = F.linear(h, w) * 0.5 + h - F.linear(h * h, w) / 3.0  # w used three times, h three times
            return F.cross_entropy(z, y)
        return loss_fn

    step = capture(make(pc))
    for _ in range(3):
        x = dt.tensor(rng.standard_normal((4, 8)))
        y = rng.integers(0, 8, 4)
        pe.grad = pc.grad = None
        le, lc = eager_step(make(pe), x, y), step(x, y)
        np.testing.assert_array_equal(le.data, lc.data)
        np.testing.assert_array_equal(pe.grad, pc.grad)
    assert step.traces == 1


def test_an_argument_that_requires_grad_gets_its_gradient():
    pe, pc = mlp(), mlp()
    step = capture(loss_of(pc))
    x0, y = batch(0)
    for params, run in ((pe, lambda x: eager_step(loss_of(pe), x, y)), (pc, lambda x: step(x, y))):
        for _ in range(2):
            x = dt.tensor(x0.data.copy(), requires_grad=True)
            run(x)
        params.append(x)
    assert_same(pe, pc)


def test_leaf_hooks_fire_and_queued_callbacks_run_after_the_last_gradient():
    pc = mlp()
    seen, done = [], []

    def hook(g):
        seen.append(g.shape)
        if len(seen) % 4 == 1:
            queue_callback(lambda: done.append(len(seen)))
        return g * 2.0

    for p in pc:
        p.register_hook(hook)
    pe = mlp()
    step = capture(loss_of(pc))
    for k in range(2):
        for p in pe + pc:
            p.grad = None
        eager_step(loss_of(pe), *batch(k))
        step(*batch(k))
        for p, q in zip(pe, pc):
            np.testing.assert_array_equal(p.grad * 2.0, q.grad)
    assert seen[:4] == seen[4:] and set(seen[:2]) == {(5,), (5, 16)}  # replay order = eager order, last layer first
    assert done == [4, 8]


def test_modules_and_the_functional_api_replay(capsys):
    dt.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    dt.manual_seed(1)
    ref = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    step = capture(lambda x, y: F.cross_entropy(model(x), y))
    for k in range(3):
        model.zero_grad()
        ref.zero_grad()
        step(*batch(k))
        eager_step(lambda x, y: F.cross_entropy(ref(x), y), *batch(k))
    assert_same(list(ref.parameters()), list(model.parameters()))


@pytest.mark.parametrize("make, message", [
    (lambda p: (lambda x, y: F.linear(x, p[0], p[1]).max()),
     "op Extremum cannot be replayed"),
    (lambda p: (lambda x, y: F.cross_entropy(F.linear(x, dt.tensor(p[0].data), p[1]), y)),
     "input 1 of op FusedLinear .* is a tensor that is neither an argument"),
    (lambda p: (lambda x, y: F.cross_entropy(F.linear(x, p[0], p[1]), list(y))),
     "argument 'target' of op FusedCrossEntropy is an array .* not an argument's data"),
    (lambda p: (lambda x, y: F.linear(x, p[0], p[1]).data.sum()),
     "must return a Tensor, got"),
    (lambda p: (lambda x, y: F.linear(x, p[0], p[1])),
     "the loss must have one element, got shape \\(8, 16\\)"),
    (lambda p: (lambda x, y: F.cross_entropy(F.linear(x.detach(), p[0].detach(), None), y)),
     "neither an argument"),
])
def test_what_cannot_be_replayed_is_refused_with_the_cause(make, message):
    step = capture(make(mlp()))
    with pytest.raises(CaptureError, match=message):
        step(*batch(0))


def test_hooks_on_intermediates_tangents_no_grad_and_bad_arguments_are_refused():
    p = mlp()

    def hooked(x, y):
        h = F.linear(x, p[0], p[1])
        h.register_hook(lambda g: g)
        return F.cross_entropy(h, y)

    with pytest.raises(CaptureError, match="hook or retain_grad\\(\\) on the output of op FusedLinear"):
        capture(hooked)(*batch(0))
    step = capture(loss_of(p))
    with dt.no_grad(), pytest.raises(CaptureError, match="call it with gradients enabled"):
        step(*batch(0))
    with pytest.raises(CaptureError, match="argument 1 \\(list\\) is neither a tensor, an array nor a hashable"):
        step(batch(0)[0], [1, 2])
    with pytest.raises(CaptureError, match="the loss must be computed by the loss function's ops and require grad"):
        capture(lambda x, y: F.cross_entropy(F.relu(x), y))(*batch(0))  # nothing in it requires grad
    x, y = batch(0)
    with pytest.raises(CaptureError, match="arguments 0 and 1 are the same array"):
        capture(lambda a, b: F.cross_entropy(F.linear(a + b, p[0], p[1]), y))(x, x)
    with pytest.raises(TypeError, match="expected a callable loss function, got int"):
        capture(3)
    with pytest.raises(ValueError, match="max_traces must be >= 1, got 0"):
        capture(loss_of(p), max_traces=0)


class _Positive(dt.autograd.Function):
    """A value-dependent output shape, wrongly declared capturable: the replay must notice."""

    capturable = True

    def forward(self, x):
        self.mask = x > 0
        return x[self.mask]

    def backward(self, g):
        out = np.zeros(self.mask.shape, g.dtype)
        out[self.mask] = g
        return out


class _Sum(dt.autograd.Function):
    capturable = True

    def forward(self, x):
        self.shape = x.shape
        return x.sum()

    def backward(self, g):
        return np.broadcast_to(g, self.shape)


class _Gather(dt.autograd.Function):
    """An op whose parameter nests an array in a tuple (as an index would), declared capturable."""

    capturable = True

    def forward(self, x, index=()):
        self.shape, self.index = x.shape, index
        return x[index]

    def backward(self, g):
        out = np.zeros(self.shape, g.dtype)
        np.add.at(out, self.index, g)
        return out


def test_an_array_nested_in_a_parameter_is_refused():
    p = mlp()
    rows = np.array([0, 2, 2])
    with pytest.raises(CaptureError, match="argument 'index' of op _Gather holds an array inside a tuple"):
        capture(lambda x, y: F.cross_entropy(_Gather.apply(F.linear(x, p[0], p[1]), index=(rows,)), y[:3]))(*batch(0))


def test_a_replayed_op_whose_output_shape_changes_is_refused():
    p = mlp()
    step = capture(lambda x: _Sum.apply(_Positive.apply(F.linear(x, p[0], p[1]))))
    x = batch(0)[0]
    step(x)
    step(x)  # the same values: the same shape, replayed
    assert step.traces == 1
    with pytest.raises(CaptureError, match=r"op _Positive returned ndarray \(\d+,\) on replay, traced ndarray"):
        step(dt.tensor(-x.data))


def small_cnn(momentum=0.1):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(6, 5))


def images(step, n=6):
    rng = np.random.default_rng(200 + step)
    return dt.tensor(rng.standard_normal((n, 1, 8, 8))), rng.integers(0, 5, n)


def twin_models(make):
    dt.manual_seed(5)
    a = make()
    dt.manual_seed(5)
    return a, make()


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        np.testing.assert_array_equal(np.asarray(sa[name]), np.asarray(sb[name]), err_msg=name)


def test_a_cnn_with_batch_norm_and_dropout_replays_bit_for_bit_buffers_included():
    """Conv, batch norm (running statistics and the batch count), pooling, dropout (the same masks: both
    draw from the default generator in the same order), float64, momentum SGD."""
    eager, model = twin_models(small_cnn)
    oe, oc = optim.SGD(eager.parameters(), lr=0.05, momentum=0.9), optim.SGD(model.parameters(), lr=0.05,
                                                                               momentum=0.9)
    step = capture(lambda x, y: F.cross_entropy(model(x), y))
    for k in range(4):
        x, y = images(k)
        for opt, run in ((oe, lambda a, b: eager_step(lambda u, v: F.cross_entropy(eager(u), v), a, b)),
                         (oc, step)):
            dt.manual_seed(100 + k)
            opt.zero_grad()
            run(x, y)
            opt.step()
        assert_same_state(eager, model)
    assert step.traces == 1 and int(model[1].num_batches_tracked) == 4


def test_switching_to_eval_traces_again_and_uses_the_running_statistics():
    eager, model = twin_models(small_cnn)
    step = capture(lambda x, y: F.cross_entropy(model(x), y))
    x, y = images(0)
    for mode in ("train", "eval", "train"):
        for m in (eager, model):
            getattr(m, mode)()
            m.zero_grad()
        dt.manual_seed(7)
        le = eager_step(lambda x, y: F.cross_entropy(eager(x), y), x, y)
        dt.manual_seed(7)
        np.testing.assert_array_equal(le.data, step(x, y).data)
        assert_same_state(eager, model)
        for p, q in zip(eager.parameters(), model.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad)
    assert step.traces == 2  # train, eval, and train again from the kept tape


def test_buffers_replaced_by_load_state_dict_are_read_on_the_next_replay():
    eager, model = twin_models(small_cnn)
    step = capture(lambda x, y: F.cross_entropy(model(x), y))
    x, y = images(0)
    step(x, y)
    state = {k: np.asarray(v) * 1.5 if "running" in k else v for k, v in eager.state_dict().items()}
    for m in (eager, model):
        m.load_state_dict(state)
        m.eval()
        m.zero_grad()
    le = eager_step(lambda x, y: F.cross_entropy(eager(x), y), x, y)
    np.testing.assert_array_equal(le.data, step(x, y).data)
    for p, q in zip(eager.parameters(), model.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_module_hooks_and_a_cumulative_batch_norm_are_refused():
    model = small_cnn()
    model[2].register_forward_hook(lambda mod, inputs, out: None)
    with pytest.raises(CaptureError, match="module ReLU has forward hooks, which a replay would not run"):
        capture(lambda x, y: F.cross_entropy(model(x), y))(*images(0))
    cumulative = small_cnn(momentum=None)
    with pytest.raises(CaptureError, match="BatchNorm2d\\(momentum=None\\) averages with a momentum that changes"):
        capture(lambda x, y: F.cross_entropy(cumulative(x), y))(*images(0))


def test_comparisons_are_recomputed_and_embedding_indices_rechecked_on_every_replay():
    rng = np.random.default_rng(4)
    table = dt.tensor(rng.standard_normal((7, 5)), requires_grad=True)
    twin = dt.tensor(table.data.copy(), requires_grad=True)

    def make(w):
        def loss_fn(tokens, y):
            h = F.embedding(tokens, w)                       # (N, 5)
            return F.cross_entropy(dt.where(h > 0, h, h * 0.1), y)  # the mask depends on this call's values
        return loss_fn

    step = capture(make(twin))
    for _ in range(3):
        tokens, y = rng.integers(0, 7, 6), rng.integers(0, 5, 6)
        table.grad = twin.grad = None
        le = eager_step(make(table), tokens, y)
        np.testing.assert_array_equal(le.data, step(tokens, y).data)
        np.testing.assert_array_equal(table.grad, twin.grad)
    assert step.traces == 1
    with pytest.raises(IndexError, match="embedding index -1 is out of range for 7 embeddings"):
        step(np.array([0, 1, -1, 2, 3, 4]), y)  # NumPy would wrap -1 silently: the replay checks as eagerly
