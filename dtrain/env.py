"""What the environment says, in one place: the launcher and this process's ranks, BLAS threads, cores.

    from dtrain import env
    info = env.launch_info()          # LaunchInfo(launcher='hydra', rank=1, world_size=4, local_rank=1, local_size=2)
    env.launched_by_mpi()             # False for a plain `python train.py`: a world of 1, no MPI needed
    subprocess.run(cmd, env=env.thread_env(1))   # children get one BLAS/OpenMP thread each
    env.thread_settings()             # {'OMP_NUM_THREADS': 1}: the thread counts the user or launcher set
    env.usable_cores(), env.cpu_model()

Launchers and the variables they set for every process they start (read in this order; the first
launcher whose rank variable is present wins):

==========  ==========================================  ===========================================
launcher    rank / world size                           local rank / local size
==========  ==========================================  ===========================================
openmpi     OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE OMPI_COMM_WORLD_LOCAL_RANK / ..._LOCAL_SIZE
hydra       PMI_RANK / PMI_SIZE                         MPI_LOCALRANKID / MPI_LOCALNRANKS
slurm       SLURM_PROCID / SLURM_STEP_NUM_TASKS         SLURM_LOCALID / SLURM_STEP_TASKS_PER_NODE
pmix        PMIX_RANK / (not given)                     (not given)
==========  ==========================================  ===========================================

``hydra`` is MPICH's and Intel MPI's mpiexec (also a Kubeflow MPIJob with Intel MPI); ``openmpi`` is
``mpirun``/``mpiexec`` of Open MPI 4 and 5 (also an MPIJob with Open MPI); ``slurm`` is ``srun`` (only
inside a job step: a batch script itself is one process, not a launch); ``pmix`` is a bare PMIx server.
Hydra's control variables (HYDI_CONTROL_FD, PMI_FD) alone also mark a launch, with rank 0 assumed.

This module is stdlib only and imports nothing from dtrain: every layer may read it.
"""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAUNCHER_VARIABLES",
    "THREAD_VARIABLES",
    "LaunchInfo",
    "allocator_settings",
    "cpu_model",
    "launch_info",
    "launched_by_mpi",
    "launcher_rank",
    "local_rank",
    "memory_available",
    "memory_per_rank",
    "ranks_per_node_override",
    "set_thread_env",
    "thread_env",
    "thread_settings",
    "timeout_from_env",
    "tune_allocator",
    "usable_cores",
    "world_rank",
    "world_size",
]

# launcher -> (rank, world size, local rank, local size) variables; None where the launcher sets none.
_LAUNCHERS: dict[str, tuple[str, str | None, str | None, str | None]] = {
    "openmpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE"),
    "hydra": ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    "slurm": ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", None),
    "pmix": ("PMIX_RANK", None, None, None),
}
# Set by Hydra for the processes it starts even where PMI_RANK is not (e.g. singleton-init helpers).
_HYDRA_MARKERS = ("HYDI_CONTROL_FD", "PMI_FD")

LAUNCHER_VARIABLES: tuple[str, ...] = tuple(
    dict.fromkeys(v for names in _LAUNCHERS.values() for v in names if v is not None)) + _HYDRA_MARKERS
"""Every variable that tells a launched process its place (tests clear them to simulate a plain run)."""

THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
"""The thread-count variables of OpenMP and every BLAS NumPy may be built with (OpenBLAS, MKL, Apple
Accelerate, BLIS) and numexpr: N ranks of multi-threaded BLAS on N cores would oversubscribe them."""


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process stands, as its launcher announced it.

    Attributes:
        launcher: ``"openmpi"``, ``"hydra"``, ``"slurm"``, ``"pmix"``, or None when not launched.
        rank: this process's rank in the world (0 without a launcher).
        world_size: number of processes, or None when the launcher does not say (bare PMIx).
        local_rank: rank among the processes on this node (0 when the launcher does not say).
        local_size: processes on this node, or None when the launcher does not say.
    """

    launcher: str | None
    rank: int
    world_size: int | None
    local_rank: int
    local_size: int | None


def _int_var(environ: Mapping[str, str], name: str | None, minimum: int) -> int | None:
    if name is None or name not in environ:
        return None
    text = environ[name].strip()
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        what = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise ValueError(f"environment variable {name} must be {what}, got {environ[name]!r}")
    return int(text)


def _slurm_tasks_on_node(environ: Mapping[str, str]) -> int | None:
    """Tasks of this step on this node, from SLURM_STEP_TASKS_PER_NODE (e.g. ``"2(x3),1"``) and SLURM_NODEID."""
    spec, node = environ.get("SLURM_STEP_TASKS_PER_NODE", ""), environ.get("SLURM_NODEID", "")
    if not spec or not node.isdigit():
        return None
    counts: list[int] = []
    for item in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            return None
        counts += [int(match[1])] * int(match[2] or 1)
    return counts[int(node)] if int(node) < len(counts) else None


def _which_launcher(environ: Mapping[str, str]) -> str | None:
    for name, (rank_var, *_rest) in _LAUNCHERS.items():
        # srun exports SLURM_PROCID in the batch script too; a step (srun) also sets SLURM_STEP_NUM_TASKS.
        if rank_var in environ and (name != "slurm" or "SLURM_STEP_NUM_TASKS" in environ):
            return name
    if any(v in environ for v in _HYDRA_MARKERS):
        return "hydra"
    return None


def launch_info(environ: Mapping[str, str] | None = None) -> LaunchInfo:
    """This process's launcher, rank, world size, local rank and local size from ``environ`` (default os.environ).

    Without a launcher: ``LaunchInfo(None, 0, 1, 0, 1)``. Raises ValueError naming a variable whose
    value is not a number, or a rank outside the world size.
    """
    environ = os.environ if environ is None else environ
    launcher = _which_launcher(environ)
    if launcher is None:
        return LaunchInfo(None, 0, 1, 0, 1)
    rank_var, size_var, local_var, local_size_var = _LAUNCHERS[launcher]
    rank = _int_var(environ, rank_var, 0) or 0
    size = _int_var(environ, size_var, 1)
    local_size = (_slurm_tasks_on_node(environ) if launcher == "slurm"
                  else _int_var(environ, local_size_var, 1))
    local = _int_var(environ, local_var, 0) or 0
    if size is not None and rank >= size:
        raise ValueError(f"environment variable {rank_var}={rank} is outside the world of {size} ({size_var})")
    return LaunchInfo(launcher, rank, size, local, local_size)


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process, judged from its environment,
    so a plain ``dtrain train`` never needs MPI at all."""
    return _which_launcher(os.environ if environ is None else environ) is not None


def launcher_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank as the launcher announced it, or None when no launcher started it."""
    info = launch_info(environ)
    return None if info.launcher is None else info.rank


def world_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank (0 without a launcher)."""
    return launch_info(environ).rank


def world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher started (1 without a launcher).

    Raises ValueError when the launcher does not say (bare PMIx): pass the size explicitly there.
    """
    info = launch_info(environ)
    if info.world_size is None:
        raise ValueError(f"the {info.launcher} launcher does not announce the world size in the environment; "
                         "give it explicitly (e.g. num_replicas=)")
    return info.world_size


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank among those on its node (0 without a launcher or when the launcher does not say)."""
    return launch_info(environ).local_rank


# ---------------------------------------------------------------------------------------------
# dtrain's own variables
# ---------------------------------------------------------------------------------------------


def ranks_per_node_override(environ: Mapping[str, str] | None = None) -> int | None:
    """DTRAIN_RANKS_PER_NODE=K: treat each block of K consecutive ranks as one node (to exercise the
    hierarchical all-reduce and per-node logic on one machine); None when unset or empty."""
    environ = os.environ if environ is None else environ
    text = environ.get("DTRAIN_RANKS_PER_NODE", "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[+]?\d+", text) or int(text) < 1:
        raise ValueError(f"environment variable DTRAIN_RANKS_PER_NODE must be a positive integer, got {text!r}")
    return int(text)


def timeout_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    """DTRAIN_TIMEOUT in seconds (0 disables the deadline) when set and non-empty, else ``default``.

    Raises ValueError when it is not a finite number >= 0.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("DTRAIN_TIMEOUT", "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable DTRAIN_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"environment variable DTRAIN_TIMEOUT must be >= 0 seconds, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Threads, cores, CPU
# ---------------------------------------------------------------------------------------------


def _check_threads(threads: int) -> str:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return str(threads)


def thread_env(threads: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default os.environ) with every THREAD_VARIABLES entry set to ``threads``:
    the environment to start a child process (a rank, a benchmark) with."""
    value = _check_threads(threads)
    return {**(os.environ if base is None else base), **dict.fromkeys(THREAD_VARIABLES, value)}


