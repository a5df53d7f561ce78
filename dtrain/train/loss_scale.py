"""Loss scaling: multiply the loss before backward so small half-precision gradients do not underflow.

Gradients are divided by the scale again after the all-reduce, before clipping and the optimizer
step. A power-of-two scale changes no bits when nothing overflows or underflows. With a dynamic scale
a step whose (all-reduced, so identical on every rank) gradients are non-finite is skipped on every
rank and the scale backs off; after ``growth_interval`` good steps in a row it grows again. The
scale is part of the training state, saved in checkpoints. Mixed precision (``--precision
fp16|bf16``) turns dynamic scaling on; ``--loss-scale`` sets it explicitly.
"""

from __future__ import annotations

import math

from ..spec import check_int

__all__ = ["LossScaler", "make_loss_scaler"]


class LossScaler:
    """A fixed (``dynamic=False``) or dynamic loss scale.

    Args:
        init_scale: the starting scale (a power of two keeps results exact).
        dynamic: back off on non-finite gradients and grow after ``growth_interval`` good steps.
        growth_factor, backoff_factor: what the scale is multiplied by when it grows or backs off.
        growth_interval: good steps in a row before the scale grows.
        min_scale: a dynamic scale that would drop below this raises FloatingPointError (the gradients
            are non-finite whatever the scale: the model diverged).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, dynamic: bool = True, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 2.0 ** -24):
        for name, v in (("init_scale", init_scale), ("growth_factor", growth_factor), ("min_scale", min_scale)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        check_int("growth_interval", growth_interval, 1)
        self.scale = float(init_scale)
        self.dynamic = bool(dynamic)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.min_scale = growth_interval, float(min_scale)
        self.good_steps = 0  # finite steps in a row since the last change
        self.backoffs = 0  # times the scale backed off

    def update(self, finite: bool) -> None:
        """Record one step's outcome (the same on every rank): back off, or count towards growth."""
        if not self.dynamic:
            return
        if not finite:
            new = self.scale * self.backoff_factor
            if new < self.min_scale:
                raise FloatingPointError(f"the gradients are non-finite even with the loss scale at {self.scale:g}; "
                                         "the model diverged (lower --lr or check the input data)")
            self.scale, self.good_steps = new, 0
            self.backoffs += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "backoffs": self.backoffs}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.backoffs = int(state.get("backoffs", 0))

    def __repr__(self) -> str:
        kind = "dynamic" if self.dynamic else "fixed"
        return f"LossScaler({kind}, scale={self.scale:g})"


def make_loss_scaler(spec: str | float | None) -> LossScaler | None:
    """'none'/None -> None; 'dynamic' -> a dynamic LossScaler; a number -> that fixed scale."""
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec).lower() == "dynamic":
        return LossScaler(dynamic=True)
    try:
        value = float(spec)
    except ValueError:
        raise ValueError(f"loss scale must be 'none', 'dynamic' or a positive number, got {spec!r}") from None
    return LossScaler(init_scale=value, dynamic=False)
