"""Shared fixtures: every test starts from the default dtype and a fixed random seed; ``no_hang`` runs a
call that might block (a FIFO opened for reading) in a thread and fails the test instead of hanging it."""

import threading

import numpy as np
import pytest

import dtrain as dt


@pytest.fixture(autouse=True)
def _reset_defaults():
    dt.set_default_dtype(np.float32)
    dt.manual_seed(0)
    yield
    dt.set_default_dtype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _call_without_hanging(fn, *args, seconds: float = 10.0):
    """``fn(*args)`` in a daemon thread: its value (or its exception, re-raised); the test fails, instead of
    hanging, if it has not returned within ``seconds``."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)}{args} blocked for {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def no_hang():
    """``no_hang(fn, *args, seconds=10)``: see :func:`_call_without_hanging`."""
    return _call_without_hanging
