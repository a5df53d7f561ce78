"""Helpers shared by the layers: allocating parameters on a device with a dtype."""

from __future__ import annotations

from ...backend import as_device, get_default_dtype, resolve_dtype
from ...spec import check_int
from ..parameter import Parameter


def new_parameter(shape, device=None, dtype=None) -> Parameter:
    """An uninitialised float Parameter of ``shape`` (the layer's reset_parameters fills it)."""
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else resolve_dtype(dtype)
    with dev.context():
        return Parameter(dev.xp.empty(tuple(shape), dtype=dt))


def check_positive_int(owner: str, **values) -> None:
    """Raise ValueError naming the argument unless every value is an int >= 1 (bools are not ints)."""
    for name, v in values.items():
        check_int(f"{owner}: {name}", v, 1)
