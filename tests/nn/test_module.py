"""nn.Module: registration, traversal order and names, modes, dtype moves, state_dict round trips,
strict loading errors, hooks, and the containers (Sequential, ModuleList, ModuleDict)."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.nn import Module, ModuleDict, ModuleList, Parameter, Sequential, StateDictError


class Block(Module):
    """A Linear plus a BatchNorm1d plus one raw parameter and one non-persistent buffer."""

    def __init__(self, n: int):
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.scale = Parameter(np.ones(n, dtype=np.float32))
        self.norm = nn.BatchNorm1d(n)
        self.register_buffer("scratch", np.zeros(n, dtype=np.float32), persistent=False)

    def forward(self, x):
        return self.norm(self.fc(x) * self.scale)


class Net(Module):
    def __init__(self, n: int = 4, out: int = 3):
        super().__init__()
        self.embed = nn.Linear(5, n)
        self.blocks = ModuleList([Block(n), Block(n)])
        self.head = nn.Linear(n, out, bias=False)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


NET_PARAMS = [
    "embed.weight", "embed.bias",
    "blocks.0.scale", "blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.norm.weight", "blocks.0.norm.bias",
    "blocks.1.scale", "blocks.1.fc.weight", "blocks.1.fc.bias", "blocks.1.norm.weight", "blocks.1.norm.bias",
    "head.weight",
]


def _outputs(model: Module, x: np.ndarray) -> np.ndarray:
    return model(dt.tensor(x)).numpy()


# ---------------------------------------------------------------------------------------------
# Registration, names and order
# ---------------------------------------------------------------------------------------------


def test_named_parameters_dotted_names_in_registration_order():
    net = Net()
    # Module by module (pre-order); within a module its own parameters in assignment order.
    assert [n for n, _ in net.named_parameters()] == NET_PARAMS
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]
    assert [n for n, _ in net.named_parameters(recurse=False)] == []
    assert [n for n, _ in net.blocks[0].named_parameters(prefix="b0")] == [
        "b0.scale", "b0.fc.weight", "b0.fc.bias", "b0.norm.weight", "b0.norm.bias"]
    assert [n for n, _ in net.blocks[0].named_parameters(recurse=False)] == ["scale"]


def test_named_modules_children_and_buffers():
    net = Net()
    names = [n for n, _ in net.named_modules()]
    assert names == ["", "embed", "blocks", "blocks.0", "blocks.0.fc", "blocks.0.norm", "blocks.1",
                     "blocks.1.fc", "blocks.1.norm", "head"]
    assert [type(m).__name__ for m in net.children()] == ["Linear", "ModuleList", "Linear"]
    assert [n for n, _ in net.named_children()] == ["embed", "blocks", "head"]
    assert next(net.modules()) is net
    # named_buffers lists non-persistent buffers too; state_dict leaves them out.
    assert [n for n, _ in net.named_buffers()] == [
        "blocks.0.scratch", "blocks.0.norm.running_mean", "blocks.0.norm.running_var",
        "blocks.0.norm.num_batches_tracked",
        "blocks.1.scratch", "blocks.1.norm.running_mean", "blocks.1.norm.running_var",
        "blocks.1.norm.num_batches_tracked"]
    assert len(list(net.buffers())) == 8


def test_state_dict_keys_params_then_persistent_buffers_per_module():
    sd = Net().state_dict()
    assert list(sd) == [
        "embed.weight", "embed.bias",
        "blocks.0.scale", "blocks.0.fc.weight", "blocks.0.fc.bias",
        "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.norm.running_mean", "blocks.0.norm.running_var",
        "blocks.0.norm.num_batches_tracked",
        "blocks.1.scale", "blocks.1.fc.weight", "blocks.1.fc.bias",
        "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.norm.running_mean", "blocks.1.norm.running_var",
        "blocks.1.norm.num_batches_tracked",
        "head.weight",
    ]
    assert not any("scratch" in k for k in sd)
    assert sd["blocks.0.norm.num_batches_tracked"].shape == ()
    assert sd["blocks.0.norm.num_batches_tracked"].dtype == np.int64


def test_state_dict_holds_live_arrays():
    net = Net()
    sd = net.state_dict()
    assert sd["embed.weight"] is net.embed.weight.data
    assert sd["blocks.1.norm.running_mean"] is net.blocks[1].norm.running_mean


def test_shared_parameter_listed_once_and_keeps_position():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # weight tying

    class Tied(Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = a, b

    model = Tied()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["a.weight", "a.bias", "b.bias"]
    assert model.num_parameters() == 9 + 3 + 3
    # Re-assigning an existing parameter keeps its slot (torch's order): weight before bias.
    assert [n for n, _ in b.named_parameters()] == ["weight", "bias"]
    # state_dict, like torch's, names the tied array under both owners.
    assert list(model.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert model.state_dict()["b.weight"] is a.weight.data
    # The same holds for a replaced submodule and a re-registered buffer.
    seq = Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    setattr(seq, "0", nn.Linear(2, 2))
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    bn = nn.BatchNorm1d(2)
    bn.register_buffer("running_mean", np.zeros(2, np.float32))
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]


def test_shared_submodule_listed_once():
    shared = nn.Linear(2, 2)
    seq = Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1"]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_none_parameters_and_buffers_are_skipped():
    lin = nn.Linear(4, 2, bias=False)
    assert lin.bias is None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    assert list(lin.state_dict()) == ["weight"]
    bn = nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    assert list(bn.named_parameters()) == [] and list(bn.named_buffers()) == []
    assert bn.state_dict() == {}
    assert bn.num_parameters() == 0


def test_register_parameter_buffer_module_explicitly():
    m = Module()
    m.register_parameter("w", Parameter(np.zeros(2, np.float32)))
    m.register_parameter("absent", None)
    m.register_buffer("stat", np.zeros(3))
    m.register_module("child", nn.Linear(1, 1))
    m.add_module("other", None)
    assert [n for n, _ in m.named_parameters()] == ["w", "child.weight", "child.bias"]
    assert list(m.state_dict()) == ["w", "stat", "child.weight", "child.bias"]
    assert m.absent is None and m.other is None
    with pytest.raises(TypeError, match="expects a Parameter or None"):
        m.register_parameter("x", np.zeros(2))
    with pytest.raises(TypeError, match="expects a NumPy/CuPy array or None"):
        m.register_buffer("b", [1, 2])
    with pytest.raises(TypeError, match="expects a Module or None"):
        m.register_module("c", 3)
    with pytest.raises(KeyError, match=r"without '\.'"):
        m.register_buffer("a.b", np.zeros(1))
    with pytest.raises(KeyError, match="non-empty"):
        m.register_parameter("", None)


def test_assigning_wrong_types_to_registered_slots():
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"cannot assign ndarray to parameter 'weight' of Linear"):
        lin.weight = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"cannot assign Tensor to parameter 'bias'"):
        lin.bias = dt.zeros(2)
    lin.bias = None  # declared but absent is allowed
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    seq = Sequential(nn.ReLU())
    with pytest.raises(TypeError, match=r"cannot assign int to submodule '0'"):
        setattr(seq, "0", 5)
    bn = nn.BatchNorm1d(2)
    with pytest.raises(TypeError, match=r"buffer 'running_mean' of BatchNorm1d must be an array"):
        bn.running_mean = [0.0, 0.0]
    bn.running_mean = np.full(2, 3.0, np.float32)
    assert bn.state_dict()["running_mean"].tolist() == [3.0, 3.0]


def test_reassigning_a_name_moves_it_between_registries_and_del_unregisters():
    m = Module()
    m.x = Parameter(np.zeros(1, np.float32))
    m.x = nn.Linear(1, 1)  # now a submodule, no longer a parameter
    assert [n for n, _ in m.named_parameters()] == ["x.weight", "x.bias"]
    del m.x
    assert list(m.named_parameters()) == [] and not hasattr(m, "x")
    m.plain = 3  # ordinary attributes are not registered
    assert m.state_dict() == {}


def test_assigning_before_super_init_is_an_error():
    class Forgetful(Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)
            super().__init__()

    with pytest.raises(AttributeError, match=r"call super\(\)\.__init__\(\) in Forgetful\.__init__.*'fc'"):
        Forgetful()


def test_parameter_basics():
    p = Parameter(np.zeros((2, 3), np.float32))
    assert isinstance(p, dt.Tensor) and p.requires_grad and p.is_leaf
    assert Parameter(dt.ones(2)).data.dtype == np.float32
    assert not Parameter(np.arange(3), requires_grad=False).requires_grad
    with pytest.raises(TypeError, match="must be floating point, got dtype int64"):
        Parameter(np.arange(3))
    frozen = np.zeros(2, np.float32)
    frozen.flags.writeable = False
    p2 = Parameter(frozen)
    assert p2.data.flags.writeable  # copied so optimizers can update it in place
    assert repr(p).startswith("Parameter containing:")


def test_forward_not_implemented():
    with pytest.raises(NotImplementedError, match="Module must implement forward"):
        Module()(1)


# ---------------------------------------------------------------------------------------------
# Modes, gradients, apply
# ---------------------------------------------------------------------------------------------


def test_train_eval_propagate_to_every_module():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.blocks[1].train()
    assert net.blocks[1].norm.training and not net.blocks[0].norm.training and not net.training
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="expects a bool"):
        net.train("no")


def test_zero_grad_set_to_none_and_in_place():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    net(dt.randn(5, 3)).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and np.any(g != 0) for g in grads)
    net.zero_grad(set_to_none=False)
    for p, g in zip(net.parameters(), grads):
        assert p.grad is g  # zeroed in place, same array
        assert not np.any(p.grad)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.zero_grad(set_to_none=False)  # no gradients: nothing to do, no error
    assert all(p.grad is None for p in net.parameters())


def test_requires_grad_and_num_parameters():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert net.num_parameters() == 12 + 4 + 8
    assert net[1].requires_grad_(False) is net[1]
    assert not net[1].weight.requires_grad
    assert net.num_parameters(trainable_only=True) == 16
    assert net.num_parameters() == 24


def test_apply_visits_children_first_then_self():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Tanh()))
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "ReLU", "Tanh", "Sequential", "Sequential"]

    def zero_linear(m):
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)

    net.apply(zero_linear)
    assert not np.any(net[0].weight.data)


# ---------------------------------------------------------------------------------------------
# to(device, dtype)
# ---------------------------------------------------------------------------------------------


def test_to_float64_casts_floats_keeps_int_buffers_and_parameter_identity():
    net = Net()
    net(dt.randn(6, 5)).sum().backward()
    params_before = list(net.parameters())  # what an optimizer would hold
    ids_before = [id(p) for p in params_before]
    values_before = [p.data.copy() for p in params_before]
    assert net.to(dtype=np.float64) is net
    params_after = list(net.parameters())
    assert [id(p) for p in params_after] == ids_before
    for p, v in zip(params_before, values_before):
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
        np.testing.assert_array_equal(p.data, v.astype(np.float64))
    norm = net.blocks[0].norm
    assert norm.running_mean.dtype == np.float64 and norm.running_var.dtype == np.float64
    assert norm.num_batches_tracked.dtype == np.int64 and int(norm.num_batches_tracked) == 1
    assert net.blocks[0].scratch.dtype == np.float64  # non-persistent buffers are cast too
    sd = net.state_dict()
    assert sd["blocks.0.norm.running_mean"] is norm.running_mean  # registry and attribute agree
    assert sd["blocks.0.norm.num_batches_tracked"].dtype == np.int64
    out = net(dt.tensor(np.zeros((2, 5)), dtype="float64"))
    assert out.data.dtype == np.float64
    net.float()
    assert all(p.data.dtype == np.float32 for p in params_before)
    assert norm.num_batches_tracked.dtype == np.int64
    net.half()
    assert net.embed.weight.data.dtype == np.float16
    net.double().cpu()
    assert net.embed.weight.data.dtype == np.float64


def test_to_rejects_bad_dtype():
    with pytest.raises(ValueError, match="unsupported dtype"):
        nn.Linear(2, 2).to(dtype="complex64")


# ---------------------------------------------------------------------------------------------
# load_state_dict
# ---------------------------------------------------------------------------------------------


def _trained_net(seed: int) -> Net:
    dt.manual_seed(seed)
    net = Net()
    net(dt.randn(8, 5))  # a training-mode step moves the running statistics
    return net


def test_state_dict_round_trip_into_fresh_model_gives_identical_outputs():
    src = _trained_net(1).eval()
    dst = _trained_net(2).eval()
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    assert not np.allclose(_outputs(src, x), _outputs(dst, x))
    result = dst.load_state_dict(src.state_dict())
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(_outputs(dst, x), _outputs(src, x))
    # A copy, not an alias: further changes to the source do not leak into the destination.
    src.embed.weight.data[...] = 0
    assert np.any(dst.embed.weight.data)


def test_load_state_dict_copies_in_place_and_casts_dtype():
    net = Net()
    arrays = {k: id(v) for k, v in net.state_dict().items()}
    params = list(net.parameters())
    sd64 = {k: np.full(v.shape, 0.5, dtype=np.float64) for k, v in net.state_dict().items()}
    sd64["blocks.0.norm.num_batches_tracked"] = np.array(7, np.int64)
    net.load_state_dict(sd64)
    assert {k: id(v) for k, v in net.state_dict().items()} == arrays
    assert list(net.parameters()) == params
    assert net.embed.weight.data.dtype == np.float32 and np.all(net.embed.weight.data == 0.5)
    assert int(net.blocks[0].norm.num_batches_tracked) == 7
    assert net.blocks[0].norm.num_batches_tracked.dtype == np.int64


def test_load_state_dict_accepts_tensors_and_lists():
    lin = nn.Linear(2, 1)
    lin.load_state_dict({"weight": dt.tensor([[1.0, 2.0]]), "bias": [3.0]})
    assert lin.weight.data.tolist() == [[1.0, 2.0]] and lin.bias.data.tolist() == [3.0]
    with pytest.raises(TypeError, match="expects a mapping"):
        lin.load_state_dict([("weight", np.zeros((1, 2)))])


def test_strict_load_lists_missing_unexpected_and_shape_problems_together():
    net = Net()
    sd = {k: v.copy() for k, v in net.state_dict().items()}
    del sd["head.weight"], sd["blocks.1.norm.running_var"]
    sd["extra.weight"] = np.zeros(3)
    sd["embed.bias"] = np.zeros(7, np.float32)
    before = net.embed.weight.data.copy()
    sd["embed.weight"] = np.ones_like(before)
    pattern = (r"load_state_dict into Net failed: missing keys: blocks\.1\.norm\.running_var, head\.weight; "
               r"unexpected keys: extra\.weight; embed\.bias: expected shape \(4,\), got \(7,\)")
    with pytest.raises(StateDictError, match=pattern):
        net.load_state_dict(sd)
    # Nothing is loaded when anything is wrong.
    np.testing.assert_array_equal(net.embed.weight.data, before)
    assert issubclass(StateDictError, ValueError)


@pytest.mark.parametrize("problem, pattern", [
    ("missing", r"missing keys: bias$"),
    ("unexpected", r"unexpected keys: junk$"),
    ("shape", r"weight: expected shape \(2, 3\), got \(3, 2\)$"),
])
def test_strict_load_single_problem(problem, pattern):
    lin = nn.Linear(3, 2)
    sd = {k: v.copy() for k, v in lin.state_dict().items()}
    if problem == "missing":
        del sd["bias"]
    elif problem == "unexpected":
        sd["junk"] = np.zeros(1)
    else:
        sd["weight"] = sd["weight"].T.copy()
    with pytest.raises(StateDictError, match=pattern):
        lin.load_state_dict(sd)


def test_non_strict_load_returns_keys_and_loads_the_rest():
    net = Net()
    src = Net()
    sd = {k: v.copy() for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["aux.weight"] = np.zeros(2)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["head.weight"] and unexpected == ["aux.weight"]
    np.testing.assert_array_equal(net.embed.weight.data, src.embed.weight.data)
    np.testing.assert_array_equal(net.blocks[1].fc.bias.data, src.blocks[1].fc.bias.data)
    assert not np.array_equal(net.head.weight.data, src.head.weight.data)
    # A shape mismatch is an error even when not strict.
    sd["embed.weight"] = np.zeros((1, 1), np.float32)
    with pytest.raises(StateDictError, match=r"embed\.weight: expected shape \(4, 5\), got \(1, 1\)"):
        net.load_state_dict(sd, strict=False)


def test_non_persistent_buffer_not_required_on_load():
    block = Block(3)
    sd = {k: v.copy() for k, v in block.state_dict().items()}
    assert "scratch" not in sd
    block.scratch[...] = 9
    assert block.load_state_dict(sd) == ([], [])
    assert np.all(block.scratch == 9)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------


def test_forward_hook_sees_module_inputs_output_and_can_replace_output():
    lin = nn.Linear(3, 2)
    calls = []

    def record(module, inputs, output):
        calls.append((module, inputs, output))

    handle = lin.register_forward_hook(record)
    x = dt.randn(4, 3)
    y = lin(x)
    assert len(calls) == 1
    module, inputs, output = calls[0]
    assert module is lin and isinstance(inputs, tuple) and inputs[0] is x and output is y

    replace = lin.register_forward_hook(lambda m, i, o: o * 0)
    assert not np.any(lin(x).numpy())
    assert len(calls) == 2
    replace.remove()
    handle.remove()
    handle.remove()  # removing twice is harmless
    np.testing.assert_array_equal(lin(x).numpy(), y.numpy())
    assert len(calls) == 2


def test_forward_pre_hook_can_replace_inputs():
    lin = nn.Linear(3, 2)
    x = dt.randn(4, 3)
    expected = lin(x * 2).numpy()
    seen = []
    h1 = lin.register_forward_pre_hook(lambda m, inputs: seen.append(inputs))  # returns None: keep inputs
    h2 = lin.register_forward_pre_hook(lambda m, inputs: inputs[0] * 2)  # a bare value is wrapped
    np.testing.assert_array_equal(lin(x).numpy(), expected)
    assert seen[0][0] is x
    h2.remove()
    h3 = lin.register_forward_pre_hook(lambda m, inputs: (inputs[0] * 2,))
    np.testing.assert_array_equal(lin(x).numpy(), expected)
    h1.remove()
    h3.remove()
    np.testing.assert_array_equal(lin(x).numpy(), lin.forward(x).numpy())


def test_hooks_run_in_registration_order_and_the_same_hook_can_be_added_twice():
    relu = nn.ReLU()
    order = []

    def hook(m, i, o):
        order.append("h")

    first = relu.register_forward_hook(hook)
    relu.register_forward_hook(lambda m, i, o: order.append("other"))
    second = relu.register_forward_hook(hook)
    relu(dt.zeros(1))
    assert order == ["h", "other", "h"]
    # Removing one registration and adding it again must not clobber the other one.
    first.remove()
    third = relu.register_forward_hook(hook)
    order.clear()
    relu(dt.zeros(1))
    assert order == ["other", "h", "h"]
    second.remove()
    order.clear()
    relu(dt.zeros(1))
    assert order == ["other", "h"]
    third.remove()


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------


def test_sequential_indexing_slicing_len_iter_append():
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)]
    seq = Sequential(*layers)
    assert len(seq) == 3
    assert list(seq) == layers
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    head = seq[:2]
    assert isinstance(head, Sequential) and len(head) == 2 and list(head) == layers[:2]
    assert list(seq[::2]) == [layers[0], layers[2]]
    x = dt.randn(5, 3)
    np.testing.assert_array_equal(seq(x).numpy(), layers[2](layers[1](layers[0](x))).numpy())
    np.testing.assert_array_equal(seq[2](head(x)).numpy(), seq(x).numpy())
    tail = nn.Sigmoid()
    assert seq.append(tail) is seq
    assert len(seq) == 4 and seq[3] is tail
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(IndexError):
        seq[4]
    with pytest.raises(TypeError, match="Sequential argument 1 is a int, expected a Module"):
        Sequential(nn.ReLU(), 3)


def test_sequential_from_dict_uses_its_names():
    seq = Sequential({"fc": nn.Linear(2, 3), "act": nn.ReLU(), "out": nn.Linear(3, 1)})
    assert [n for n, _ in seq.named_children()] == ["fc", "act", "out"]
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias", "out.weight", "out.bias"]
    assert seq.fc is seq[0]
    assert seq(dt.randn(4, 2)).shape == (4, 1)


def test_module_list_and_module_dict_registration():
    ml = ModuleList([nn.Linear(2, 2), nn.Linear(2, 3)])
    ml.append(nn.Linear(3, 1))
    assert len(ml) == 3 and ml[-1].out_features == 1
    assert [m.out_features for m in ml] == [2, 3, 1]
    assert list(ml.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]

    md = ModuleDict({"enc": nn.Linear(2, 2)})
    md["dec"] = nn.Linear(2, 1)
    assert len(md) == 2 and list(md) == ["enc", "dec"] and list(md.keys()) == ["enc", "dec"]
    assert md["dec"].out_features == 1
    assert [k for k, _ in md.items()] == ["enc", "dec"] and len(list(md.values())) == 2

    class Holder(Module):
        def __init__(self):
            super().__init__()
            self.layers = ml
            self.heads = md

    assert list(Holder().state_dict()) == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
        "layers.2.bias", "heads.enc.weight", "heads.enc.bias", "heads.dec.weight", "heads.dec.bias"]
    assert Holder().num_parameters() == (6 + 9 + 4) + (6 + 3)


def test_repr_contains_child_lines():
    text = repr(Net())
    assert text.startswith("Net(\n  (embed): Linear(in_features=5, out_features=4, bias=True)\n")
    assert ("  (blocks): ModuleList(\n    (0): Block(\n"
            "      (fc): Linear(in_features=4, out_features=4, bias=True)") in text
    assert "(norm): BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)" in text
    assert "  (head): Linear(in_features=4, out_features=3, bias=False)\n)" in text
    assert repr(nn.ReLU()) == "ReLU()"
