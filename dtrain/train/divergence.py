"""Divergence checks: are the ranks still training the same model, and were they started alike?

Data-parallel ranks hold bit-identical parameters after every step. :class:`DivergenceGuard` compares
a digest of the parameters across the ranks every ``every`` steps and at the end; the comparison
itself (which ranks agree, which parameter differs first) and the cross-rank option check are pure
functions here, used by the MPI collectives in ``ddp_sync``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..backend import to_device
from ..spec import check_int

__all__ = ["PER_RANK_OPTIONS", "DivergenceGuard", "comparable_config", "config_mismatch", "describe_divergence",
           "param_digests"]

PER_RANK_OPTIONS = ("progress",)  # options that may differ between ranks


def param_digests(model) -> list[tuple[str, str]]:
    """[(name, 16-byte BLAKE2b of the bytes)] for every parameter, in registration order: what ranks compare
    to detect divergence (buffers such as BatchNorm running statistics are per rank by design)."""
    out = []
    for name, p in model.named_parameters():
        a = np.ascontiguousarray(to_device(p.data, "cpu"))
        out.append((name, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()))
    return out


def describe_divergence(everyone: list, step: int | None = None) -> str | None:
    """None when every rank's digests (``everyone[r]`` = rank r's :func:`param_digests`) agree, else a message
    naming the first differing parameter and which ranks agree on it."""
    if all(d == everyone[0] for d in everyone):
        return None
    when = f" at step {step}" if step is not None else ""
    names = [n for n, _ in everyone[0]]
    if any([n for n, _ in d] != names for d in everyone):
        return f"parameters diverged across ranks{when}: the ranks hold differently named parameters"
    differing = [i for i, n in enumerate(names) if len({d[i][1] for d in everyone}) > 1]
    first = differing[0]
    groups: dict[str, list[int]] = {}
    for r, d in enumerate(everyone):
        groups.setdefault(d[first][1], []).append(r)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    detail = "; ".join(f"rank{'s' if len(g) > 1 else ''} {', '.join(map(str, g))} "
                       f"{'agree' if len(g) > 1 else 'has its own value'}" for g in ordered)
    return (f"parameters diverged across ranks{when}: first differing parameter {names[first]!r} ({detail}); "
            f"{len(differing)} of {len(names)} parameters differ. Ranks must run the same code, data order and "
            "seeds; a rank whose memory or arithmetic is faulty also shows up here")


def comparable_config(config: dict) -> str:
    """The options every rank must share, as canonical JSON (what the ranks exchange to compare)."""
    mine = {k: v for k, v in config.items() if k not in PER_RANK_OPTIONS}
    return json.dumps(mine, sort_keys=True, default=str)


def config_mismatch(everyone: list[str]) -> str | None:
    """None when every rank's :func:`comparable_config` is the same, else a message naming the options and ranks."""
    if all(e == everyone[0] for e in everyone):
        return None
    configs = [json.loads(e) for e in everyone]
    problems = []
    for key in sorted(set().union(*configs)):
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values):
            odd = [r for r, v in enumerate(values) if v != values[0]]
            problems.append(f"{key} is {values[0]!r} on rank 0 but "
                            + ", ".join(f"{values[r]!r} on rank {r}" for r in odd[:3])
                            + (f" (and {len(odd) - 3} more ranks)" if len(odd) > 3 else ""))
    return "the ranks were started with different options: " + "; ".join(problems)


class DivergenceGuard:
    """Compare the parameters across ranks every ``every`` optimizer steps (0: only at the end of training).

    Each check is a collective (one small allgather), so every rank calls it at the same steps.
    """

    def __init__(self, every: int = 0):
        self.every = check_int("check_every", every, 0, expected="a non-negative integer")

    def after_step(self, model, collectives, step: int) -> None:
        """The periodic check, after optimizer step ``step``."""
        if self.every and step % self.every == 0:
            collectives.check_identical(param_digests(model), step)

    def at_end(self, model, collectives, step: int) -> None:
        """The final check: raises on every rank if training ended with diverged parameters."""
        collectives.check_identical(param_digests(model), step)
