"""Shared by the virtual-cluster tests: the clusters' names, the skip reasons, what a cluster leaves behind
(:func:`leftovers`, so that every test can assert that nothing of its cluster outlives it), a cluster
object and an mpiexec that need no root (:func:`fake_cluster`, :func:`fake_mpiexec`), and a job run in the
background (:class:`Background`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dtrain.cluster import Node, VirtualCluster, support_problem

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RANKS = HERE / "ranks"
NAME = "ht"  # the shared cluster of the session (conftest.py's `cluster` fixture)
SPARE = "ht2"  # built and taken down by the lifecycle tests themselves
LINK = "10gbit"  # fast: the tests count bytes, they do not time the link

PROBLEM = support_problem()
needs_root = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) not installed")


def rank_env() -> dict[str, str]:
    """Extra environment of the ranks: the repository importable, tracebacks on crashes."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PYTHONFAULTHANDLER": "1"}


def python(script: str, *args) -> list[str]:
    """The argv that runs ``ranks/SCRIPT`` (or ``-m dtrain`` when ``script`` is "dtrain") on a rank."""
    head = ["-m", "dtrain"] if script == "dtrain" else [str(RANKS / script)]
    return [sys.executable, *head, *map(str, args)]


def leftovers(name: str) -> list[str]:
    """Every namespace, veth and bridge of cluster ``name`` that still exists (empty once it is down)."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = re.findall(rf"^(dtrain-{name}-n\d+)\b", spaces, flags=re.M)
    found += re.findall(rf"^\d+: (dtv-{name}-\d+|dtbr-{name})[@:]", links, flags=re.M)
    return found


def tc_rate(dev: str, namespace: str | None = None) -> str:
    """The rate of ``dev``'s root tbf as tc prints it (``200Mbit``)."""
    cmd = ["tc", "qdisc", "show", "dev", dev]
    if namespace:
        cmd = ["ip", "netns", "exec", namespace, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = re.search(r"qdisc tbf \S+ root .*?\brate (\S+)", out)
    assert found, f"no root tbf on {dev}: {out!r}"
    return found.group(1)


def fake_cluster(nodes: int, name: str = "ht", subnet: int = 7) -> VirtualCluster:
    """A cluster object with the layout VirtualCluster.up gives, built without touching the machine."""
    return VirtualCluster(name, subnet, [
        Node(i, f"dtrain-{name}-n{i}", f"198.18.{subnet}.{10 + i}", f"{name}-node{i}", f"dtv-{name}-{i}", 10**9)
        for i in range(nodes)])


def fake_mpiexec(tmp_path, version_line: str) -> str:
    """An executable that answers ``--version`` as an MPI launcher would."""
    path = tmp_path / "mpiexec"
    path.write_text(f"#!/bin/sh\necho '{version_line}'\necho '    Version:   4.2.0'\n")
    path.chmod(0o755)
    return str(path)


class Background:
    """``cluster.run(...)`` on a thread: ``.done`` says whether it ended, ``.result()`` waits for it."""

    def __init__(self, cluster, *args, **kwargs):
        self._out: dict = {}
        self._thread = threading.Thread(target=self._work, args=(cluster, args, kwargs), daemon=True)
        self._thread.start()

    def _work(self, cluster, args, kwargs) -> None:
        try:
            self._out["result"] = cluster.run(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread by result()
            self._out["error"] = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the job did not end within {timeout} s"
        if "error" in self._out:
            raise self._out["error"]
        return self._out["result"]
