"""A virtual cluster on this machine: K network namespaces ("nodes"), each joined to one bridge by a veth
link that ``tc tbf`` shapes to a rate in both directions, so every byte between nodes crosses a
rate-limited TCP link.

Layout of cluster ``NAME`` (a short lowercase name, default ``dt``) with subnet ``198.18.S.0/24``:

============  ==============================  ===============================================
what          name                            address
============  ==============================  ===============================================
bridge        ``dtbr-NAME`` (this namespace)  ``198.18.S.1`` (mpiexec listens here)
node i        namespace ``dtrain-NAME-nI``    ``198.18.S.(10+i)`` on its ``eth0``
node i link   ``dtv-NAME-I`` (bridge side)    tbf on it shapes bridge->node; on eth0, node->bridge
============  ==============================  ===============================================

Addresses come from 198.18.0.0/15 (the benchmarking range) only; there is no default route, no NAT and no
forwarding: the nodes reach each other and the bridge address, nothing else. The layout is kept in a state
file (``/run/dtrain-cluster/NAME.json``, or under ``DTRAIN_CLUSTER_STATE``), so separate commands
(``dtrain cluster up``, ``run``, ``fault``, ``status``, ``down``) act on the same cluster. ``up`` and ``down``
are idempotent; ``down`` also finds the pieces of a cluster whose state file was lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from . import net
from .launcher import run_job, write_launcher
from .net import ClusterError, format_rate, kill_pids, parse_rate

__all__ = ["Node", "VirtualCluster", "state_dir"]

NAME_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
MAX_NODES = 64


def state_dir() -> Path:
    """Where clusters keep their state files and launcher scripts."""
    return Path(os.environ.get("DTRAIN_CLUSTER_STATE", "/run/dtrain-cluster"))


@dataclass
class Node:
    """One node: its namespace, address, hostname, the bridge side of its link, and the link's state."""

    index: int
    namespace: str
    address: str
    hostname: str
    veth: str
    rate_bps: int
    down: bool = False  # the link is administratively down (no carrier either side)
    drop: bool = False  # the link is up but drops every packet (nftables in the node)

    @property
    def link_state(self) -> str:
        return "down" if self.down else "drop" if self.drop else "up"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"cluster name {name!r}: expected 1-6 lowercase letters or digits, starting with a letter")
    return name


