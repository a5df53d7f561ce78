"""Module: the base class of every layer and model, with torch's names and state_dict format.

A Module owns Parameters (trainable leaf Tensors), buffers (plain backend arrays such as batch-norm
running statistics) and child Modules, all registered by attribute assignment in the order they
are assigned. That order is the registration order DDP buckets by (reversed) and the order of
``state_dict()`` keys, which are dotted paths exactly as torch names them (``0.weight``,
``layers.1.norm1.bias``), so state dicts round-trip between the two.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ..autograd.capture_hooks import note_module_call
from ..autograd.tensor import Tensor
from ..backend import Device, as_device, device_of, get_array_module, is_float_dtype, resolve_dtype, to_device
from .parameter import Parameter

__all__ = ["Module", "ModuleDict", "ModuleList", "Sequential", "StateDictError"]


class StateDictError(ValueError):
    """load_state_dict found missing, unexpected or mis-shaped entries (all of them are listed)."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class _HookHandle:
    def __init__(self, hooks: dict, key: int):
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


_hook_ids = itertools.count()  # unique hook keys: the same function may be registered twice


def _is_array(value) -> bool:
    # ndarray first: its __array_interface__ builds a dict on every access (5 us)
    return isinstance(value, np.ndarray) or hasattr(value, "__array_interface__") \
        or hasattr(value, "__cuda_array_interface__")


