"""The supervisor's front ends: ``dtrain launch --max-restarts`` (this machine, or the hosts a discovery
script prints) and ``dtrain cluster run --max-restarts`` (the virtual cluster's nodes whose link is up)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from .supervisor import ElasticError, Launch, supervise

__all__ = ["cluster_elastic", "discover_hosts", "launch_elastic", "parse_hosts", "split_train_command"]

HOSTS_CMD_TIMEOUT_S = 60.0


# -- hosts ------------------------------------------------------------------------------------------------

_HOST_LINE = re.compile(r"([A-Za-z0-9_.\-]+)(?:(?::|\s+)(\d+))?")


def parse_hosts(text: str, source: str = "the hosts script") -> list[tuple[str, int]]:
    """``host:slots`` (or ``host slots``, or ``host`` for one slot) per line, Horovod's host-discovery format;
    blank lines and ``#`` comments are skipped. ElasticError names a bad line."""
    hosts: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _HOST_LINE.fullmatch(line)
        if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ElasticError(f"{source}, line {number}: {raw.strip()!r}: expected HOST:SLOTS (e.g. node1:4)")
        hosts.append((m.group(1), int(m.group(2) or 1)))
    return hosts


def discover_hosts(command: str) -> list[tuple[str, int]]:
    """Run ``command`` (through the shell) and parse its output with :func:`parse_hosts`."""
    try:
        res = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=HOSTS_CMD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ElasticError(f"--hosts-cmd {command!r} did not finish within {HOSTS_CMD_TIMEOUT_S:g} s") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        raise ElasticError(f"--hosts-cmd {command!r} failed with exit status {res.returncode}: {tail[0]}")
    return parse_hosts(res.stdout, f"--hosts-cmd {command!r}")


def launch_elastic(n: int | str, train_args: Sequence[str], cfg: Mapping, *, max_restarts: int, min_ranks: int = 1,
                   hosts_cmd: str | None = None, device: str = "cpu", mpiexec: str | None = None,
                   python: str | None = None, threads: int = 1, bind: str | None = None) -> int:
    """``dtrain launch --max-restarts``: the job on this machine (``-n``), or on the hosts ``hosts_cmd`` prints
    before every attempt (MPICH ``-hosts`` / Open MPI ``--host``, ranks filling each host's slots in order)."""
    from ..launch import build_command, find_mpiexec, mpiexec_version, resolve_ranks

    python = python or sys.executable
    exe = find_mpiexec(mpiexec, python)
    version = mpiexec_version(exe)
    if hosts_cmd is None:
        ranks = resolve_ranks(n, device, threads)
        current: list[tuple[str, int]] | None = None
    else:
        if n == "auto":
            raise ElasticError("-n auto counts this machine's cores or GPUs; with --hosts-cmd give -n N (the most "
                               "ranks to start)")
        ranks = int(n)
        current = discover_hosts(hosts_cmd)  # a broken script is an error before anything starts

    def capacity() -> int:
        nonlocal current
        if hosts_cmd is None:
            return ranks
        if current is None:
            current = discover_hosts(hosts_cmd)
        return sum(slots for _, slots in current)

    def start(count: int, args: list[str], extra: dict[str, str]) -> Launch:
        nonlocal current
        hosts = None
        if current is not None:
            hosts, left = [], count
            for host, slots in current:
                if left <= 0:
                    break
                hosts.append((host, min(slots, left)))
                left -= slots
            current = None  # asked again before the next attempt
        environ = {**os.environ, **extra}
        cmd = build_command(count, mpiexec=exe, version_text=version, python=python, device=device,
                            threads=threads, bind=bind, train_args=args, environ=environ, hosts=hosts)
        where = f" on {','.join(f'{h}:{s}' for h, s in hosts)}" if hosts else ""
        return Launch(cmd, environ, where=where)

    return supervise(start, capacity, train_args, cfg, ranks=ranks, max_restarts=max_restarts, min_ranks=min_ranks)


def cluster_elastic(name: str, n: int, argv: Sequence[str], cfg: Mapping, *, max_restarts: int, min_ranks: int = 1,
                    ppn: int | None = None, mpiexec: str | None = None) -> int:
    """``dtrain cluster run --max-restarts``: the job on the virtual cluster's nodes whose link is up (read
    again before every attempt, so a node whose link died is left out), ``ppn`` ranks per node."""
    from ..cluster.cluster import VirtualCluster
    from ..cluster.launcher import job_launch, reap_job

    prefix, train_args = split_train_command(argv)
    per_node = ppn or -(-n // len(VirtualCluster.attach(name).nodes))

    def capacity() -> int:
        return per_node * len(VirtualCluster.attach(name).live_nodes())

    def start(count: int, args: list[str], extra: dict[str, str]) -> Launch:
        cluster = VirtualCluster.attach(name)
        live = cluster.live_nodes()
        cmd, environ, tag = job_launch(cluster, count, [*prefix, *args], ppn=per_node, mpiexec=mpiexec, env=extra,
                                       nodes=[node.index for node in live])
        used = -(-count // per_node)
        where = f" on node{'s' if used > 1 else ''} {', '.join(str(node.index) for node in live[:used])}"
        return Launch(cmd, environ, cleanup=lambda: reap_job(cluster, tag), where=where)

    return supervise(start, capacity, train_args, cfg, ranks=n, max_restarts=max_restarts, min_ranks=min_ranks)


def split_train_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(["dtrain", "train"], [ARGS...])`` from ``dtrain train ARGS`` (or ``PY -m dtrain train ARGS``):
    what a supervised cluster job runs; ElasticError for any other command."""
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if argv[i + 1] == "train" and os.path.basename(a) == "dtrain":  # also PY -m dtrain train
            return argv[:i + 2], argv[i + 2:]
    raise ElasticError(f"--max-restarts supervises dtrain train: give -- dtrain train [OPTIONS] (got "
                       f"{shlex.join(argv) or 'no command'})")
