"""Training-step time on one GPU: dtrain (CuPy) against PyTorch CUDA eager, in the same run.

What is measured
    Milliseconds per training step (forward, cross-entropy, zero_grad, backward, SGD-momentum step) of
    the zoo's ``mlp`` (784 -> 1024 -> 1024 -> 10, batch 256) and ``cnn`` (digits-sized LeNet on 1x28x28,
    batch 256), float32, for dtrain on CuPy arrays and a PyTorch twin with the same architecture and
    initial weights (dtrain's state_dict loaded into it). Each step ends with a device synchronisation,
    so the time is the GPU's as well as Python's. Timing: warm-up, then ``--repeats`` repeats of
    ``--steps`` steps per implementation, interleaved; the table reports the median repeat.
    The goal (reported, not asserted): dtrain >= 0.7x torch's steps per second.

How to run
    python benchmarks/gpu_step.py         # = dtrain bench gpu_step; writes bench-results/DATE-TIME/gpu_step.md
    python benchmarks/gpu_step.py --steps 50 --repeats 5 --out /tmp/res

Without CuPy and a CUDA device it says so and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .peers import import_torch, torch_twin_of
from .report import OUT_HELP, command_line, command_section, default_out, write_markdown

HELP = "training-step time on one GPU: dtrain (CuPy) vs PyTorch CUDA eager (needs CuPy and a GPU)"
MODELS = {"mlp": ((784,), {"hidden": "1024,1024"}), "cnn": ((1, 28, 28), {})}


def _dtrain_step(name, batch, state):
    import cupy as cp

    import dtrain as dt
    import dtrain.nn.functional as F
    from dtrain import optim
    from dtrain.models import build_model

    shape, options = MODELS[name]
    dt.manual_seed(0)
    model = build_model(name, shape, 10, "classification", **options).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = dt.tensor(rng.standard_normal((batch, *shape)).astype(np.float32), device="cuda")
    y = cp.asarray(rng.integers(0, 10, batch))
    state[name] = {k: dt.backend.to_device(v, "cpu") for k, v in model.state_dict().items()}

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cp.cuda.get_current_stream().synchronize()
    return step


def _torch_step(torch, name, batch, state):
    import dtrain as dt

    shape, options = MODELS[name]
    dt.manual_seed(0)
    twin = _torch_twin(torch, name, shape, options)
    twin.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state[name].items()})
    twin = twin.cuda()
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, *shape)).astype(np.float32)).cuda()
    y = torch.from_numpy(rng.integers(0, 10, batch)).cuda()

    def step():
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
    return step


def _torch_twin(torch, name, shape, options):
    """The torch model with dtrain's module names, built from dtrain's own module tree."""
    from dtrain.models import build_model

    return torch_twin_of(torch, build_model(name, shape, 10, "classification", **options))


def _time(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def measure(args, torch) -> list[tuple]:
    """Median seconds per step of each implementation, per model: (model, dtrain, torch or None, ratio)."""
    rows, state = [], {}
    for name in MODELS:
        impls = {"dtrain": _dtrain_step(name, args.batch, state)}
        if torch is not None:
            impls["torch"] = _torch_step(torch, name, args.batch, state)
        for step in impls.values():
            _time(step, 5)  # warm-up: kernels compiled and cached
        times = {k: [] for k in impls}
        for _ in range(args.repeats):
            for k, step in impls.items():
                times[k].append(_time(step, args.steps))
        med = {k: float(np.median(v)) for k, v in times.items()}
        ratio = med["torch"] / med["dtrain"] if "torch" in med else None
        rows.append((name, med.get("dtrain"), med.get("torch"), ratio))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench gpu_step``."""
    p.add_argument("--batch", type=int, default=256, help="samples per step (default 256)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat (default 30)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def run(args) -> int:
    """Time both implementations and write gpu_step.md (nothing without a GPU)."""
    from dtrain.distributed.gpu import gpu_count

    if gpu_count() == 0:
        print("gpu_step: no CuPy/CUDA device here; nothing measured (run it on a GPU machine)")
        return 0
    import cupy as cp

    torch, _why = import_torch()
    torch = torch if torch is not None and torch.cuda.is_available() else None
    rows = measure(args, torch)
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    lines = ["# GPU training step: dtrain (CuPy) vs PyTorch CUDA eager", "",
             f"{device}; CuPy {cp.__version__}; torch {torch.__version__ if torch else 'absent'}; "
             f"Python {platform.python_version()}; batch {args.batch}, float32, SGD momentum.", "",
             "| model | dtrain ms/step | torch ms/step | dtrain speed / torch (goal >= 0.7) |", "|---|---:|---:|---:|"]
    for name, d, t, ratio in rows:
        lines.append(f"| {name} | {d * 1e3:.3f} | {t * 1e3 if t else float('nan'):.3f} | "
                     f"{f'**{ratio:.2f}**' if ratio else 'n/a'} |")
    lines += ["", *command_section(command_line())]
    write_markdown(args.out or default_out(), "gpu_step.md", lines)
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.gpu_step
    from .cli import main

    sys.exit(main("gpu_step"))
