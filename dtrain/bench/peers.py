"""What the benchmarks that train share: the optional PyTorch peer, a cycled training step, checksums.

PyTorch is only ever a peer measured in the same run (dtrain never needs it): ``import_torch`` returns
it with one thread, or the reason it is not there.
"""

from __future__ import annotations

import hashlib
import os
import socket

import numpy as np

__all__ = ["CycledStep", "checksum", "import_torch", "setup_torch_gloo", "slowest", "torch_twin_of"]


def import_torch(distributed: bool = False):
    """``(torch, None)`` with one intra-op and one inter-op thread, or ``(None, reason)`` when torch does not
    import (or, with ``distributed``, has no gloo backend)."""
    try:
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only allowed once, before any inter-op work)
            pass
        if distributed:
            import torch.distributed
            import torch.nn.parallel

            if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
                return None, f"torch {torch.__version__} has no gloo backend"
        return torch, None
    except Exception as exc:  # torch missing or broken: dtrain-only columns
        return None, f"{type(exc).__name__}: {exc}"


def setup_torch_gloo(cw) -> str | None:
    """Initialise torch.distributed (gloo, env://) from mpi4py's rank and size (``cw``: COMM_WORLD); rank 0
    picks a free port. None, or the reason it failed on any rank."""
    import torch.distributed as tdist

    port = None
    if cw.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = cw.bcast(port, root=0)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    error = None
    try:
        tdist.init_process_group("gloo", init_method="env://", rank=cw.rank, world_size=cw.size)
    except Exception as exc:
        error = f"gloo init failed: {type(exc).__name__}: {exc}"
    return next((e for e in cw.allgather(error) if e), None)


def torch_twin_of(torch, model):
    """A torch module mirroring the dtrain ``model`` (same module tree and names, so dtrain's ``state_dict``
    loads into it). Leaf layers (Linear, Conv2d, MaxPool2d, BatchNorm2d, ReLU, Flatten, Dropout) map to
    torch's; a Sequential maps to torch's Sequential; any other module becomes a torch module with the
    twins of its children and the dtrain class's own ``forward`` (the two APIs spell a forward alike)."""
    tnn = torch.nn
    makers = {
        "Linear": lambda m: tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
        "Conv2d": lambda m: tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                       bias=m.bias is not None),
        "MaxPool2d": lambda m: tnn.MaxPool2d(m.kernel_size, m.stride),
        "BatchNorm2d": lambda m: tnn.BatchNorm2d(m.num_features, m.eps, m.momentum),
        "ReLU": lambda m: tnn.ReLU(), "Flatten": lambda m: tnn.Flatten(), "Dropout": lambda m: tnn.Dropout(m.p),
    }
    return _twin(tnn, makers, model, "model")


def _twin(tnn, makers: dict, m, where: str):
    kind = type(m).__name__
    if kind in makers:
        return makers[kind](m)
    if kind == "Sequential":
        return tnn.Sequential(*(_twin(tnn, makers, c, f"{where}.{i}") for i, c in enumerate(m)))
    children = list(m.named_children())
    if not children:
        raise TypeError(f"no torch twin for {where} ({kind}); expected a container or one of {', '.join(makers)}")
    twin = type(kind, (tnn.Module,), {"forward": type(m).forward})()
    for name, value in vars(m).items():  # declared-but-absent submodules (e.g. downsample = None)
        if value is None and not name.startswith("_"):
            setattr(twin, name, None)
    for name, child in children:
        setattr(twin, name, _twin(tnn, makers, child, f"{where}.{name}"))
    return twin


def slowest(cw, value: float) -> float:
    """The largest ``value`` over the ranks of mpi4py communicator ``cw`` (a repeat's time is the slowest rank's)."""
    from mpi4py import MPI

    return float(cw.allreduce(value, op=MPI.MAX))


def checksum(arrays) -> str:
    """A 16-hex-digit SHA-256 prefix of the arrays' raw bytes (equal parameters <=> equal checksums)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class CycledStep:
    """One training step on pre-made batches, cycled by step index: forward through ``self.net``,
    ``self.loss_fn(out, y)``, zero_grad, backward, optimizer step. dtrain and PyTorch peers both use it
    (the two APIs spell the step the same way): subclasses set ``net``, ``loss_fn``, ``opt``, ``batches``."""

    net = loss_fn = opt = batches = None

    def step(self, i: int):
        """Train on batch ``i`` (cycled); return the loss tensor."""
        x, y = self.batches[i % len(self.batches)]
        loss = self.loss_fn(self.net(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss

    def loss_value(self, i: int) -> float:
        """Train on batch ``i`` and return the loss as a float."""
        return float(self.step(i).item())
