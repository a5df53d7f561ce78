"""Running an MPI job on a virtual cluster: ranks placed per node, bytes between nodes on the links.

MPICH's ``mpiexec`` (Hydra) starts one proxy per host through a launcher; with ``-launcher ssh
-launcher-exec SCRIPT`` the "ssh" is a script written by :func:`write_launcher` that maps the node's
address to its namespace and runs the proxy there, in a UTS namespace of its own whose hostname is the
node's (``dt-node0``...), so that anything grouping ranks by host sees K hosts. ``-localhost`` is the
bridge address (mpiexec's control port must be reachable from the nodes) and ``-hosts A:M,B:M`` places
M consecutive ranks per node.

The transport is chosen so that bytes between nodes really cross the links: MPICH's default UCX netmod
would talk between namespaces through shared memory, so the ranks get ``MPICH_CH4_NETMOD=ofi
FI_PROVIDER=tcp FI_TCP_IFACE=eth0`` (ranks on one node still use shared memory, as on a real node).
Open MPI (``--mpiexec`` pointing at its ``mpiexec``; 5.x tested) gets the same through its own flags: the
daemons start through the same script, TCP is pinned to the cluster subnet and the PML is ob1
(:func:`job_command`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..env import THREAD_VARIABLES, thread_env
from ..launch import is_open_mpi, local_mpiexec, mpiexec_version
from .net import ClusterError, kill_pids, namespace_pids

if TYPE_CHECKING:
    from .cluster import VirtualCluster

__all__ = ["TRANSPORT_ENV", "check_mpiexec", "job_command", "placement", "run_job", "write_launcher"]

# MPICH over TCP on each node's eth0 (the UCX netmod's equivalent: UCX_TLS=tcp,self UCX_NET_DEVICES=eth0).
TRANSPORT_ENV = {"MPICH_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "eth0",
                 "UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0"}
JOB_TAG = "DTRAIN_CLUSTER_JOB"  # in every process of a job, so that the job's leftovers can be found
KILL_GRACE_S = 2.0



def write_launcher(cluster: VirtualCluster) -> None:
    """Write the cluster's "ssh" for Hydra: ``SCRIPT [-x ...] HOST COMMAND`` runs COMMAND in HOST's node."""
    cases = "\n".join(f"  {n.address}) ns={n.namespace}; hn={n.hostname};;" for n in cluster.nodes)
    unshare = shutil.which("unshare")
    if unshare:  # a hostname per node: its own UTS namespace
        run = (f'exec ip netns exec "$ns" {unshare} --uts /bin/sh -c '
               '\'echo "$0" > /proc/sys/kernel/hostname && exec /bin/sh -c "$1"\' "$hn" "$*"')
    else:
        run = 'exec ip netns exec "$ns" /bin/sh -c "$*"'
    script = f"""#!/bin/sh
# dtrain virtual cluster {cluster.name!r}: Hydra's "ssh". Options before the host (-x) are skipped.
while [ $# -gt 0 ] && [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
{cases}
  *) echo "dtrain cluster {cluster.name}: no node has the address $host" >&2; exit 255;;
