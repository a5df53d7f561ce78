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
Open MPI is refused, with the reason, by :func:`check_mpiexec`.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..env import thread_env
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

OPEN_MPI_REASON = (
    "Open MPI's mpirun is not supported on the virtual cluster: its daemons (prted/orted) and its TCP "
    "transports would each need the namespace launcher and interface pinning (plm_rsh_agent, "
    "btl_tcp_if_include, oob_tcp_if_include), which dtrain does not set up yet; use MPICH's mpiexec "
    "(pip install mpich), or pass --mpiexec PATH to one")


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


def check_mpiexec(mpiexec: str | None) -> str:
    """The MPICH mpiexec to launch with (given, else this Python's, else PATH's); ClusterError otherwise."""
    exe = mpiexec or local_mpiexec()
    if exe is None:
        raise ClusterError("no mpiexec found next to the interpreter or on PATH: pip install mpich")
    try:
        version = mpiexec_version(exe)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    if is_open_mpi(version):
        raise ClusterError(OPEN_MPI_REASON)
    if "hydra" not in version.lower():
        raise ClusterError(f"{exe} is not MPICH's mpiexec (Hydra); `--version` said: {version.strip()[:200]}")
    return exe


PLACEMENTS = ("block", "cyclic")


def job_command(cluster: VirtualCluster, n: int, argv: Sequence[str], ppn: int | None = None,
                mpiexec: str | None = None, order: str = "block") -> list[str]:
    """The mpiexec command line that runs ``argv`` on ``n`` ranks of ``cluster``. ``order``: ``"block"``
    (ranks 0..M-1 on node 0, the next M on node 1...) or ``"cyclic"`` (rank r on node r mod nodes used: every
    neighbour of a flat ring on another node, what a topology-blind placement such as Slurm's cyclic gives)."""
    used = placement(cluster, n, ppn)
    if order not in PLACEMENTS:
        raise ValueError(f"placement {order!r}: expected one of {', '.join(PLACEMENTS)}")
    hosts = ",".join(f"{addr}:{count if order == 'block' else 1}" for addr, count in used)
    if not argv:
        raise ValueError("no command to run: give it after --, e.g. -- dtrain train --epochs 1")
    return [check_mpiexec(mpiexec), "-launcher", "ssh", "-launcher-exec", str(cluster.launcher_path),
            "-localhost", cluster.bridge_address, "-hosts", hosts, "-n", str(n), *argv]


def job_env(extra: Mapping[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    """The ranks' environment: this one, one BLAS thread each, the TCP transport, ``extra`` last."""
    environ = thread_env(threads)
    environ.update(TRANSPORT_ENV)
    environ.update(extra or {})
    return environ


def run_job(cluster: VirtualCluster, n: int, argv: Sequence[str], *, ppn: int | None = None,
            env: Mapping[str, str] | None = None, timeout: float | None = None, capture: bool = False,
            mpiexec: str | None = None, threads: int = 1, order: str = "block") -> subprocess.CompletedProcess:
    """Run ``argv`` on ``n`` ranks of ``cluster`` and wait for it; returns the CompletedProcess (stdout and
    stderr as text when ``capture``). ``timeout``: after so many seconds the job is killed and the status is
    124. When mpiexec ends, every process the job left in the nodes (a proxy cut off behind a dead link) is
    killed, so no rank outlives its job. ``order``: rank placement, see :func:`job_command`."""
    cmd = job_command(cluster, n, argv, ppn, mpiexec, order)
    tag = uuid.uuid4().hex
    environ = job_env(env, threads)
    environ[JOB_TAG] = tag
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
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
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


def describe(cluster: VirtualCluster, n: int, argv: Sequence[str], ppn: int | None = None) -> str:
    """The job's mpiexec command with its transport variables, shell-quoted (``--dry-run``)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in TRANSPORT_ENV.items())
    return f"{env} {shlex.join(job_command(cluster, n, argv, ppn))}"