class VirtualCluster:
    """A virtual cluster: build it with :meth:`up`, find a running one with :meth:`attach`, end it with
    :meth:`down` (or use it as a context manager, which takes it down on exit).

    Example::

        with VirtualCluster.up(2, "1gbit") as cluster:
            status = cluster.run(4, ["dtrain", "train", "--epochs", "1"])   # 2 ranks per node
            print(cluster.link_bytes())                                     # bytes that crossed the links
    """

    def __init__(self, name: str, subnet: int, nodes: list[Node]):
        self.name, self.subnet, self.nodes = name, subnet, nodes

    # -- state ------------------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"dtbr-{self.name}"

    @property
    def bridge_address(self) -> str:
        return f"198.18.{self.subnet}.1"

    @property
    def launcher_path(self) -> Path:
        return state_dir() / f"{self.name}-launcher.sh"

    @staticmethod
    def _state_path(name: str) -> Path:
        return state_dir() / f"{name}.json"

    def _save(self) -> None:
        state_dir().mkdir(parents=True, exist_ok=True)
        data = {"name": self.name, "subnet": self.subnet, "nodes": [asdict(n) for n in self.nodes]}
        tmp = self._state_path(self.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self._state_path(self.name))

    @classmethod
    def attach(cls, name: str = "dt") -> VirtualCluster:
        """The running cluster ``name``; ClusterError when there is none."""
        path = cls._state_path(_check_name(name))
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no virtual cluster {name!r} is up (no {path}): dtrain cluster up --nodes K") from None
        cluster = cls(data["name"], data["subnet"], [Node(**n) for n in data["nodes"]])
        missing = [n.namespace for n in cluster.nodes if n.namespace not in net.namespaces()]
        if missing:
            raise ClusterError(f"virtual cluster {name!r} is broken (namespaces {', '.join(missing)} are gone): "
                               f"dtrain cluster down --name {name}, then up again")
        return cluster

    @staticmethod
    def running() -> list[str]:
        """The names of the clusters with a state file."""
        return sorted(p.stem for p in state_dir().glob("*.json")) if state_dir().is_dir() else []

    # -- up / down --------------------------------------------------------------------------------
    @classmethod
    def up(cls, nodes: int, link: str | int = "1gbit", link_of: dict[int, str | int] | None = None,
           name: str = "dt") -> VirtualCluster:
        """Build cluster ``name`` with ``nodes`` nodes, every link at ``link`` (``"1gbit"`` or bits/s) except
        those in ``link_of`` (node index -> rate). Already up with as many nodes: the rates are set again
        and the same cluster returned. Raises ClusterError (not root, no netns, up with another size)."""
        _check_name(name)
        if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes {nodes!r}: expected an integer from 1 to {MAX_NODES}")
        rates = _rates(nodes, link, link_of or {})  # bad input is named before the machine is asked
        problem = net.support_problem()
        if problem:
            raise ClusterError(problem)
        with _lock():
            if cls._state_path(name).exists():
                cluster = cls.attach(name)
                if len(cluster.nodes) != nodes:
                    raise ClusterError(f"virtual cluster {name!r} is already up with {len(cluster.nodes)} nodes, not "
                                       f"{nodes}: dtrain cluster down --name {name} first")
                for node, rate in zip(cluster.nodes, rates):
                    cluster.set_rate(node.index, rate)
                return cluster
            _teardown(name)  # pieces of an earlier cluster of this name whose state file was lost
            cluster = cls(name, _free_subnet(), [])
            try:
                cluster._build(rates)
            except BaseException:
                _teardown(name)
                raise
            return cluster

    def _build(self, rates: list[int]) -> None:
        net.run(["ip", "link", "add", self.bridge, "type", "bridge"])
        net.run(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
        net.run(["ip", "link", "set", self.bridge, "up"])
        for i, rate in enumerate(rates):
            node = Node(i, f"dtrain-{self.name}-n{i}", f"198.18.{self.subnet}.{10 + i}", f"{self.name}-node{i}",
                        f"dtv-{self.name}-{i}", rate)
            net.run(["ip", "netns", "add", node.namespace])
            net.run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.namespace])
            net.run(["ip", "link", "set", node.veth, "master", self.bridge, "up"])
            net.run(["ip", "addr", "add", f"{node.address}/24", "dev", "eth0"], namespace=node.namespace)
            net.run(["ip", "link", "set", "eth0", "up"], namespace=node.namespace)
            net.run(["ip", "link", "set", "lo", "up"], namespace=node.namespace)
            self.nodes.append(node)
            self._shape(node)
        write_launcher(self)
        self._save()

    def down(self) -> None:
        """Kill every process in the nodes, delete the namespaces, links and bridge, forget the state."""
        self.teardown(self.name)

    @staticmethod
    def teardown(name: str = "dt") -> None:
        """Take cluster ``name`` down, with or without its state file; nothing to do when it is not up."""
        _check_name(name)
        problem = net.support_problem()
        if problem:
            raise ClusterError(problem)
        with _lock():
            _teardown(name)

    def __enter__(self) -> VirtualCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -- links ------------------------------------------------------------------------------------
    def live_nodes(self) -> list[Node]:
        """The nodes whose link is up (neither ``fault --down`` nor ``--drop``): where a job can run now."""
        return [node for node in self.nodes if node.link_state == "up"]

    def node(self, index: int) -> Node:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.nodes):
            raise ValueError(f"node {index!r}: cluster {self.name!r} has nodes 0 to {len(self.nodes) - 1}")
        return self.nodes[index]

    def _shape(self, node: Node) -> None:
        net.shape(node.veth, node.rate_bps)
        net.shape("eth0", node.rate_bps, namespace=node.namespace)

    def set_rate(self, index: int, rate: str | int) -> None:
        """Shape node ``index``'s link (both directions) to ``rate``."""
        node = self.node(index)
        node.rate_bps = rate if isinstance(rate, int) else parse_rate(rate)
        self._shape(node)
        self._save()

    def fault(self, index: int, action: str, rate: str | int | None = None) -> Node:
        """Break or mend node ``index``'s link. ``action``: ``"down"`` (no carrier, as a pulled cable),
        ``"drop"`` (up, but every packet dropped both ways: a dead switch port), ``"up"`` (undo both),
        ``"rate"`` (shape to ``rate``)."""
        node = self.node(index)
        if action == "down":
            net.run(["ip", "link", "set", node.veth, "down"])
            node.down = True
        elif action == "drop":
            net.set_drop(node.namespace, "eth0", True)
            node.drop = True
        elif action == "up":
            net.set_drop(node.namespace, "eth0", False)
            net.run(["ip", "link", "set", node.veth, "up"])
            node.down = node.drop = False
        elif action == "rate":
            if rate is None:
                raise ValueError("fault 'rate' needs a rate, e.g. 250mbit")
            self.set_rate(index, rate)
        else:
            raise ValueError(f"fault action {action!r}: expected down, drop, up or rate")
        self._save()
        return node

    def counters(self) -> list[tuple[int, int]]:
        """Per node, (bytes sent to the node, bytes the node sent): tc's counters of the two tbf qdiscs."""
        return [(net.qdisc_bytes(n.veth), net.qdisc_bytes("eth0", namespace=n.namespace)) for n in self.nodes]

    def link_bytes(self) -> int:
        """Bytes the nodes have sent onto their links in all (each inter-node byte counted once, at its sender)."""
        return sum(sent for _, sent in self.counters())

    def status(self) -> list[dict]:
        """One row per node: namespace, hostname, address, link rate and state, tc byte counters, processes."""
        rows = []
        for node, (to_node, from_node) in zip(self.nodes, self.counters()):
            rows.append({"node": node.index, "hostname": node.hostname, "address": node.address,
                         "namespace": node.namespace, "rate": format_rate(node.rate_bps), "link": node.link_state,
                         "bytes_to_node": to_node, "bytes_from_node": from_node,
                         "processes": len(net.namespace_pids(node.namespace))})
        return rows

    # -- jobs -------------------------------------------------------------------------------------
    def run(self, n: int, argv: list[str], **kwargs) -> int:
        """Run ``argv`` on ``n`` ranks placed across the nodes (see :func:`dtrain.cluster.launcher.run_job`)."""
        return run_job(self, n, argv, **kwargs)


