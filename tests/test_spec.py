"""dtrain.spec: the one NAME[:ARG][:key=value...] grammar, the int checks and the typed value parsers."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.spec import Spec, SpecError, boolean, check_int, choice, integer, is_int, is_real, parse_spec, real


@pytest.mark.parametrize("text, name, arg, options", [
    ("topk:0.01", "topk", "0.01", ()),
    ("PowerSGD:2:start=10", "powersgd", "2", (("start", "10"),)),
    ("randomk:0.01:ef=0:seed=3", "randomk", "0.01", (("ef", "0"), ("seed", "3"))),
    ("digits", "digits", None, ()),
    ("  none  ", "none", None, ()),
    ("synthetic:n=20000,features=32,task=regression", "synthetic", None,
     (("n", "20000"), ("features", "32"), ("task", "regression"))),
    ("synthetic:n=20000:features=32,task=Regression", "synthetic", None,
     (("n", "20000"), ("features", "32"), ("task", "Regression"))),
    ("synthetic: n = 5 ,, ", "synthetic", None, (("n", "5"),)),
    ("none:ef=0", "none", None, (("ef", "0"),)),
    ("qsgd:", "qsgd", None, ()),
])
def test_parse_spec(text, name, arg, options):
    assert parse_spec(text) == Spec(name, arg, options, text)


@pytest.mark.parametrize("text, arg", [
    ("mnist:~/data/mnist", "~/data/mnist"),
    ("npz:/data/a:b,c=d.npz", "/data/a:b,c=d.npz"),
    ("text:My Book.txt ", "My Book.txt"),
    ("text", None),
    ("text:", None),
])
def test_parse_spec_path_keeps_the_rest_verbatim(text, arg):
    spec = parse_spec(text, path=True)
    assert (spec.name, spec.arg, spec.options) == (text.partition(":")[0], arg, ())


def test_canonical_form_and_option_dict():
    spec = parse_spec("Synthetic:n=10,task=regression")
    assert str(spec) == "synthetic:n=10:task=regression"
    assert spec.option_dict() == {"n": "10", "task": "regression"}
    assert str(parse_spec("powersgd:2:start=10")) == "powersgd:2:start=10"


@pytest.mark.parametrize("text, message, field, problem", [
    ("powersgd:2:warm", "option 'warm' is not key=value", "warm", "not-key-value"),
    ("topk:0.1:0.2", "option '0.2' is not key=value", "0.2", "not-key-value"),
    ("synthetic:n=1,=2", "option '=2' is not key=value", "=2", "not-key-value"),
    ("synthetic:n=5,n=6", "option 'n' is given twice", "n", "duplicate"),
    ("topk:0.1:ef=0:ef=1", "option 'ef' is given twice", "ef", "duplicate"),
])
def test_parse_spec_errors(text, message, field, problem):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert (str(info.value), info.value.field, info.value.problem) == (message, field, problem)
    assert isinstance(info.value, ValueError)


def test_parse_spec_needs_a_string():
    with pytest.raises(TypeError, match=r"^a spec must be a string such as 'name:arg:key=value', got int 42$"):
        parse_spec(42)


@pytest.mark.parametrize("value, expected", [
    (3, True), (np.int64(3), True), (np.uint8(0), True), (-1, True),
    (True, False), (np.bool_(True), False), (3.0, False), ("3", False), (None, False), (np.float32(1), False),
])
def test_is_int(value, expected):
    assert is_int(value) is expected


@pytest.mark.parametrize("value, expected", [
    (3, True), (2.5, True), (np.float32(1), True), (np.int8(2), True),
    (True, False), (np.bool_(False), False), (1j, False), ("1", False),
])
def test_is_real(value, expected):
    assert is_real(value) is expected


def test_check_int():
    assert check_int("epochs", np.int32(3), 1) == 3 and type(check_int("epochs", np.int32(3), 1)) is int
    assert check_int("seed", 0, 0) == 0
    assert check_int("levels", 127, 2, 127) == 127


@pytest.mark.parametrize("args, kwargs, message", [
    (("epochs", 0, 1), {}, "epochs must be a positive integer, got 0"),
    (("epochs", True, 1), {}, "epochs must be a positive integer, got True"),
    (("seed", -1, 0), {}, "seed must be an integer >= 0, got -1"),
    (("levels", 128, 2, 127), {}, "levels must be an integer in [2, 127], got 128"),
    (("x", 2.0), {}, "x must be an integer, got 2.0"),
    (("top", 9, None, 8), {}, "top must be an integer <= 8, got 9"),
    (("seed", -1, 0), {"expected": "a non-negative integer"}, "seed must be a non-negative integer, got -1"),
])
def test_check_int_errors(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_int(*args, **kwargs)
    assert str(info.value) == message


def test_check_int_raises_the_given_error_class():
    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match=r"^n must be a positive integer, got '3'$"):
        check_int("n", "3", 1, error=MyError)


def test_integer_parser():
    positive = integer(minimum=1)
    assert [positive(v) for v in ("12", " +3 ", 7, np.int16(2))] == [12, 3, 7, 2]
    for bad in ("0", "-3", "2.5", "x", "", 2.5, True, 0):
        with pytest.raises(ValueError, match=r"^expected a positive integer$"):
            positive(bad)
    assert integer()("-4") == -4
    with pytest.raises(ValueError, match=r"^expected an integer in \[2, 127\]$"):
        integer(2, 127)("128")
    with pytest.raises(ValueError, match=r"^expected an integer >= 0$"):
        integer(minimum=0)("-1")


def test_real_parser():
    nonneg = real(minimum=0)
    assert [nonneg(v) for v in ("0.5", "1e-3", 2, np.float32(0.25), " 0 ")] == [0.5, 1e-3, 2.0, 0.25, 0.0]
    for bad in ("-1", "nan", "inf", "x", True, float("inf")):
        with pytest.raises(ValueError, match=r"^expected a non-negative number$"):
            nonneg(bad)
    with pytest.raises(ValueError, match=r"^expected a number in \[0, 1\]$"):
        real(0, 1)("1.5")
    with pytest.raises(ValueError, match=r"^expected a number$"):
        real()("abc")


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("Yes", True), (" ON ", True), (True, True), (np.bool_(True), True), (1, True),
    ("0", False), ("false", False), ("NO", False), ("off", False), (False, False), (0, False), (np.int64(0), False),
])
def test_boolean(value, expected):
    assert boolean(value) is expected


@pytest.mark.parametrize("value", ["2", "maybe", "", 2, 0.0, None, "t"])
def test_boolean_rejects(value):
    with pytest.raises(ValueError, match=r"^expected true or false$"):
        boolean(value)


def test_choice():
    task = choice("classification", "regression")
    assert task(" regression ") == "regression"
    with pytest.raises(ValueError, match=r"^expected one of classification, regression$"):
        task("Regression")
