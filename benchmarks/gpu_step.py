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
    python benchmarks/gpu_step.py                   # writes benchmarks/results/gpu_step.md
    python benchmarks/gpu_step.py --steps 50 --repeats 5 --out /tmp/res

Without CuPy and a CUDA device it says so and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import command_section

import dtrain
import dtrain.nn.functional as F
from dtrain import optim
from dtrain.models import build_model

MODELS = {"mlp": ((784,), {"hidden": "1024,1024"}), "cnn": ((1, 28, 28), {})}


def _dtrain_step(name, batch, state):
    import cupy as cp

    shape, options = MODELS[name]
    dtrain.manual_seed(0)
    model = build_model(name, shape, 10, "classification", **options).to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = dtrain.tensor(rng.standard_normal((batch, *shape)).astype(np.float32), device="cuda")
    y = cp.asarray(rng.integers(0, 10, batch))
    state[name] = {k: dtrain.backend.to_device(v, "cpu") for k, v in model.state_dict().items()}

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cp.cuda.get_current_stream().synchronize()
    return step


def _torch_step(name, batch, state):
    import torch

    shape, options = MODELS[name]
    dtrain.manual_seed(0)
    twin = _torch_twin(name, shape, options)
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


def _torch_twin(name, shape, options):
    """The torch model with dtrain's module names, built from dtrain's own module tree."""
    import torch

    model = build_model(name, shape, 10, "classification", **options)
    layers = []
    for m in model:  # the zoo's mlp and cnn are Sequentials of these layer types
        kind = type(m).__name__
        if kind == "Linear":
            layers.append(torch.nn.Linear(m.in_features, m.out_features))
        elif kind == "Conv2d":
            layers.append(torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
        elif kind == "MaxPool2d":
            layers.append(torch.nn.MaxPool2d(m.kernel_size, m.stride))
        elif kind == "ReLU":
            layers.append(torch.nn.ReLU())
        elif kind == "Flatten":
            layers.append(torch.nn.Flatten())
        elif kind == "Dropout":
            layers.append(torch.nn.Dropout(m.p))
        else:
            raise TypeError(f"no torch twin for {kind}")
    return torch.nn.Sequential(*layers)


def _time(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    from dtrain.distributed.gpu import gpu_count

    if gpu_count() == 0:
        print("gpu_step: no CuPy/CUDA device here; nothing measured (run it on a GPU machine)")
        return 0
    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    import cupy as cp

    rows, state = [], {}
    for name in MODELS:
        impls = {"dtrain": _dtrain_step(name, args.batch, state)}
        if has_torch:
            impls["torch"] = _torch_step(name, args.batch, state)
        for step in impls.values():
            _time(step, 5)  # warm-up: kernels compiled and cached
        times = {k: [] for k in impls}
        for _ in range(args.repeats):
            for k, step in impls.items():
                times[k].append(_time(step, args.steps))
        med = {k: float(np.median(v)) for k, v in times.items()}
        ratio = med["torch"] / med["dtrain"] if "torch" in med else None
        rows.append((name, med.get("dtrain"), med.get("torch"), ratio))
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    lines = ["# GPU training step: dtrain (CuPy) vs PyTorch CUDA eager", "",
             f"{device}; CuPy {cp.__version__}; torch {torch.__version__ if has_torch else 'absent'}; "
             f"Python {platform.python_version()}; batch {args.batch}, float32, SGD momentum.", "",
             "| model | dtrain ms/step | torch ms/step | dtrain speed / torch (goal >= 0.7) |", "|---|---:|---:|---:|"]
    for name, d, t, ratio in rows:
        lines.append(f"| {name} | {d * 1e3:.3f} | {t * 1e3 if t else float('nan'):.3f} | "
                     f"{f'**{ratio:.2f}**' if ratio else 'n/a'} |")
    lines += ["", *command_section(shlex.join([sys.executable, *sys.argv]))]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