esac
{run}
"""
    path = cluster.launcher_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)


def placement(cluster: VirtualCluster, n: int, ppn: int | None = None) -> list[tuple[str, int]]:
    """(node address, ranks) per node used: ``ppn`` consecutive ranks per node (default: ``n`` spread evenly,
    ceil(n / nodes) per node). Raises ValueError when ``n`` ranks do not fit."""
    nodes = len(cluster.nodes)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"-n {n!r}: expected a positive number of ranks")
    if ppn is None:
        ppn = -(-n // nodes)
    if not isinstance(ppn, int) or isinstance(ppn, bool) or ppn < 1:
        raise ValueError(f"--ppn {ppn!r}: expected a positive number of ranks per node")
    if n > ppn * nodes:
        raise ValueError(f"-n {n} ranks do not fit on {nodes} nodes at --ppn {ppn} (at most {ppn * nodes})")
    used = -(-n // ppn)
    return [(node.address, min(ppn, n - i * ppn)) for i, node in enumerate(cluster.nodes[:used])]


def check_mpiexec(mpiexec: str | None) -> tuple[str, str]:
    """The launcher (given, else this Python's mpiexec, else PATH's) and its flavour: ``"mpich"`` (Hydra),
    ``"openmpi5"`` (PRRTE) or ``"openmpi4"`` (ORTE); ClusterError for anything else."""
    exe = mpiexec or local_mpiexec()
    if exe is None:
        raise ClusterError("no mpiexec found next to the interpreter or on PATH: pip install mpich")
    try:
        version = mpiexec_version(exe)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    if is_open_mpi(version):
        return exe, "openmpi4" if "openrte" in version.lower() else "openmpi5"
    if "hydra" not in version.lower():
        raise ClusterError(f"{exe} is neither MPICH's mpiexec (Hydra) nor Open MPI's; `--version` said: "
                           f"{version.strip()[:200]}")
    return exe, "mpich"


PLACEMENTS = ("block", "cyclic")


def job_command(cluster: VirtualCluster, n: int, argv: Sequence[str], ppn: int | None = None,
                mpiexec: str | None = None, order: str = "block", forward: Sequence[str] = ()) -> list[str]:
    """The mpiexec command line that runs ``argv`` on ``n`` ranks of ``cluster``. ``order``: ``"block"``
    (ranks 0..M-1 on node 0, the next M on node 1...) or ``"cyclic"`` (rank r on node r mod nodes used: every
    neighbour of a flat ring on another node, what a topology-blind placement such as Slurm's cyclic gives).
    ``forward``: environment variables Open MPI must pass to the ranks (Hydra passes them all)."""
    used = placement(cluster, n, ppn)
    if order not in PLACEMENTS:
        raise ValueError(f"placement {order!r}: expected one of {', '.join(PLACEMENTS)}")
    if not argv:
        raise ValueError("no command to run: give it after --, e.g. -- dtrain train --epochs 1")
    exe, flavour = check_mpiexec(mpiexec)
    if flavour == "mpich":
        hosts = ",".join(f"{addr}:{count if order == 'block' else 1}" for addr, count in used)
        return [exe, "-launcher", "ssh", "-launcher-exec", str(cluster.launcher_path),
                "-localhost", cluster.bridge_address, "-hosts", hosts, "-n", str(n), *argv]
    return [exe, *_open_mpi_flags(cluster, flavour, used, order), "-n", str(n),
            *(a for name in forward for a in ("-x", name)), *argv]


def _open_mpi_flags(cluster: VirtualCluster, flavour: str, used: list[tuple[str, int]], order: str) -> list[str]:
    """Open MPI across the nodes: daemons started through the cluster's launcher (PRRTE's ``plm_ssh_agent``,
    ORTE's ``plm_rsh_agent``), control and data over TCP on the cluster subnet only, the ob1 PML (not UCX,
    which would use shared memory between namespaces), ``sm``/``vader`` within a node. No
    ``--oversubscribe``: with it, Open MPI 5 put every rank on the first node; but its effect on polling,
    ``mpi_yield_when_idle``, is set, since the nodes share this machine's cores (without it a 16 MiB
    all-reduce on 2 nodes x 2 ranks took 13 s instead of 4 on a busy machine)."""
    subnet = f"198.18.{cluster.subnet}.0/24"
    daemon = (["--prtemca", "plm_ssh_agent", str(cluster.launcher_path), "--prtemca", "oob_tcp_if_include", subnet]
              if flavour == "openmpi5" else
              ["--mca", "plm_rsh_agent", str(cluster.launcher_path), "--mca", "oob_tcp_if_include", subnet])
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    hosts = ",".join(f"{addr}:{count}" for addr, count in used)
    local = "sm" if flavour == "openmpi5" else "vader"
    return [*root, *daemon, "--host", hosts, "--map-by", "node" if order == "cyclic" else "slot",
            "--mca", "pml", "ob1", "--mca", "btl", f"tcp,self,{local}", "--mca", "btl_tcp_if_include", subnet,
            "--mca", "mpi_yield_when_idle", "1"]


def job_env(extra: Mapping[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    """The ranks' environment: this one, one BLAS thread each, the TCP transport, ``extra`` last."""
    environ = thread_env(threads)
    environ.update(TRANSPORT_ENV)
    environ.update(extra or {})
    return environ


