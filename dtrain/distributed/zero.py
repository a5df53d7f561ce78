"""ZeRO stage 1: optimizer state sharded across ranks (Rajbhandari et al. 2020, "ZeRO").

    import dtrain.distributed as dist
    opt = dist.ZeroRedundancyOptimizer(model.parameters(), optim.Adam, lr=1e-3)   # bare model, no DDP
    loss = F.cross_entropy(model(x_shard), y_shard); loss.backward()
    opt.step()          # reduce-scatter grads, update this rank's shard, all-gather parameters
    opt.zero_grad()

Each param group's trainable parameters are laid out, in order, in one flat vector; the vector is cut
with ``chunk_bounds(total, world)`` and rank ``r`` owns slice ``[lo, hi)``. The wrapped optimizer is
built on this rank only, over ONE 1-D shard Parameter per group holding that slice, so its state
(Adam's ``exp_avg``/``exp_avg_sq``, SGD's momentum) takes about 1/N of the memory of the unsharded
optimizer. One ``step()``:

1. flatten the local gradients (zeros where ``.grad`` is None, as DDP does) into a flat buffer;
2. ring reduce-scatter: this rank receives the mean over ranks of its slice (or, with
   ``step(num_samples=n_r)``, the sample-weighted mean ``sum(n_r g_r) / sum(n_r)``, as DDP computes it);
3. copy this rank's slice of the current parameters into the shard (so parameters loaded into the
   model after construction are honoured) and run the wrapped optimizer's ``step()`` on it;
4. ring all-gather the updated shards and write them back into every parameter (in place).

Because the update rules are elementwise, slicing them changes no bit of the result: ZeRO gives the
parameters an unsharded optimizer gives after DDP's averaging (equal up to the rounding of the
gradient average). Optimizers whose update is not elementwise (a per-tensor norm, e.g. LAMB) would
be wrong here; every optimizer in :mod:`dtrain.optim` is elementwise.

With ``algorithm="shm"`` (every rank on one node) steps 1-4 happen in a shared-memory window instead
(zero_shm.py): backward writes the gradients there, each rank sums its chunk where they are, the
parameters themselves live in the window and the shard is this rank's chunk of them, and the other
chunks are read from the ranks that updated them. No copy in or out, half the optimizer's pass per rank
at 2 ranks: faster than DDP + the full optimizer on one node (docs/distributed.md).

``state_dict()`` gathers the shards into exactly the dict the unsharded optimizer would return (torch
format: per original parameter index, its ``step`` and full-shape arrays), on every rank;
``load_state_dict(full)`` keeps this rank's slice. So a checkpoint written at one world size resumes
at any other. Every collective goes through :mod:`dtrain.distributed.collectives` (the watchdog deadline
applies) and every rank calls them in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..autograd.function import enable_grad
from ..autograd.tensor import Tensor
from ..backend import get_array_module
from ..nn.parameter import Parameter
from ..nn.utils.clip import vector_norm
from ..optim.optimizer import Optimizer, zero_grads
from ..spec import is_real
from .collectives import allgather, allreduce, broadcast, chunk_bounds, reduce_scatter
from .comm import Communicator, get_world
from .zero_shm import ZeroWindow

__all__ = ["ZeroRedundancyOptimizer"]


class _Group:
    """One param group laid out flat: its parameters, their [start, stop) offsets, and this rank's shard."""

    __slots__ = ("bounds", "counts", "flat_grad", "hi", "lo", "offsets", "params", "shard", "total")

    def __init__(self, params: list, rank: int, size: int, xp, dtype, flat: bool = True):
        self.params = params
        self.offsets = []
        n = 0
        for p in params:
            self.offsets.append((n, n + p.data.size))
            n += p.data.size
        self.total = n
        self.bounds = chunk_bounds(n, size)
        self.counts = [hi - lo for lo, hi in self.bounds]
        self.lo, self.hi = self.bounds[rank]
        self.flat_grad = xp.empty(n, dtype=dtype) if flat else None  # (the ring's; a shared window has its own)
        self.shard = Parameter(xp.empty(self.hi - self.lo, dtype=dtype))
        self.load_shard()

    def load_shard(self) -> None:
        """Copy this rank's slice of the current parameter values into the shard."""
        out = self.shard.data
        for p, (a, b) in zip(self.params, self.offsets):
            lo, hi = max(a, self.lo), min(b, self.hi)
            if lo < hi:
                out[lo - self.lo: hi - self.lo] = p.data.reshape(-1)[lo - a: hi - a]

    def slices(self, flat) -> list:
        """Views of ``flat`` (a full-length vector) in the parameters' shapes."""
        return [flat[a:b].reshape(p.data.shape) for p, (a, b) in zip(self.params, self.offsets)]


