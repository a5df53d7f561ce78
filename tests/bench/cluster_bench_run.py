"""Shared by the smoke tests of the benchmarks that run on a virtual cluster (``tests/bench/test_cluster_*.py``):
the benchmark's own parser and its refusals, one run of its entry point on a cluster of the test's own
name, and the check that the cluster is gone afterwards."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.cluster import VirtualCluster

CHECKOUT = Path(__file__).resolve().parents[2]


def parser_of(module) -> argparse.ArgumentParser:
    """The parser of benchmark ``module`` (a dtrain.bench module), as ``dtrain bench NAME`` builds it."""
    p = argparse.ArgumentParser(prog=module.__name__.rsplit(".", 1)[-1])
    module.add_arguments(p)
    return p


def parse_error(module, argv: list[str]) -> str:
    """What the parser of ``module`` prints when it refuses ``argv`` (it must exit with status 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        parser_of(module).parse_args(argv)
    assert exc.value.code == 2
    return err.getvalue()


def run_error(module, argv: list[str]) -> str:
    """The message with which ``module.run`` refuses ``argv`` (parsed fine) before it brings anything up."""
    with pytest.raises(SystemExit) as exc:
        module.run(parser_of(module).parse_args(argv))
    return str(exc.value.code)


def run_benchmark(name: str, argv: list[str], cluster: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``benchmarks/NAME.py *argv`` in a process of its own, as users do (the benchmark re-executes itself
    to pin one BLAS thread), on the cluster named ``cluster``; fail the test with its output unless it
    exits 0."""
    done = subprocess.run([sys.executable, str(CHECKOUT / "benchmarks" / f"{name}.py"), *argv],
                          env={**os.environ, "DTRAIN_BENCH_CLUSTER": cluster}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_cluster_gone(cluster: str) -> None:
    """No state file and no namespace of ``cluster`` is left."""
    assert cluster not in VirtualCluster.running()
    assert f"dtrain-{cluster}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
