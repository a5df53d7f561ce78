"""One grammar for everything spec-shaped: ``NAME[:ARG][:key=value...]``, and typed value parsers.

    >>> parse_spec("PowerSGD:2:start=10")
    Spec(name='powersgd', arg='2', options=(('start', '10'),), text='PowerSGD:2:start=10')
    >>> parse_spec("synthetic:n=200,task=regression").options   # commas separate options too
    (('n', '200'), ('task', 'regression'))
    >>> parse_spec("mnist:~/data/a:b", path=True).arg               # a path ARG is the rest, verbatim
    '~/data/a:b'
    >>> integer(minimum=1)("12"), boolean("off"), choice("sum", "mean")("mean")
    (12, False, 'mean')

The grammar (compression specs such as ``topk:0.01:ef=0``, dataset specs such as ``npz:FILE`` or
``synthetic:n=100:features=4``):

* ``NAME`` is the text before the first ``:``, stripped and lower-cased (names are case-insensitive).
* With ``path=True`` the ARG is everything after the first ``:`` (stripped, case kept, may hold ``:``
  and ``,``) and there are no options.
* Otherwise the rest is split at ``:``; the first field is the ARG unless it contains ``=``; every
  other field is ``key=value`` and may hold several, separated by ``,`` (``n=10,task=regression``).
  Empty fields are skipped. Keys are stripped; values are stripped, case kept.

Parsing is structural only: which ARG and keys a NAME accepts, and what their values mean, is the
caller's business (its own messages name the thing being configured). The value parsers below take a
spec string *or* a Python value (keyword arguments) and raise ValueError("expected ...").

Stdlib only, and imports nothing from dtrain (every layer may use it). ``is_int`` treats NumPy integers
as integers (NumPy registers them as ``numbers.Integral``) and bools, Python's or NumPy's (which is no
``numbers.Integral``), as not.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Spec",
    "SpecError",
    "boolean",
    "check_int",
    "choice",
    "integer",
    "is_int",
    "is_real",
    "parse_spec",
    "real",
]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class SpecError(ValueError):
    """A spec that does not follow the grammar.

    Attributes:
        field: the offending raw field (e.g. ``'warm'`` in ``powersgd:2:warm``, or the repeated key).
        problem: ``"not-key-value"`` or ``"duplicate"``.
    """

    def __init__(self, message: str, field: str, problem: str):
        super().__init__(message)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Spec:
    """A parsed ``NAME[:ARG][:key=value...]``.

    Attributes:
        name: NAME, stripped and lower-cased.
        arg: the positional ARG (stripped), or None when absent or empty.
        options: ``(key, value)`` pairs in the order given (raw strings; keys unique).
        text: the spec as given.
    """

    name: str
    arg: str | None
    options: tuple[tuple[str, str], ...]
    text: str

    def option_dict(self) -> dict[str, str]:
        """The options as a dict (insertion order kept)."""
        return dict(self.options)

    def __str__(self) -> str:
        """The canonical spelling: ``name[:arg][:key=value...]`` with ``:`` between all fields."""
        fields = [self.name] + ([self.arg] if self.arg is not None else [])
        return ":".join(fields + [f"{k}={v}" for k, v in self.options])


def _option_pairs(field: str) -> list[tuple[str, str]]:
    pairs = []
    for item in field.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"option {item.strip()!r} is not key=value", item.strip(), "not-key-value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_spec(text: str, *, path: bool = False) -> Spec:
    """Split ``text`` into NAME, ARG and options (see the module docstring for the grammar).

    Args:
        text: the spec, e.g. ``"topk:0.01:ef=0"``.
        path: the ARG is a file or folder: everything after the first ``:``, verbatim; no options.

    Raises:
        TypeError: ``text`` is not a string.
        SpecError: an option field is not ``key=value`` (``problem="not-key-value"``) or a key is
            repeated (``problem="duplicate"``); ``field`` names it.
    """
    if not isinstance(text, str):
        raise TypeError(f"a spec must be a string such as 'name:arg:key=value', got {type(text).__name__} {text!r}")
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if path:
        return Spec(name, rest.strip() or None, (), text)
    fields = [f.strip() for f in rest.split(":")] if rest else []
    arg = None
    if fields and "=" not in fields[0]:
        arg = fields.pop(0) or None
    pairs: list[tuple[str, str]] = []
    for field in fields:
        for key, value in _option_pairs(field):
            if any(key == seen for seen, _ in pairs):
                raise SpecError(f"option {key!r} is given twice", key, "duplicate")
            pairs.append((key, value))
    return Spec(name, arg, tuple(pairs), text)


# ---------------------------------------------------------------------------------------------
# Type checks
# ---------------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (Python's or NumPy's) and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    # NumPy's bool (numpy.bool_) without importing NumPy: it is not a numbers.Integral.
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def is_real(value: Any) -> bool:
    """True for Python and NumPy ints and floats (not bools, not complex)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_expected(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum == 1:
        return "a positive integer"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
              expected: str | None = None, error: type[Exception] = ValueError) -> int:
    """``int(value)`` when ``value`` is an integer (not a bool) in ``[minimum, maximum]``, else raise.

    The message is ``"{name} must be {expected}, got {value!r}"``; ``expected`` defaults to e.g.
    ``"a positive integer"`` (minimum 1), ``"an integer >= 0"``, ``"an integer in [2, 127]"``.
    ``error`` is the exception class to raise (a ValueError subclass such as DatasetError).

    >>> check_int("epochs", 3, 1)
    3
    """
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(f"{name} must be {expected or _int_expected(minimum, maximum)}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Value parsers: a spec string or a Python value -> the typed value, or ValueError("expected ...")
# ---------------------------------------------------------------------------------------------

_INT_TEXT = re.compile(r"[+-]?\d+")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    """A parser of integers in ``[minimum, maximum]``: ``"12"``, ``"+3"``, ``12`` (not ``"2.5"``, ``True``).

    It raises ValueError("expected a positive integer") (or "an integer >= 0", "an integer in [2, 127]")."""
    expected = f"expected {_int_expected(minimum, maximum)}"

    def parse(value: Any) -> int:
        if isinstance(value, str):
            if not _INT_TEXT.fullmatch(value.strip()):
                raise ValueError(expected)
            value = int(value.strip())
        if not is_int(value) or (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum):
            raise ValueError(expected)
        return int(value)

    return parse


def real(minimum: float | None = None, maximum: float | None = None) -> Callable[[Any], float]:
    """A parser of finite numbers in ``[minimum, maximum]``: ``"0.5"``, ``1e-3``, ``2`` (not nan, inf, ``True``).

    It raises ValueError("expected a non-negative number") (minimum 0), or "a number in [a, b]", ">= a",
    "<= b", "a number"."""
    if minimum is not None and maximum is not None:
        expected = f"expected a number in [{minimum}, {maximum}]"
    elif minimum == 0:
        expected = "expected a non-negative number"
    elif minimum is not None:
        expected = f"expected a number >= {minimum}"
    else:
        expected = f"expected a number <= {maximum}" if maximum is not None else "expected a number"

    def parse(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(expected) from None
        if not is_real(value) or not math.isfinite(value) or (minimum is not None and value < minimum) or (
                maximum is not None and value > maximum):
            raise ValueError(expected)
        return float(value)

    return parse


def boolean(value: Any) -> bool:
    """Parse a flag: a bool, the integers 0/1, or (any case) ``1/true/yes/on`` and ``0/false/no/off``.

    Raises ValueError("expected true or false") otherwise."""
    if _is_bool(value):
        return bool(value)
    if is_int(value) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    raise ValueError("expected true or false")


def choice(*choices: str) -> Callable[[Any], str]:
    """A parser that accepts exactly one of ``choices`` (stripped, case kept); ValueError("expected one of a, b")."""

    def parse(value: Any) -> str:
        text = value.strip() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse
