"""Helpers shared by the layers: allocating parameters on a device with a dtype."""

from __future__ import annotations

from ...backend import as_device, get_default_dtype, resolve_dtype
from ..parameter import Parameter


def new_parameter(shape, device=None, dtype=None) -> Parameter:
    """An uninitialised float Parameter of ``shape`` (the layer's reset_parameters fills it)."""
    dev = as_device(device)
    dt = get_default_dtype() if dtype is None else resolve_dtype(dtype)
    with dev.context():
        return Parameter(dev.xp.empty(tuple(shape), dtype=dt))


def check_positive_int(owner: str, **values) -> None:
    """Raise ValueError naming the argument unless every value is an int >= 1."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {v!r}")