def set_thread_env(threads: int = 1, override: bool = False) -> None:
    """Set THREAD_VARIABLES in this process's os.environ (only those not already set unless ``override``).

    It takes effect only before NumPy (its BLAS) is first imported: call it at the top of an entry point.
    """
    value = _check_threads(threads)
    for var in THREAD_VARIABLES:
        if override:
            os.environ[var] = value
        else:
            os.environ.setdefault(var, value)


def thread_settings(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The thread counts the user (or the launcher) set in ``environ`` (default os.environ): every
    THREAD_VARIABLES entry that is set and not empty, in that order, as ``{variable: count}``.

    An OpenMP list such as ``OMP_NUM_THREADS=4,2`` counts as its first (outermost) level. Raises ValueError
    naming the variable when its value is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    found = {}
    for var in THREAD_VARIABLES:
        text = environ.get(var, "").strip()
        if not text:
            continue
        match = re.fullmatch(r"(\d+)(,\s*\d+)*", text)
        if match is None or int(match[1]) < 1:
            raise ValueError(f"environment variable {var} must be a positive integer (or an OpenMP list such as "
                             f"4,2), got {environ[var]!r}")
        found[var] = int(match[1])
    return found


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 cpu.max, else v1 cfs quota/period), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPU cores this process may use, at least 1: its affinity mask (a cpuset, ``taskset``), further
    capped by a cgroup CPU quota (a container's ``--cpus``, a Kubernetes limit), rounded down."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(Path(cgroup_root))
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)


def _cgroup_memory_room(root: Path) -> int | None:
    """Bytes the cgroup (v2 memory.max, else v1 limit_in_bytes) still allows, None when unlimited."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return max(0, int(limit) - int((root / usage_file).read_text()))
        except (OSError, ValueError):
            continue
    return None


def memory_available(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """Bytes this process could still allocate: the kernel's MemAvailable (/proc/meminfo), further capped by
    a cgroup memory limit (a container's ``--memory``, a Kubernetes limit); None where neither is known."""
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_memory_room(Path(cgroup_root))
    if limit is not None:
        room = limit if room is None else min(room, limit)
    return room


def memory_per_rank() -> int | None:
    """This rank's share of :func:`memory_available`: every rank on a node holds its own copy of the data and
    the model, so the room divides by the ranks the launcher placed here (1 without a launcher)."""
    room = memory_available()
    return None if room is None else room // (launch_info().local_size or 1)


def cpu_model() -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo where available, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- the C allocator ---------------------------------------------------------------------------------------
# glibc serves allocations above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with fresh
# mmap()s, and trims freed memory at the top of the heap above 2x that. A training step allocates and frees
# the same few-MiB activations every step, so each step pays the page faults of memory it just gave back: on
# the digits ResNet (1 thread) that was 40 % of the step (17.7 ms -> 11.2 ms with the settings below). Keeping
# freed memory for reuse costs nothing in a loop whose peak repeats every step.

_MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 64 << 20), "M_TRIM_THRESHOLD": (-1, 256 << 20)}
_allocator_state: dict[str, int] = {}


def tune_allocator(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Make glibc's malloc keep freed memory for reuse (mmap threshold 64 MiB, trim threshold 256 MiB) unless
    ``DTRAIN_MALLOC=system``; done once when dtrain is imported. Returns the settings applied ({} on other C
    libraries, with the opt-out, or when mallopt refuses). ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` in the environment are the user's own settings and are left alone."""
    environ = os.environ if environ is None else environ
    if environ.get("DTRAIN_MALLOC", "").strip().lower() == "system" or _allocator_state:
        return dict(_allocator_state)
    if any(f"MALLOC_{name[2:]}_" in environ for name in ("M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD")):
        return {}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    for name, (param, value) in _MALLOC_SETTINGS.items():
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            _allocator_state[name] = value
    return dict(_allocator_state)


def allocator_settings() -> dict[str, int]:
    """What :func:`tune_allocator` applied in this process ({} if nothing)."""
    return dict(_allocator_state)
