"""Shared fixtures: every test starts from the default dtype and a fixed random seed."""

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