def _rates(nodes: int, link, link_of: dict) -> list[int]:
    default = link if isinstance(link, int) and not isinstance(link, bool) else parse_rate(link)
    rates = [default] * nodes
    for index, rate in link_of.items():
        if not isinstance(index, int) or not 0 <= index < nodes:
            raise ValueError(f"--link-of {index}={rate}: node {index} does not exist (nodes 0 to {nodes - 1})")
        rates[index] = rate if isinstance(rate, int) and not isinstance(rate, bool) else parse_rate(rate)
    return rates


@contextlib.contextmanager
def _lock():
    """One cluster change at a time on this machine (subnets are chosen under it)."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _free_subnet() -> int:
    """The lowest /24 of 198.18.S.0 no cluster uses: by the state files, and by the addresses of the links
    this machine has (a cluster whose state lives under another DTRAIN_CLUSTER_STATE)."""
    used = set()
    for path in state_dir().glob("*.json"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            used.add(json.loads(path.read_text())["subnet"])
    out = net.run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used.update(int(s) for s in re.findall(r"inet 198\.18\.(\d+)\.\d+/", out))
    for s in range(1, 255):
        if s not in used:
            return s
    raise ClusterError("no free subnet in 198.18.1.0 - 198.18.254.0: take some virtual clusters down")


def _teardown(name: str) -> None:
    """Remove every piece of cluster ``name``: its processes, namespaces, links, bridge, state and launcher."""
    prefix = f"dtrain-{name}-n"
    spaces = sorted(ns for ns in net.namespaces() if ns.startswith(prefix) and ns[len(prefix):].isdigit())
    for ns in spaces:  # deleting a namespace does not end its processes
        kill_pids(net.namespace_pids(ns))
    for ns in spaces:
        net.run(["ip", "netns", "del", ns], check=False)
    out = net.run(["ip", "-o", "link", "show"], check=False).stdout
    for link in re.findall(rf"^\d+: (dtv-{name}-\d+)[@:]", out, flags=re.M):
        net.run(["ip", "link", "del", link], check=False)
    if net.link_exists(f"dtbr-{name}"):
        net.run(["ip", "link", "del", f"dtbr-{name}"])
    for path in (state_dir() / f"{name}.json", state_dir() / f"{name}-launcher.sh"):
        path.unlink(missing_ok=True)