class ZeroRedundancyOptimizer:
    """Wrap ``optimizer_class`` so that each rank keeps and updates only its shard of the optimizer state.

    Args:
        params: the model's parameters (Tensors that require grad), or param-group dicts
            ``{"params": [...], <hyperparameter overrides>}``, exactly as for the wrapped optimizer.
            The same parameters, in the same order and shapes, on every rank; one float dtype per group.
        optimizer_class: a subclass of :class:`dtrain.optim.Optimizer` with an elementwise update
            (SGD, Adam, AdamW, RMSprop, Adagrad).
        comm: the Communicator (default: the world from ``dist.init()``).
        broadcast_parameters: overwrite every rank's parameters with rank 0's at construction (as DDP
            does), so all ranks start from the same point.
        algorithm: "ring" (the collectives, any placement of ranks) or "shm" (every rank on one node: the
            parameters and gradients move into a shared-memory window; NumPy float32/float64 only).
        **optimizer_kwargs: the wrapped optimizer's hyperparameters (lr, betas, momentum, ...).

    Use it on the bare model (no DistributedDataParallel): ``step()`` does the gradient averaging. With
    equal per-rank batch sizes the plain mean over ranks equals DDP; for uneven shards pass
    ``step(num_samples=len(my_batch))`` to weight each rank by its samples, as DDP does.

    Attributes:
        optim: the wrapped optimizer over this rank's shard Parameters (one per group).
        param_groups: ``optim.param_groups``: schedulers that set ``group["lr"]`` reach the update.
        pending_num_samples: the sample count the next ``step()`` without ``num_samples`` uses (then cleared):
            how a training loop that calls a plain ``optimizer.step()`` (dtrain's Trainer, through its gradient
            sync) still weights each rank by its samples. None: no weighting.
        max_grad_norm: when set (> 0), every step clips the averaged gradient to this global 2-norm between the
            average and the update, as ``clip_grad_norm_`` would on DDP's averaged gradients (the norm summed
            from the shards with one small all-reduce; the same value up to its rounding). None: no clipping.
    """

    collective_state_dict = True  # state_dict() is a collective: a checkpoint asks it of every rank

    def __init__(self, params: Iterable, optimizer_class: type, comm: Communicator | None = None,
                 broadcast_parameters: bool = True, algorithm: str = "ring", **optimizer_kwargs):
        self.comm = comm if comm is not None else get_world()
        rank, size = self.comm.rank, self.comm.size
        where = f"ZeroRedundancyOptimizer (rank {rank})"
        if algorithm not in ("ring", "shm"):
            raise ValueError(f"{where}: algorithm must be 'ring' (collectives over MPI) or 'shm' (a shared-memory "
                             f"window, every rank on one node), got {algorithm!r}")
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"{where}: optimizer_class must be a dtrain.optim.Optimizer subclass such as optim.Adam "
                            f"(the class, not an instance), got {optimizer_class!r}")
        groups = _normalise_groups(params, where)
        self._groups: list[_Group] = []
        inner_groups = []
        for g, group in enumerate(groups):
            ps = group["params"]
            dtypes = sorted({str(p.data.dtype) for p in ps})
            if len(dtypes) != 1:
                culprits = ", ".join(f"params[{i}] {p.data.dtype}" for i, p in enumerate(ps))
                raise TypeError(f"{where}: param group {g} mixes dtypes {dtypes} ({culprits}); ZeRO flattens a group "
                                "into one vector: cast the model to one dtype or put each dtype in its own group")
            xp = get_array_module(ps[0].data)
            if broadcast_parameters:
                for p in ps:
                    broadcast(p.data, 0, comm=self.comm)
            zg = _Group(ps, rank, size, xp, ps[0].data.dtype, flat=algorithm == "ring")
            self._groups.append(zg)
            inner_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [zg.shard]})
        try:
            self.optim: Optimizer = optimizer_class(inner_groups, **optimizer_kwargs)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: building {optimizer_class.__name__}: {exc}") from None
        self._counts = np.zeros(1, dtype=np.float64)
        # algorithm='shm': each group's gradients and parameters in a shared window (zero_shm.py); made once the
        # wrapped optimizer has accepted the groups, so that a bad argument leaves the model as it was
        self._windows = None
        self.pending_num_samples: float | None = None
        self.max_grad_norm: float | None = None
        if algorithm == "shm":
            for g in self._groups:
                ZeroWindow.check(g.params, where)
            self._windows = [ZeroWindow(self.comm, g) for g in self._groups]

    # -- torch-shaped surface ---------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's groups (their ``"params"`` are this rank's shards)."""
        return self.optim.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optim.defaults

    @property
    def params(self) -> list[Tensor]:
        """The full (unsharded) parameters, in group order."""
        return [p for g in self._groups for p in g.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of the full parameters (drop them, or zero them in place)."""
        zero_grads(self.params, set_to_none)

    def step(self, closure: Callable[[], Any] | None = None, *, num_samples: int | float | None = None):
        """Average the gradients over ranks, update this rank's shard, gather the parameters (collective).

        Args:
            closure: optional callable re-evaluating the model and returning the loss (run with grad on).
            num_samples: this rank's sample count for this step: gradients are then weighted by it and
                divided by the total over ranks (DDP's exact average for uneven shards). Pass it on every
                rank or on none. None: the plain mean over ranks.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        if num_samples is None:
            num_samples, self.pending_num_samples = self.pending_num_samples, None
        weighted = num_samples is not None
        if weighted:
            if not is_real(num_samples) or not num_samples >= 0:
                raise ValueError(f"ZeroRedundancyOptimizer.step (rank {self.comm.rank}): num_samples must be a "
                                 f"non-negative number, got {num_samples!r}")
        if self._windows is not None:  # the sample counts travel in the window's headers
            return self._step_in_windows(loss, float(num_samples) if weighted else 1.0)
        if weighted:
            self._counts[0] = float(num_samples)
            allreduce(self._counts, op="sum", comm=self.comm)
            total = float(self._counts[0])
            if total <= 0:
                raise RuntimeError(f"ZeroRedundancyOptimizer.step (rank {self.comm.rank}): no rank had any samples")
        for g in self._groups:
            xp = get_array_module(g.flat_grad)
            for p, view in zip(g.params, g.slices(g.flat_grad)):
                if p.grad is None:
                    view[...] = 0
                elif weighted:
                    xp.multiply(p.grad, float(num_samples), out=view)
                else:
                    view[...] = p.grad
            shard_grad = reduce_scatter(g.flat_grad, op="sum" if weighted else "mean", comm=self.comm)
            if weighted:
                shard_grad /= total
            g.load_shard()
            g.shard.grad = shard_grad
        self._clip()
        self.optim.step()
        for g in self._groups:
            full = allgather(g.shard.data, counts=g.counts, comm=self.comm)
            for p, view in zip(g.params, g.slices(full)):
                p.data[...] = view
            g.shard.grad = None
        return loss

    def _step_in_windows(self, loss, num_samples: float):
        """``step`` with algorithm='shm': each group's chunk summed where backward wrote it, updated in place in
        the shared parameters, and the other chunks read from the ranks that updated them (zero_shm.py)."""
        for g, window in zip(self._groups, self._windows):
            g.shard.grad = window.reduce(num_samples)
        self._clip()
        self.optim.step()
        for g, window in zip(self._groups, self._windows):
            window.gather()
            g.shard.grad = None
        return loss

    def _clip(self) -> None:
        """``max_grad_norm``: scale the shards' averaged gradients by ``max_grad_norm / (norm + 1e-6)`` when that is
        below 1 (torch's rule, a NaN norm scaling too), the norm of the whole averaged gradient (collective)."""
        if self.max_grad_norm is None:
            return
        squares = np.zeros(1, dtype=np.float64)
        for g in self._groups:
            squares[0] += float(vector_norm(get_array_module(g.shard.grad), g.shard.grad, 2.0)) ** 2
        allreduce(squares, op="sum", algorithm="mpi", comm=self.comm)
        coef = self.max_grad_norm / (math.sqrt(squares[0]) + 1e-6)
        if not coef >= 1.0:
            for g in self._groups:
                g.shard.grad *= coef

    def state_bytes(self) -> int:
        """Bytes of this rank's optimizer state arrays (the sharded part: about 1/N of the unsharded)."""
        return sum(int(v.nbytes) for entry in self.optim.state.values() for v in entry.values() if hasattr(v, "nbytes"))

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Gather the shards into the unsharded optimizer's ``state_dict()`` (torch format), on every rank.

        Collective: every rank must call it. Parameter indices number the full parameters in group
        order; each stepped parameter gets its scalar state (``step``) and full-shape array copies.
        """
        inner = self.optim.state_dict()
        state: dict[int, dict[str, Any]] = {}
        groups = []
        index = 0
        for gi, (g, packed) in enumerate(zip(self._groups, inner["param_groups"])):
            entry = inner["state"].get(gi, {})
            # Every rank's shard was stepped alike, so the keys agree; sorted for the same collective order.
            full = {}
            for key in sorted(entry):
                value = entry[key]
                if hasattr(value, "shape") and hasattr(value, "dtype"):
                    full[key] = g.slices(allgather(value, counts=g.counts, comm=self.comm))
                else:
                    full[key] = value
            out_group = {k: v for k, v in packed.items() if k != "params"}
            out_group["params"] = list(range(index, index + len(g.params)))
            groups.append(out_group)
            for i in range(len(g.params)):
                if full:
                    state[index + i] = {k: (v[i].copy() if isinstance(v, list) else v) for k, v in full.items()}
            index += len(g.params)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an unsharded optimizer state dict (from ``state_dict()`` at any world size, or from the plain
        optimizer); this rank keeps its slice. Validated before anything changes."""
        where = f"ZeroRedundancyOptimizer.load_state_dict (rank {self.comm.rank})"
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups' (an optimizer state_dict)")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self._groups):
            raise ValueError(f"{where}: the state dict has {len(saved_groups)} param group(s), this optimizer has "
                             f"{len(self._groups)}")
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        inner_state, inner_groups = {}, []
        for gi, (g, saved) in enumerate(zip(self._groups, saved_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"{where}: param group {gi} has no 'params' key")
            indices = [int(i) for i in saved["params"]]
            if len(indices) != len(g.params):
                raise ValueError(f"{where}: param group {gi} has {len(indices)} parameter(s) in the state dict but "
                                 f"{len(g.params)} here")
            entries = [saved_state.get(i) or {} for i in indices]
            inner_groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": [gi]})
            if not any(entries):
                continue
            keys = set(entries[0])
            for i, e in zip(indices, entries):
                if set(e) != keys:
                    raise ValueError(f"{where}: parameter {i} of group {gi} has state keys {sorted(e)} but parameter "
                                     f"{indices[0]} has {sorted(keys)}; ZeRO keeps one shard per group and needs every "
                                     "parameter of a group stepped alike")
            shard = {}
            for key in sorted(keys):
                first = entries[0][key]
                if hasattr(first, "shape") and hasattr(first, "dtype") and not isinstance(first, np.generic):
                    pieces = []
                    for i, p, e in zip(indices, g.params, entries):
                        v = e[key]
                        if tuple(v.shape) != tuple(p.data.shape):
                            raise ValueError(f"{where}: state '{key}' of parameter {i} has shape {tuple(v.shape)}, "
                                             f"expected {tuple(p.data.shape)}")
                        pieces.append(np.asarray(v).reshape(-1) if get_array_module(v) is np else v.reshape(-1))
                    xp = get_array_module(pieces[0])
                    shard[key] = xp.concatenate(pieces)[g.lo: g.hi].copy()
                else:
                    values = {repr(e[key]) for e in entries}
                    if len(values) != 1:
                        raise ValueError(f"{where}: state '{key}' differs between the parameters of group {gi} "
                                         f"({sorted(values)}); ZeRO keeps one value per group")
                    shard[key] = first
            inner_state[gi] = shard
        self.optim.load_state_dict({"state": inner_state, "param_groups": inner_groups})

    def __repr__(self) -> str:
        return (f"ZeroRedundancyOptimizer(rank {self.comm.rank} of {self.comm.size}, "
                f"shards {[g.counts[self.comm.rank] for g in self._groups]} of {[g.total for g in self._groups]}, "
                f"{self.optim!r})")


def _normalise_groups(params, where: str) -> list[dict[str, Any]]:
    if isinstance(params, Tensor):
        raise TypeError(f"{where}: params must be an iterable of Tensors or param-group dicts, got a single Tensor; "
                        "wrap it in a list")
    if isinstance(params, dict):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{where}: params must be an iterable of Tensors or dicts, "
                        f"got {type(params).__name__}") from None
    if not params:
        raise ValueError(f"{where}: got an empty parameter list (pass model.parameters())")
    if all(isinstance(p, dict) for p in params):
        groups = [dict(g) for g in params]
    elif any(isinstance(p, dict) for p in params):
        raise TypeError(f"{where}: params must be all Tensors or all dicts (param groups), not a mix")
    else:
        groups = [{"params": params}]
    for gi, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"{where}: param group {gi} has no 'params' key")
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: param group {gi} params[{i}] is a {type(p).__name__}, expected a dtrain "
                                "Tensor (pass model.parameters(), not named_parameters())")
            if not p.requires_grad:
                raise ValueError(f"{where}: param group {gi} params[{i}] does not require grad; pass only trainable "
                                 "parameters ([p for p in model.parameters() if p.requires_grad])")
        if not ps:
            raise ValueError(f"{where}: param group {gi} has no parameters")
        group["params"] = ps
    return groups
