"""How many BLAS/OpenMP threads each process of a job computes with, decided once when ``dtrain train`` starts.

N ranks on one machine that each start a BLAS pool as wide as the machine oversubscribe its cores many
times over (N x cores threads on cores cores: 10-30x slower than one thread per rank), and a
multi-threaded BLAS sums in another order than a single-threaded one, so the same job gives other
numbers. torchrun sets one thread per worker for the same reason. The rules, in order
(:func:`choose_threads`):

1. ``--threads N`` (or ``threads = N`` in the TOML config): N threads, applied by dtrain; ``--threads 0``
   leaves the libraries' pools as they are (dtrain changes nothing).
2. Any of ``dtrain.env.THREAD_VARIABLES`` set (``OMP_NUM_THREADS=1``; ``dtrain launch`` sets them all):
   the launcher or the user decided. One count for all of them is applied to every pool (``MKL_NUM_THREADS=1``
   alone would not reach OpenBLAS); different counts per library are left exactly as set.
3. Launched by an MPI launcher (mpiexec, mpirun, srun): usable cores // ranks on this node, at least 1.
   When the launcher does not say how many ranks share the node, all the world's ranks are counted (never
   more threads than cores; on several nodes it errs towards fewer); when it says neither, 1 thread.
4. One process, not launched: the libraries' own default, unless it is clearly wrong (wider than the
   usable cores, e.g. a container whose CPU quota OpenBLAS does not see): then the usable cores.

Applying means ``threadpoolctl.threadpool_limits`` on the pools already loaded (NumPy's BLAS), kept for
the process's life, and the THREAD_VARIABLES set to the same count for libraries loaded later. Without
threadpoolctl only the variables are set, which reaches a BLAS loaded before them only if NumPy was not
yet imported; the message says so.

    choice = configure_threads(cfg["threads"])   # decide + apply (once per process)
    log.info(choice.message)   # BLAS threads: 1 per rank (2 usable cores / 4 ranks on this node; set by dtrain; ...)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .env import THREAD_VARIABLES, launch_info, set_thread_env, thread_settings, usable_cores
from .spec import is_int

__all__ = ["ThreadChoice", "choose_threads", "configure_threads", "library_threads", "pools_summary",
           "reset_threads"]

OVERRIDE_HINT = "OMP_NUM_THREADS or --threads to override"


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`choose_threads` decided.

    Attributes:
        limit: the pool size dtrain applies, or None when it leaves the libraries' pools alone.
        threads: the threads each process computes with, as far as known (None: unknown).
        per_rank: whether an MPI launcher started this process (the count is per rank).
        reason: why, in words (who set it and how to change it).
        by: who decided: "--threads", "environment", "dtrain" or "library".
        note: what applying it could not do (threadpoolctl missing), else "".
    """

    limit: int | None
    threads: int | None
    per_rank: bool
    reason: str
    by: str
    note: str = ""

    @property
    def message(self) -> str:
        """One line for the log and ``dtrain info``."""
        if self.threads is None:
            count = "as set per library" if self.by == "environment" else "the library default"
        else:
            count = str(self.threads)
        text = f"BLAS threads: {count}{' per rank' if self.per_rank else ''} ({self.reason})"
        return f"{text}; {self.note}" if self.note else text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None, cores: int | None = None,
                   library_threads: int | None = None) -> ThreadChoice:
    """Decide the BLAS/OpenMP threads of this process (the rules in the module docstring); nothing is applied.

    Args:
        requested: ``--threads`` (None: not given; 0: leave the libraries alone).
        environ: the environment to read (default os.environ): thread variables and the launcher's.
        cores: usable cores (default :func:`dtrain.env.usable_cores`).
        library_threads: the widest BLAS/OpenMP pool loaded now (:func:`library_threads`), None if unknown.

    Raises ValueError for a negative ``requested`` or a thread variable that is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    info = launch_info(environ)
    per_rank = info.launcher is not None
    if requested is not None:
        if not is_int(requested) or requested < 0:
            raise ValueError(f"--threads must be a non-negative integer (0: leave the libraries' defaults), "
                             f"got {requested!r}")
        if requested == 0:
            return ThreadChoice(None, library_threads, per_rank, "--threads 0: dtrain leaves the libraries' "
                                "thread pools as they are", "--threads")
        return ThreadChoice(requested, requested, per_rank, f"set by --threads {requested}", "--threads")
    settings = thread_settings(environ)
    if settings:
        return _from_environment(settings, per_rank)
    cores = usable_cores() if cores is None else cores
    if per_rank:
        return _per_rank(info, cores)
    if library_threads is not None and library_threads > cores:
        return ThreadChoice(cores, cores, False, f"the library default of {library_threads} is more than the "
                            f"{_plural(cores, 'usable core')}; set by dtrain; {OVERRIDE_HINT}", "dtrain")
    return ThreadChoice(None, library_threads, False, f"one process, not launched by MPI: the library's own default, "
                        f"{_plural(cores, 'usable core')}; {OVERRIDE_HINT}", "library")


def _from_environment(settings: dict[str, int], per_rank: bool) -> ThreadChoice:
    """Rule 2: the thread variables set. One count for all of them is applied to every pool (MKL_NUM_THREADS=1
    alone would not reach OpenBLAS); different counts per library are left exactly as they are."""
    (first, n), others = next(iter(settings.items())), len(settings) - 1
    if len(set(settings.values())) > 1:
        listed = ", ".join(f"{var}={count}" for var, count in settings.items())
        return ThreadChoice(None, None, per_rank, f"{listed} set by the launcher or the user; dtrain leaves them; "
                            "--threads to override", "environment")
    also = f" and {_plural(others, 'more thread variable')}" if others else ""
    return ThreadChoice(n, n, per_rank, f"{first}={n}{also} set by the launcher or the user; --threads to override",
                        "environment")


def _per_rank(info, cores: int) -> ThreadChoice:
    """usable cores // ranks sharing this node (rule 3)."""
    if info.local_size is not None:
        ranks, where = info.local_size, "on this node"
    elif info.world_size is not None:  # all on this node, as far as we know: never more threads than cores
        ranks, where = info.world_size, f"in the world (the {info.launcher} launcher does not say how many share " \
                                        "this node, so all are counted)"
    else:
        return ThreadChoice(1, 1, True, f"the {info.launcher} launcher says neither how many ranks share this node "
                            f"nor the world size; set by dtrain; {OVERRIDE_HINT}", "dtrain")
    n = max(1, cores // ranks)
    return ThreadChoice(n, n, True, f"{_plural(cores, 'usable core')} / {_plural(ranks, 'rank')} {where}; "
                        f"set by dtrain; {OVERRIDE_HINT}", "dtrain")


def library_threads() -> int | None:
    """The widest BLAS/OpenMP pool loaded in this process (threadpoolctl), None without threadpoolctl or pools."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") in ("blas", "openmp")]
    return max(counts) if counts else None


def pools_summary() -> str:
    """The BLAS/OpenMP pools loaded now, for ``dtrain info`` (``openblas 0.3.27 (pthreads): 2 threads``)."""
    try:
        import threadpoolctl
    except ImportError:
        return "thread pools: unknown (threadpoolctl is not installed)"
    pools = [f"{p['internal_api']} {p.get('version') or ''} ({p.get('threading_layer', p['user_api'])}): "
             f"{_plural(p['num_threads'], 'thread')}" for p in threadpoolctl.threadpool_info()]
    return f"thread pools (threadpoolctl {threadpoolctl.__version__}): {'; '.join(pools) or 'none loaded'}"


# The configuration in force: (requested, choice, threadpool limiter or None, the variables as they were).
# A list mutated in place, holding at most one entry, so that the limiter lives as long as the process.
_active: list[tuple[int | None, ThreadChoice, object, dict[str, str | None]]] = []


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Decide (:func:`choose_threads`) and apply this process's threads, once: a later call with the same
    ``requested`` returns the choice in force (its own variables are set by then); another value undoes it
    first. Returns the choice, with a note when threadpoolctl was missing."""
    if _active:
        if _active[0][0] == requested:
            return _active[0][1]
        reset_threads()
    choice = choose_threads(requested, library_threads=library_threads())
    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    limiter = None
    if choice.limit is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            choice = replace(choice, note=_no_threadpoolctl_note(choice.limit))
        else:
            limiter = threadpool_limits(limits=choice.limit)
        # For libraries loaded from now on (and child processes); the user's own variables stay as they are.
        set_thread_env(choice.limit, override=choice.by != "environment")
    _active.append((requested, choice, limiter, saved))
    return choice


def _no_threadpoolctl_note(limit: int) -> str:
    if "numpy" not in sys.modules:
        return f"threadpoolctl is not installed: set {THREAD_VARIABLES[0]} and the other thread variables to {limit}"
    return (f"threadpoolctl is not installed: the thread variables are set to {limit} for libraries loaded from now "
            f"on, but NumPy's BLAS was already loaded with its default; pip install threadpoolctl, or set "
            f"OMP_NUM_THREADS={limit} before starting")


def reset_threads() -> None:
    """Undo :func:`configure_threads`: the pools' original sizes and the thread variables as they were."""
    while _active:
        _requested, _choice, limiter, saved = _active.pop()
        if limiter is not None:
            limiter.restore_original_limits()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