def forwarded(environ: Mapping[str, str], extra: Mapping[str, str] | None) -> list[str]:
    """The variables a job sets for its ranks (what Open MPI's ``-x`` must name): the thread counts, the
    transport, PATH/PYTHONPATH, every ``DTRAIN_*``, the caller's ``extra`` and the job's tag."""
    keep = {*THREAD_VARIABLES, *TRANSPORT_ENV, "PATH", "PYTHONPATH", JOB_TAG, *(extra or {})}
    return sorted(k for k in environ if k in keep or k.startswith("DTRAIN_"))


def job_launch(cluster: VirtualCluster, n: int, argv: Sequence[str], *, ppn: int | None = None,
               env: Mapping[str, str] | None = None, mpiexec: str | None = None, threads: int = 1,
               order: str = "block", nodes: Sequence[int] | None = None) -> tuple[list[str], dict[str, str], str]:
    """(command, environment, job tag) of a job of ``argv`` on ``n`` ranks of ``cluster``; ``nodes``: the
    indices of the nodes to place it on (default all, in order). Run it, then :func:`reap_job` the tag."""
    tag = uuid.uuid4().hex
    environ = job_env(env, threads)
    environ[JOB_TAG] = tag
    target = cluster
    if nodes is not None:
        chosen = [cluster.node(i) for i in nodes]
        if not chosen:
            raise ValueError("no node to run on")
        target = type(cluster)(cluster.name, cluster.subnet, chosen)  # the same cluster, seen through fewer nodes
    return job_command(target, n, argv, ppn, mpiexec, order, forward=forwarded(environ, env)), environ, tag


def run_job(cluster: VirtualCluster, n: int, argv: Sequence[str], *, ppn: int | None = None,
            env: Mapping[str, str] | None = None, timeout: float | None = None, capture: bool = False,
            mpiexec: str | None = None, threads: int = 1, order: str = "block") -> subprocess.CompletedProcess:
    """Run ``argv`` on ``n`` ranks of ``cluster`` and wait for it; returns the CompletedProcess (stdout and
    stderr as text when ``capture``). ``timeout``: after so many seconds the job is killed and the status is
    124. When mpiexec ends, every process the job left in the nodes (a proxy cut off behind a dead link) is
    killed, so no rank outlives its job. ``order``: rank placement, see :func:`job_command`."""
    cmd, environ, tag = job_launch(cluster, n, argv, ppn=ppn, env=env, mpiexec=mpiexec, threads=threads, order=order)
    pipe = subprocess.PIPE if capture else None
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env=environ, stdout=pipe, stderr=pipe, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        kill_pids([proc.pid], grace=KILL_GRACE_S)
        out, err = proc.communicate()
        status = 124
        err = (err or "") + f"dtrain cluster run: the job ran past {timeout} s and was killed\n"
        if not capture:
            sys.stderr.write(err.splitlines()[-1] + "\n")
    except BaseException:
        kill_pids([proc.pid], grace=KILL_GRACE_S)
        raise
    finally:
        reap_job(cluster, tag)
    return subprocess.CompletedProcess(cmd, 128 - status if status < 0 else status, out, err)


def job_pids(cluster: VirtualCluster, tag: str) -> list[int]:
    """The processes in the cluster's nodes that belong to job ``tag``."""
    mark = f"{JOB_TAG}={tag}".encode()
    pids = []
    for node in cluster.nodes:
        for pid in namespace_pids(node.namespace):
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    environ = fh.read().split(b"\0")
            except OSError:
                continue
            if mark in environ:
                pids.append(pid)
    return pids


def reap_job(cluster: VirtualCluster, tag: str) -> None:
    """Kill what is left of job ``tag`` in the nodes (TERM, then KILL after a grace period)."""
    deadline = time.monotonic() + KILL_GRACE_S
    pids = job_pids(cluster, tag)
    while pids and time.monotonic() < deadline:  # a clean exit: the proxies are on their way out
        time.sleep(0.05)
        pids = job_pids(cluster, tag)
    if pids:
        kill_pids(pids, grace=KILL_GRACE_S)


def describe(cluster: VirtualCluster, n: int, argv: Sequence[str], ppn: int | None = None,
             mpiexec: str | None = None) -> str:
    """The job's mpiexec command with its transport variables, shell-quoted (``--dry-run``)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in TRANSPORT_ENV.items())
    environ = job_env()
    environ[JOB_TAG] = "(a fresh id per job)"
    return f"{env} {shlex.join(job_command(cluster, n, argv, ppn, mpiexec, forward=forwarded(environ, None)))}"

