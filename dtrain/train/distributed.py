"""DDPSync: the Trainer's synchronisation seam backed by dtrain.distributed (DDP + collectives).

The Trainer calls ``prepare(model)`` once (wrapping the model in DistributedDataParallel, which
broadcasts rank 0's weights), runs forward through the wrapper, and calls ``after_backward(n)``
every step; metric vectors are summed with our ring all-reduce, so every rank sees the same bits.
"""

from __future__ import annotations

import numpy as np

from ..distributed import DistributedDataParallel, allreduce
from ..distributed.comm import Communicator
from ..distributed.compression import get as get_compressor
from .sync import LocalSync

_PER_RANK_OPTIONS = ("progress",)  # options that may differ between ranks

__all__ = ["DDPSync", "DistributedRunError", "agree", "mark_collective"]


class DistributedRunError(RuntimeError):
    """Something failed on some rank; raised on every rank so none is left waiting."""

    collective = True  # raised on every rank at once: no rank is left waiting


def mark_collective(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised on every rank together (the CLI then exits instead of aborting the job)."""
    try:
        exc.collective = True
    except AttributeError:  # an exception type with __slots__
        pass
    return exc


def agree(comm: Communicator, error: BaseException | None, what: str = "setup") -> None:
    """Collective: raise on every rank if any rank passes an error. A failing rank raises its own error;
    the others raise DistributedRunError quoting every failing rank's message."""
    with comm.watch(f"agree on {what}"):
        messages = comm.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        if error is not None:  # a failing rank reports its own problem
            raise mark_collective(error)
        detail = "; ".join(f"rank {r}: {m}" for r, m in failed)
        raise DistributedRunError(f"the job failed on {len(failed)} of {comm.size} ranks: {detail}")


class DDPSync(LocalSync):
    """Gradient averaging and metric reduction over ``comm`` for the Trainer.

    Args:
        comm: the world Communicator; algorithm: "ring" | "mpi"; bucket_mb: DDP bucket size in MiB;
        overlap: overlap bucket all-reduces with backward.
    """

    def __init__(self, comm: Communicator, algorithm: str = "ring", bucket_mb: float = 25.0, overlap: bool = True,
                 compression: str | None = None):
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.size
        self.algorithm, self.bucket_mb, self.overlap = algorithm, bucket_mb, overlap
        self.compression = get_compressor(compression).spec  # validates the spec before anything runs
        self.ddp: DistributedDataParallel | None = None

    def set_step(self, step: int) -> None:
        if self.comm.watchdog is not None:
            self.comm.watchdog.step = step

    def set_control(self, values) -> None:
        # Before backward: the values travel with the sample counts, launched with the first bucket.
        self.ddp.control[:] = 0
        self.ddp.control[:len(values)] = values

    def prepare(self, model):
        self.ddp = DistributedDataParallel(model, bucket_cap_mb=self.bucket_mb, overlap=self.overlap,
                                           algorithm=self.algorithm, comm=self.comm, compression=self.compression)
        return self.ddp

    def after_backward(self, n_samples: int) -> np.ndarray:
        if n_samples == 0:
            self.ddp.sync_without_backward()
        else:
            self.ddp.finish()
        return self.ddp.control_sum.copy()

    def sum(self, values: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(values, dtype=np.float64).copy()
        return allreduce(out, op="sum", algorithm="ring", comm=self.comm)

    def bytes_sent(self) -> tuple[int, int]:
        if self.ddp is None:
            return 0, 0
        return self.ddp.bytes_sent, self.ddp.bytes_uncompressed

    def compression_ratio(self) -> float:
        sent, raw = self.bytes_sent()
        return raw / sent if sent else 1.0

    def compressor_state(self) -> dict:
        if self.ddp is None:
            return {}
        return {"step": self.ddp.step, "compressor": self.ddp.compressor.state_dict()}

    def load_compressor_state(self, state: dict) -> None:
        self.ddp.__dict__["step"] = int(state["step"])  # seeds random-k, counts PowerSGD's warm-up
        self.ddp.compressor.load_state_dict(state["compressor"])

    def agree(self, error: BaseException | None) -> None:
        """Collective: raise DistributedRunError on every rank if any rank passes an error (with its message)."""
        agree(self.comm, error)

    def gather(self, obj) -> list | None:
        with self.comm.watch("gather (checkpoint state)"):
            return self.comm.comm.gather(obj, root=0)  # small control message (RNG states)

    def allgather(self, obj) -> list:
        with self.comm.watch("allgather (control)"):
            return self.comm.comm.allgather(obj)

    def check_identical(self, digests: list, step: int | None = None) -> None:
        """Divergence guard: raise on every rank if the ranks' parameters differ, naming the ranks and the
        first differing parameter. ``digests``: [(parameter name, hash of its bytes)] in registration order."""
        with self.comm.watch("divergence check"):
            everyone = self.comm.comm.allgather(digests)  # a small control message
        if all(d == everyone[0] for d in everyone):
            return
        when = f" at step {step}" if step is not None else ""
        names = [n for n, _ in everyone[0]]
        if any([n for n, _ in d] != names for d in everyone):
            raise DistributedRunError(f"parameters diverged across ranks{when}: the ranks hold differently named "
                                      "parameters")
        differing = [i for i, n in enumerate(names) if len({d[i][1] for d in everyone}) > 1]
        first = differing[0]
        groups: dict[str, list[int]] = {}
        for r, d in enumerate(everyone):
            groups.setdefault(d[first][1], []).append(r)
        ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
        detail = "; ".join(f"rank{'s' if len(g) > 1 else ''} {', '.join(map(str, g))} "
                           f"{'agree' if len(g) > 1 else 'has its own value'}" for g in ordered)
        raise DistributedRunError(
            f"parameters diverged across ranks{when}: first differing parameter {names[first]!r} ({detail}); "
            f"{len(differing)} of {len(names)} parameters differ. Ranks must run the same code, data order and "
            "seeds; a rank whose memory or arithmetic is faulty also shows up here")

    def check_same_config(self, config: dict) -> None:
        """Raise on every rank if the ranks were started with different options (e.g. mismatched MPMD command
        lines or config files), naming the options and ranks."""
        import json

        mine = {k: v for k, v in config.items() if k not in _PER_RANK_OPTIONS}
        with self.comm.watch("configuration check"):
            everyone = self.comm.comm.allgather(json.dumps(mine, sort_keys=True, default=str))
        if all(e == everyone[0] for e in everyone):
            return
        configs = [json.loads(e) for e in everyone]
        problems = []
        for key in sorted(set().union(*configs)):
            values = [c.get(key) for c in configs]
            if any(v != values[0] for v in values):
                odd = [r for r, v in enumerate(values) if v != values[0]]
                problems.append(f"{key} is {values[0]!r} on rank 0 but "
                                + ", ".join(f"{values[r]!r} on rank {r}" for r in odd[:3])
                                + (f" (and {len(odd) - 3} more ranks)" if len(odd) > 3 else ""))
        raise DistributedRunError("the ranks were started with different options: " + "; ".join(problems))

    def close(self) -> None:
        if self.ddp is not None:
            self.ddp.remove_hooks()
