"""The registry of compressors by name, and :func:`get`: a compressor from its spec."""

from __future__ import annotations

from typing import Any

from ...spec import SpecError, parse_spec
from .base import CompressionError, Compressor
from .cast import BF16Compressor, FP16Compressor, NoCompression
from .powersgd import PowerSGDCompressor
from .quantize import QSGDCompressor, SignSGDCompressor
from .sparse import RandomKCompressor, TopKCompressor

__all__ = ["COMPRESSORS", "get"]

COMPRESSORS: dict[str, type[Compressor]] = {
    cls.name: cls
    for cls in (NoCompression, FP16Compressor, BF16Compressor, PowerSGDCompressor, TopKCompressor,
                RandomKCompressor, QSGDCompressor, SignSGDCompressor)
}


def _forms() -> str:
    return ", ".join(f"{n}:{c.argument[0]}" if c.argument else n for n, c in COMPRESSORS.items())


def get(spec: str | Compressor | None = None) -> Compressor:
    """A new compressor from its spec (case-insensitive); None means "none"; a Compressor is returned as is.

    Specs (dtrain.spec's ``NAME[:ARG][:key=value...]``): ``none``, ``fp16``, ``bf16``, ``powersgd:RANK``,
    ``topk:RATIO``, ``randomk:RATIO``, ``qsgd:LEVELS``, ``signsgd``, optionally followed by options
    (``ef=0|1`` for topk/randomk/signsgd/powersgd, ``start=N`` for powersgd, ``seed=N`` for
    randomk/qsgd/powersgd, ``bucket=N`` for qsgd). Raises CompressionError naming the spec and what
    was expected.

    >>> get("TopK:0.01").spec
    'topk:0.01'
    """
    if spec is None:
        return NoCompression()
    if isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise CompressionError(f"compression spec must be a string such as 'topk:0.01' (or None), got "
                               f"{type(spec).__name__} {spec!r}")
    method = spec.strip().lower().split(":")[0].strip()
    cls = COMPRESSORS.get(method)
    if cls is None:
        raise CompressionError(f"unknown compression {spec!r}: expected one of {_forms()}")
    try:
        return cls(**_arguments(cls, spec))
    except CompressionError as exc:
        raise CompressionError(f"compression {spec!r}: {exc}") from None


def _arguments(cls: type[Compressor], spec: str) -> dict[str, Any]:
    """The constructor arguments of ``cls`` that ``spec`` gives."""
    try:
        parsed = parse_spec(spec.lower())
    except SpecError as exc:
        if exc.problem == "duplicate":
            raise CompressionError(f"option {exc.field!r} given twice") from None
        raise CompressionError(f"unexpected parameter {exc.field!r}: {_accepted(cls.name)}") from None
    kwargs: dict[str, Any] = {}
    if cls.argument is not None:
        placeholder, keyword, parse, example = cls.argument
        if parsed.arg is None:
            raise CompressionError(f"expected {cls.name}:{placeholder} (e.g. {cls.name}:{example})")
        kwargs[keyword] = parse(parsed.arg)
    elif parsed.arg is not None:
        raise CompressionError(f"unexpected parameter {parsed.arg!r}: {_accepted(cls.name)}")
    for opt, value in parsed.options:
        if opt not in cls.options:
            raise CompressionError(f"unexpected parameter '{opt}={value}': {_accepted(cls.name)}")
        keyword, parse = cls.options[opt]
        kwargs[keyword] = parse(value)
    return kwargs


def _accepted(method: str) -> str:
    cls = COMPRESSORS.get(method)
    if cls is None or not cls.options:
        return f"{method} takes no parameters"
    return f"{method} accepts the options " + ", ".join(f"{o}=..." for o in cls.options)