class Module:
    """Base class for layers and models: subclass it, assign parameters/layers in ``__init__``, write
    ``forward``. Calling the module runs forward (plus any forward hooks).

    >>> class Net(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x)
    """

    training: bool

    def __init__(self) -> None:
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()  # name -> Parameter or None
        d["_buffers"] = OrderedDict()  # name -> backend array or None
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()  # name -> Module or None
        d["_forward_hooks"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()

    # -- registration ---------------------------------------------------------------------------
    # Registered values are also kept in the instance __dict__, so reading ``self.weight`` on the
    # hot path is a plain attribute lookup; the ordered registries remember names and order.
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(getattr(type(self), name, None), property):  # a subclass's settable property
            object.__setattr__(self, name, value)
            return
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"call super().__init__() in {type(self).__name__}.__init__ before assigning "
                                 f"attributes (assigning {name!r})")
        if isinstance(value, Parameter):
            self._unregister(name, keep=d["_parameters"])
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            self._unregister(name, keep=d["_modules"])
            d["_modules"][name] = value
        elif name in d["_parameters"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} of "
                                f"{type(self).__name__} (expected a Parameter or None)")
            d["_parameters"][name] = None
        elif name in d["_modules"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to submodule {name!r} of "
                                f"{type(self).__name__} (expected a Module or None)")
            d["_modules"][name] = None
        elif name in d["_buffers"]:
            if value is not None and not _is_array(value):
                raise TypeError(f"buffer {name!r} of {type(self).__name__} must be an array or None, "
                                f"got {type(value).__name__}")
            d["_buffers"][name] = value
        d[name] = value

    def __delattr__(self, name: str) -> None:
        self._unregister(name)
        object.__delattr__(self, name)

    def _unregister(self, name: str, keep: OrderedDict | None = None) -> None:
        # ``keep``: the registry the name is being (re)assigned in; its entry stays where it is, so
        # re-assigning a parameter (weight tying) keeps torch's order in state_dict and buckets.
        d = self.__dict__
        for registry in (d["_parameters"], d["_buffers"], d["_modules"]):
            if registry is not keep:
                registry.pop(name, None)
        d["_non_persistent"].discard(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None, a declared-but-absent parameter such as ``bias=False``)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}) expects a Parameter or None, got {type(param).__name__}")
        self._check_name(name)
        self._unregister(name, keep=self.__dict__["_parameters"])
        self.__dict__["_parameters"][name] = param
        self.__dict__[name] = param

    def register_buffer(self, name: str, array, persistent: bool = True) -> None:
        """Register a non-trainable array (e.g. running statistics); persistent ones are in state_dict."""
        if array is not None and not _is_array(array):
            raise TypeError(f"register_buffer({name!r}) expects a NumPy/CuPy array or None, "
                            f"got {type(array).__name__}")
        self._check_name(name)
        self._unregister(name, keep=self.__dict__["_buffers"])
        self.__dict__["_buffers"][name] = array
        if not persistent:
            self.__dict__["_non_persistent"].add(name)
        self.__dict__[name] = array

    def register_module(self, name: str, module: Module | None) -> None:
        """Register a child module under ``name`` (what attribute assignment does)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"register_module({name!r}) expects a Module or None, got {type(module).__name__}")
        self._check_name(name)
        self._unregister(name, keep=self.__dict__["_modules"])
        self.__dict__["_modules"][name] = module
        self.__dict__[name] = module

    add_module = register_module

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"a parameter/buffer/module name must be a non-empty string without '.', got {name!r}")

    # -- calling ---------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        note_module_call(self)  # when a captured step is tracing: guard the training flag, refuse hooks
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                result = hook(self, args, out)
                if result is not None:
                    out = result
        return out

    def register_forward_hook(self, hook: Callable) -> _HookHandle:
        """Call ``hook(module, inputs, output)`` after every forward; a non-None return replaces output."""
        key = next(_hook_ids)
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    def register_forward_pre_hook(self, hook: Callable) -> _HookHandle:
        """Call ``hook(module, inputs)`` before every forward; a non-None return replaces the inputs."""
        key = next(_hook_ids)
        self._forward_pre_hooks[key] = hook
        return _HookHandle(self._forward_pre_hooks, key)

    # -- traversal -------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo: set | None = None) -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module and every descendant, each module once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, registry).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) in registration order; a parameter shared by two layers once."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        """(dotted name, array) of every buffer (persistent or not)."""
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of scalar parameters."""
        return sum(int(p.data.size) for p in self.parameters() if p.requires_grad or not trainable_only)

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every submodule (children first) and on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- modes and gradients --------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, batch norm uses batch statistics); returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, got {mode!r}")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient (to None by default, else to zeros in place)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad[...] = 0

    # -- device and dtype ------------------------------------------------------------------------
    def to(self, device: str | Device | None = None, dtype=None) -> Module:
        """Move parameters and buffers to ``device`` and/or cast floating ones to ``dtype``, in place.

        Parameter objects keep their identity (optimizers built before ``to`` still see them);
        integer buffers (e.g. ``num_batches_tracked``) keep their dtype.
        """
        dev = as_device(device) if device is not None else None
        dt = resolve_dtype(dtype) if dtype is not None else None

        def convert(array):
            if dev is not None:
                array = to_device(array, dev)
            if dt is not None and is_float_dtype(array.dtype) and array.dtype != dt:
                array = array.astype(dt)
            return array

        for m in self.modules():
            for p in m._parameters.values():
                if p is None:
                    continue
                p.data = convert(p.data)
                if p.grad is not None:
                    p.grad = convert(p.grad)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m.__dict__["_buffers"][name] = m.__dict__[name] = convert(b)
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self, index: int | None = None) -> Module:
        return self.to("cuda" if index is None else f"cuda:{index}")

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def half(self) -> Module:
        return self.to(dtype=np.float16)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """{dotted name: array} of parameters then persistent buffers, module by module, as torch
        orders them. The arrays are the live ones (copy them to snapshot)."""
        out = OrderedDict()
        for prefix, mod in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[dot + name] = p.data
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[dot + name] = b
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers, in place.

        Values may be NumPy/CuPy arrays, Tensors, or anything ``numpy.asarray`` accepts (a torch
        tensor's ``.numpy()``); they are cast to each target's dtype and moved to its device. With
        ``strict`` (default) any missing or unexpected key is an error; a shape mismatch is always
        an error. All problems are listed together in one :class:`StateDictError`.

        Returns:
            (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict expects a mapping of name -> array, got {type(state_dict).__name__}")
        targets = {}  # name -> (module, attribute, kind)
        for prefix, mod in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    targets[dot + name] = (mod, name, "param")
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    targets[dot + name] = (mod, name, "buffer")
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(map(str, unexpected))}")
        converted = {}
        for key, value in state_dict.items():
            if key not in targets:
                continue
            mod, name, kind = targets[key]
            current = mod._parameters[name].data if kind == "param" else mod._buffers[name]
            if isinstance(value, Tensor):
                value = value.data
            if not _is_array(value):
                value = np.asarray(value)
            if tuple(value.shape) != tuple(current.shape):
                problems.append(f"{key}: expected shape {tuple(current.shape)}, got {tuple(value.shape)}")
                continue
            converted[key] = to_device(value, device_of(current))
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__} failed: " + "; ".join(problems))
        for key, value in converted.items():
            mod, name, kind = targets[key]
            current = mod._parameters[name].data if kind == "param" else mod._buffers[name]
            get_array_module(current).copyto(current, value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -- printing ------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """One line of this module's configuration, shown by repr (override in layers)."""
        return ""

    def __repr__(self) -> str:
        children = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        return head + "\n  " + "\n  ".join(children) + "\n)"


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... (torch's state_dict keys).

    >>> net = Sequential(Linear(64, 32), ReLU(), Linear(32, 10))
    """

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.register_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential argument {i} is a {type(m).__name__}, expected a Module")
                self.register_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):  # keeps the children's names, as torch does
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def append(self, module: Module) -> Sequential:
        self.register_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (indexable, iterable)."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        self.register_module(str(len(self._modules)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]


class ModuleDict(Module):
    """A dict of named child modules."""

    def __init__(self, modules: dict | None = None):
        super().__init__()
        for name, m in (modules or {}).items():
            self.register_module(name, m)

    def __getitem__(self, name: str) -> Module:
        return self._modules[name]

    def __setitem__(self, name: str, module: Module) -> None:
        self.register_module(name, module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()
