"""The Linux commands under the virtual cluster: ``ip`` (namespaces, veth, a bridge), ``tc`` (tbf
shaping and its byte counters) and ``nft`` (a node's link dropping every packet).

Everything here runs a command and raises :class:`ClusterError` with the command and what it printed
when it fails; nothing keeps state (the cluster's layout is in :mod:`dtrain.cluster.cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["ClusterError", "format_rate", "kill_pids", "parse_rate", "run", "support_problem"]

# tbf's bucket: at least 128 KiB, since one veth GSO packet can be 64 KiB (a 64 KB bucket held a "1gbit"
# link to ~440 Mbit/s); the queue holds LATENCY of traffic at the link's rate before tbf drops.
TBF_BURST = "256kb"
TBF_LATENCY = "100ms"
FAULT_TABLE = "dtrain_fault"  # the nftables table of a node whose link drops everything

_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
          "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}


class ClusterError(RuntimeError):
    """A virtual cluster could not be built, changed, used or taken down; the message says why."""


def parse_rate(text: str) -> int:
    """A link rate in ``tc``'s units (``1gbit``, ``500mbit``, ``2.5gbit``, ``100mbps`` = bytes/s) as bits per
    second. Raises ValueError naming the text and the units it accepts."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"link rate {text!r}: expected a number and a unit ({', '.join(_UNITS)}), e.g. 1gbit")
    bits = float(m.group(1)) * _UNITS[unit]
    if not 10**5 <= bits <= 10**12:
        raise ValueError(f"link rate {text!r}: expected between 100kbit and 1tbit")
    return round(bits)


def format_rate(bits_per_s: float) -> str:
    """``1000000000`` -> ``"1gbit"``, ``250000000`` -> ``"250mbit"`` (the shortest exact tc form)."""
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits_per_s >= scale and bits_per_s % scale == 0:
            return f"{int(bits_per_s // scale)}{unit}"
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:g}{unit}"
    return f"{int(bits_per_s)}bit"


def support_problem() -> str | None:
    """Why a virtual cluster cannot be built on this machine (one line), or None when it can: it needs
    root (CAP_NET_ADMIN) and iproute2's ``ip`` and ``tc``. Tests skip with exactly this line."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ("dtrain cluster needs root: network namespaces, veth links and tc shaping need CAP_NET_ADMIN "
                f"(running as uid {os.geteuid() if hasattr(os, 'geteuid') else '?'})")
    missing = [tool for tool in ("ip", "tc") if _which(tool) is None]
    if missing:
        return f"dtrain cluster needs iproute2 ({' and '.join(missing)} not found): apt-get install iproute2"
    if not os.path.exists("/proc/self/ns/net"):
        return "dtrain cluster needs network namespaces: this kernel has no /proc/self/ns/net"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)),
                                      None)


def run(args: Sequence[str], *, namespace: str | None = None, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one command (inside ``namespace`` when given); raise ClusterError with its output when it fails
    and ``check``."""
    tool = _which(args[0]) or args[0]
    cmd = [tool, *args[1:]]
    if namespace is not None:
        cmd = [_which("ip") or "ip", "netns", "exec", namespace, *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    except FileNotFoundError:
        raise ClusterError(f"{args[0]} not found: apt-get install {'nftables' if args[0] == 'nft' else 'iproute2'}"
                           ) from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(cmd)}` ran past {timeout} s") from None
    if check and out.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}")
    return out


def namespaces() -> set[str]:
    """The names of the network namespaces ``ip netns`` knows."""
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return {entry["name"] for entry in json.loads(out or "[]")}


def link_exists(name: str, namespace: str | None = None) -> bool:
    return run(["ip", "link", "show", "dev", name], namespace=namespace, check=False).returncode == 0


def shape(dev: str, bits_per_s: int, namespace: str | None = None) -> None:
    """Put (or change) a tbf of ``bits_per_s`` on ``dev``'s egress."""
    run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits_per_s}bit", "burst", TBF_BURST,
         "latency", TBF_LATENCY], namespace=namespace)


def qdisc_bytes(dev: str, namespace: str | None = None) -> int:
    """Bytes ``dev``'s root qdisc has sent (tc's counter); 0 when the device is gone."""
    out = run(["tc", "-s", "-j", "qdisc", "show", "dev", dev], namespace=namespace, check=False)
    if out.returncode != 0:
        return 0
    return sum(int(q.get("bytes", 0)) for q in json.loads(out.stdout or "[]") if q.get("root"))


def set_drop(namespace: str, dev: str, drop: bool) -> None:
    """Make ``dev`` in ``namespace`` drop every packet both ways (an nftables table), or stop doing so."""
    run(["nft", "delete", "table", "inet", FAULT_TABLE], namespace=namespace, check=False)
    if drop:
        rules = (f"table inet {FAULT_TABLE} {{\n"
                 f"  chain in {{ type filter hook input priority 0; policy accept; iifname \"{dev}\" drop; }}\n"
                 f"  chain out {{ type filter hook output priority 0; policy accept; oifname \"{dev}\" drop; }}\n"
                 "}\n")
        run(["nft", "-f", "-"], namespace=namespace, input=rules)


def namespace_pids(namespace: str) -> list[int]:
    out = run(["ip", "netns", "pids", namespace], check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def kill_pids(pids: list[int], grace: float = 0.0) -> None:
    """SIGTERM (after ``grace`` seconds, SIGKILL) the given processes; those already gone are skipped."""
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    if grace > 0:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        kill_pids([p for p in pids if _alive(p)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
