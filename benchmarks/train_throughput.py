"""Single-process training throughput of dtrain's zoo models against PyTorch eager, on one CPU thread.

What is measured
    Samples per second of training steps on the digits data set (1437 training samples, scaled by the
    training split's statistics), float32, SGD with momentum 0.9 (lr 0.01), softmax cross-entropy, for
    four models built by ``dtrain.models.build_model`` and a PyTorch twin of each with the same
    architecture, parameter names and initial values (dtrain's ``state_dict`` is loaded into it):

    * ``mlp``: digits flat (64,) -> 128 -> 10, batch 64;
    * ``mlp-wide``: (64,) -> 512 -> 512 -> 10 (``hidden="512,512"``), batch 128;
    * ``cnn``: digits as (1, 8, 8), LeNet-style (2 conv 3x3 + max-pool, Linear 128, Dropout 0.25), batch 64;
    * ``resnet``: the zoo's small ResNet (conv-BN stem, two BasicBlocks, global average pool), batch 64.

    Three step implementations per model:

    * ``dtrain raw``: ``out = model(x); loss = F.cross_entropy(out, y); opt.zero_grad(); loss.backward();
      opt.step()`` on pre-made batches (inputs already ``dtrain.Tensor``);
    * ``dtrain Trainer``: ``dtrain.train.Trainer.train_step(x, y)`` (``monitor=False``) on the same
      batches as NumPy arrays, as the training loop runs it: device/dtype placement, the loss
      ``.item()`` and its finiteness check, the sync seam, the accuracy count;
    * ``torch``: the same raw loop in PyTorch eager, ``torch.set_num_threads(1)`` (skipped if torch
      does not import).

    Before timing, the twins are checked to compute the same numbers: eval-mode logits agree (rtol
    1e-4), and for the models without dropout the training losses of the first three steps agree (rtol
    1e-3; with dropout the two libraries draw different masks). Timing: a warm-up, then ``--repeats``
    interleaved repeats of N steps per implementation (the order rotates between repeats); the table
    reports the median over repeats. N is ``--steps``, or by default chosen per model and implementation
    (from its warm-up speed) so that every repeat takes about ``--target-s`` seconds.

    A short profile of the small MLP's dtrain step follows: per-phase time (forward, loss, zero_grad,
    backward, optimizer step) against a hand-written NumPy step doing the same array work with no
    engine, and cProfile's self time grouped by where it is spent.

    All BLAS / OpenMP pools are limited to one thread through environment variables set before NumPy
    and torch are imported.

How to run
    /work/venv/bin/python benchmarks/train_throughput.py                   # writes benchmarks/results/
    /work/venv/bin/python benchmarks/train_throughput.py --steps 50 --repeats 3 --out /tmp/res

Outputs ``train_throughput.md`` (table, profile, machine info, exact command) and
``train_throughput.csv`` in ``--out``. No assertion is made on timings; only the equivalence check
can fail.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import csv  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import CycledStep, blas_info, command_section, cpu_model, fmt_load  # noqa: E402

import dtrain as dt  # noqa: E402
import dtrain.nn.functional as F  # noqa: E402
from dtrain import optim  # noqa: E402
from dtrain.data import DataLoader, load_dataset  # noqa: E402
from dtrain.models import build_model, loss_and_accuracy  # noqa: E402
from dtrain.train import Trainer  # noqa: E402

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF

    torch.set_num_threads(1)
    _TORCH_ERROR = None
except Exception as exc:  # torch is optional: skip its column cleanly
    torch = None
    tnn = None
    TF = None
    _TORCH_ERROR = f"{type(exc).__name__}: {exc}"

LR = 0.01
MOMENTUM = 0.9
IMPLS = ("dtrain", "trainer", "torch")
IMPL_LABELS = {"dtrain": "dtrain raw", "trainer": "dtrain Trainer", "torch": "torch"}


@dataclass(frozen=True)
class Config:
    """One benchmarked model: zoo name, builder options, batch size, input layout."""

    label: str
    model: str
    batch: int
    image: bool
    options: dict = field(default_factory=dict)


CONFIGS = (
    Config("mlp", "mlp", 64, False),
    Config("mlp-wide", "mlp", 128, False, {"hidden": "512,512"}),
    Config("cnn", "cnn", 64, True),
    Config("resnet", "resnet", 64, True),
)


# ---------------------------------------------------------------------------------------------
# PyTorch twins (same module tree and parameter names as dtrain's zoo, so state_dicts match)
# ---------------------------------------------------------------------------------------------


def torch_mlp(widths: list[int]):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(tnn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(tnn.ReLU())
    return tnn.Sequential(*layers)


def torch_cnn():
    return tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(32 * 2 * 2, 128), tnn.ReLU(), tnn.Dropout(0.25), tnn.Linear(128, 10),
    )


def torch_resnet(width: int = 16, blocks=(1, 1), n_outputs: int = 10):
    """Mirror of dtrain.models.ResNet / BasicBlock (same attribute names)."""

    class BasicBlock(tnn.Module):
        def __init__(self, in_c, out_c, stride=1):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(out_c)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(out_c, out_c, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(out_c)
            self.downsample = None
            if stride != 1 or in_c != out_c:
                self.downsample = tnn.Sequential(tnn.Conv2d(in_c, out_c, 1, stride=stride, bias=False),
                                                 tnn.BatchNorm2d(out_c))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(1, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width),
                                       tnn.ReLU())
            stages, in_c = [], width
            for i, n in enumerate(blocks):
                out_c = width * 2**i
                for j in range(n):
                    stages.append(BasicBlock(in_c, out_c, stride=2 if (i > 0 and j == 0) else 1))
                    in_c = out_c
            self.layers = tnn.Sequential(*stages)
            self.fc = tnn.Linear(in_c, n_outputs)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def torch_twin(cfg: Config):
    if cfg.model == "mlp":
        hidden = [int(h) for h in cfg.options.get("hidden", "128").split(",")]
        return torch_mlp([64, *hidden, 10])
    if cfg.model == "cnn":
        return torch_cnn()
    if cfg.model == "resnet":
        return torch_resnet()
    raise ValueError(f"no torch twin for model {cfg.model!r}")


# ---------------------------------------------------------------------------------------------
# The three step implementations
# ---------------------------------------------------------------------------------------------


def make_batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training split shuffled once and cut into full batches (C-contiguous copies)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n = len(x) // batch
    return [(np.ascontiguousarray(x[order[i * batch:(i + 1) * batch]]),
             np.ascontiguousarray(y[order[i * batch:(i + 1) * batch]])) for i in range(n)]


class DtrainRaw(CycledStep):
    """The plain dtrain loop: forward, loss, zero_grad, backward, optimizer step."""

    def __init__(self, model, batches):
        self.model = self.net = model
        self.loss_fn = F.cross_entropy
        self.opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = [(dt.tensor(x), y) for x, y in batches]

    def eval_logits(self, i: int) -> np.ndarray:
        self.model.eval()
        with dt.no_grad():
            out = np.array(self.model(self.batches[i][0]).data)
        self.model.train()
        return out


class DtrainTrainer:
    """``Trainer.train_step`` on the same model and optimizer kind (its own SGD instance)."""

    def __init__(self, model, batches, train_split):
        loss_fn, correct_fn = loss_and_accuracy("classification")
        opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        loader = DataLoader(train_split, batch_size=len(batches[0][0]))
        self.trainer = Trainer(model, opt, loader, loss_fn=loss_fn, correct_fn=correct_fn, monitor=False,
                               progress=False)
        self.batches = batches

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        return self.trainer.train_step(x, y)


class TorchRaw(CycledStep):
    """The PyTorch eager twin of DtrainRaw."""

    def __init__(self, model, batches):
        self.model = self.net = model
        self.loss_fn = TF.cross_entropy
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def eval_logits(self, i: int) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            out = self.model(self.batches[i][0]).numpy().copy()
        self.model.train()
        return out


def build_impls(cfg: Config, splits, impls: list[str], seed: int) -> tuple[dict, int]:
    """The step objects of one config (sharing one dtrain model) and its parameter count."""
    dt.manual_seed(seed)
    model = build_model(cfg.model, splits.input_shape, splits.n_classes, **cfg.options)
    model.train()
    n_params = sum(int(p.data.size) for p in model.parameters())
    batches = make_batches(*splits.train.arrays, cfg.batch, seed)
    objs: dict = {}
    if "torch" in impls:
        torch.manual_seed(seed)
        twin = torch_twin(cfg)
        twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}, strict=True)
        twin.train()
        objs["torch"] = TorchRaw(twin, batches)
    if "dtrain" in impls:
        objs["dtrain"] = DtrainRaw(model, batches)
    if "trainer" in impls:
        objs["trainer"] = DtrainTrainer(model, batches, splits.train)
    return {name: objs[name] for name in impls}, n_params


def check_same(cfg: Config, objs: dict) -> str:
    """dtrain and torch compute the same numbers from the same initial state (raises otherwise)."""
    ref, twin = objs["dtrain"], objs["torch"]
    np.testing.assert_allclose(ref.eval_logits(0), twin.eval_logits(0), rtol=1e-4, atol=1e-5,
                               err_msg=f"{cfg.label}: eval-mode logits differ between dtrain and torch")
    if cfg.model == "cnn":  # Dropout: the two libraries draw different masks
        return "eval-mode logits agree (rtol 1e-4); training losses not compared (dropout masks differ)"
    for i in range(3):
        a, b = ref.loss_value(i), twin.loss_value(i)
        np.testing.assert_allclose(a, b, rtol=1e-3, err_msg=f"{cfg.label}: training loss of step {i + 1} differs")
    return "eval-mode logits agree (rtol 1e-4); training losses of the first 3 SGD steps agree (rtol 1e-3)"


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def run_steps(obj, n: int, start: int) -> float:
    step = obj.step
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(i)
    return time.perf_counter() - t0


def time_config(cfg: Config, objs: dict, steps: int | None, repeats: int, warmup: int,
                target_s: float) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per-step seconds of each repeat per implementation, and the steps per repeat each used."""
    warm = {name: run_steps(obj, warmup, 0) / warmup for name, obj in objs.items()}
    n = {name: steps or int(min(3000, max(10, round(target_s / t)))) for name, t in warm.items()}
    names = list(objs)
    per_repeat: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            per_repeat[name].append(run_steps(objs[name], n[name], r * n[name]) / n[name])
    return per_repeat, n


def run_config(cfg: Config, splits, impls: list[str], args) -> dict:
    objs, n_params = build_impls(cfg, splits, impls, args.seed)
    check = "not checked (torch missing)"
    if "torch" in objs and "dtrain" in objs:
        check = check_same(cfg, objs)
        print(f"[{cfg.label}] check passed: {check}")
    per_repeat, n = time_config(cfg, objs, args.steps, args.repeats, args.warmup, args.target_s)
    row: dict = {"model": cfg.label, "params": n_params, "batch": cfg.batch, "repeats": args.repeats}
    for name in IMPLS:
        ts = per_repeat.get(name)
        med = statistics.median(ts) if ts else float("nan")
        row[f"{name}_samples_per_s"] = cfg.batch / med if ts else float("nan")
        row[f"{name}_ms_per_step"] = med * 1e3 if ts else float("nan")
        row[f"{name}_best_samples_per_s"] = cfg.batch / min(ts) if ts else float("nan")
        row[f"{name}_steps"] = n.get(name, 0)
    row["ratio_dtrain_torch"] = row["dtrain_samples_per_s"] / row["torch_samples_per_s"]
    row["ratio_trainer_raw"] = row["trainer_samples_per_s"] / row["dtrain_samples_per_s"]
    row["check"] = check
    parts = [f"{IMPL_LABELS[k]} {row[f'{k}_samples_per_s']:9.0f}/s" for k in impls]
    print(f"[{cfg.label}] " + "  ".join(parts) + f"  (steps/repeat {'/'.join(str(v) for v in n.values())})")
    return row


# ---------------------------------------------------------------------------------------------
# Profile of the small MLP step
# ---------------------------------------------------------------------------------------------


class NumpyMLPPhases:
    """The small MLP's training step written directly in NumPy, same arrays and update rule as dtrain
    (torch-layout weights, softmax cross-entropy, SGD momentum with a scratch buffer): the array work
    dtrain cannot avoid, split into the same phases."""

    def __init__(self, model, batches):
        sd = model.state_dict()
        self.w1, self.b1 = sd["0.weight"].copy(), sd["0.bias"].copy()
        self.w2, self.b2 = sd["2.weight"].copy(), sd["2.bias"].copy()
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.bufs = [None] * 4
        self.scratch = [np.empty_like(p) for p in self.params]
        self.batches = batches

    def phases(self, i: int, t: dict) -> None:
        pc = time.perf_counter
        x, y = self.batches[i % len(self.batches)]
        n = len(x)
        t0 = pc()
        h = x @ self.w1.T
        h += self.b1
        a = np.maximum(h, 0)
        out = a @ self.w2.T
        out += self.b2
        t1 = pc()
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = np.mean(np.log(s[:, 0]) - z[rows, y])
        t2 = pc()
        t3 = pc()  # zero_grad: nothing to do
        g = e / s
        g[rows, y] -= 1
        g *= np.float32(1.0 / n)
        gw2 = g.T @ a
        gb2 = g.sum(axis=0)
        ga = g @ self.w2
        ga *= a > 0
        gw1 = ga.T @ x
        gb1 = ga.sum(axis=0)
        t4 = pc()
        for k, grad in enumerate((gw1, gb1, gw2, gb2)):
            buf = self.bufs[k]
            if buf is None:
                buf = self.bufs[k] = grad.copy()
            else:
                buf *= MOMENTUM
                buf += grad
            np.multiply(buf, LR, out=self.scratch[k])
            self.params[k] -= self.scratch[k]
        t5 = pc()
        del loss
        for key, dt_ in zip(("forward", "loss", "zero_grad", "backward", "step"),
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[key] += dt_


def dtrain_phases(raw: DtrainRaw, i: int, t: dict) -> None:
    pc = time.perf_counter
    x, y = raw.batches[i % len(raw.batches)]
    t0 = pc()
    out = raw.model(x)
    t1 = pc()
    loss = F.cross_entropy(out, y)
    t2 = pc()
    raw.opt.zero_grad()
    t3 = pc()
    loss.backward()
    t4 = pc()
    raw.opt.step()
    t5 = pc()
    for key, dt_ in zip(("forward", "loss", "zero_grad", "backward", "step"),
                        (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
        t[key] += dt_


PHASES = ("forward", "loss", "zero_grad", "backward", "step")


def _area(filename: str, funcname: str) -> str:
    """Where a cProfile entry's self time belongs."""
    f = filename.replace("\\", "/")
    if "/dtrain/" in f:
        rel = f.split("/dtrain/", 1)[1]
        if rel.startswith("autograd/engine"):
            return "autograd engine (dtrain/autograd/engine.py)"
        if rel.startswith("autograd/ops") or rel.startswith("autograd/function"):
            return "autograd ops + Function (forward/backward bodies, incl. inline NumPy operators)"
        if rel.startswith("autograd/tensor"):
            return "Tensor wrapper (dtrain/autograd/tensor.py)"
        if rel.startswith("nn/"):
            return "nn Modules / functional (dtrain/nn)"
        if rel.startswith("optim/"):
            return "optimizer (dtrain/optim)"
        if rel.startswith("backend"):
            return "backend helpers (dtrain/backend.py)"
        return f"other dtrain ({rel})"
    if filename == "~":  # C functions: builtins and NumPy methods/functions called by name
        if "numpy" in funcname or "ndarray" in funcname or funcname.startswith("<built-in method numpy"):
            return "NumPy C functions called by name (np.*, ndarray methods)"
        return "Python builtins (isinstance, getattr, len, heapq, ...)"
    if "/numpy/" in f:
        return "NumPy Python wrappers"
    return "other Python (benchmark loop, stdlib)"


def profile_mlp(splits, seed: int, steps: int) -> dict:
    """Phase timings of the small MLP (dtrain vs NumPy by hand) and a cProfile breakdown."""
    cfg = CONFIGS[0]
    dt.manual_seed(seed)
    model = build_model(cfg.model, splits.input_shape, splits.n_classes)
    batches = make_batches(*splits.train.arrays, cfg.batch, seed)
    raw = DtrainRaw(model, batches)
    ref = NumpyMLPPhases(model, batches)
    t_dt = dict.fromkeys(PHASES, 0.0)
    t_np = dict.fromkeys(PHASES, 0.0)
    scratch = dict.fromkeys(PHASES, 0.0)
    for i in range(50):  # warm-up
        dtrain_phases(raw, i, scratch)
        ref.phases(i, scratch)
    for i in range(steps):
        dtrain_phases(raw, i, t_dt)
        ref.phases(i, t_np)
    phases = {k: (t_dt[k] / steps, t_np[k] / steps) for k in PHASES}

    prof = cProfile.Profile()
    n_prof = max(100, steps // 2)
    prof.enable()
    for i in range(n_prof):
        raw.step(i)
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # self time of everything
    areas: dict[str, float] = {}
    funcs = []
    for (filename, line, name), (_cc, ncalls, tt, _ct, _callers) in st.stats.items():
        label = _area(filename, name)
        areas[label] = areas.get(label, 0.0) + tt
        short = filename.split("/dtrain/", 1)[1] if "/dtrain/" in filename else Path(filename).name
        where = name if filename == "~" else f"{short}:{line}({name})"
        funcs.append((tt, ncalls / n_prof, where))
    funcs.sort(reverse=True)
    return {"phases": phases, "areas": sorted(((v / total, k) for k, v in areas.items()), reverse=True),
            "funcs": [(tt / total, calls, where) for tt, calls, where in funcs[:8]], "steps": steps,
            "prof_steps": n_prof, "prof_total_us": total / n_prof * 1e6}


def profile_lines(p: dict) -> list[str]:
    ph = p["phases"]
    tot_dt = sum(v[0] for v in ph.values())
    tot_np = sum(v[1] for v in ph.values())
    over = {k: v[0] - v[1] for k, v in ph.items()}
    tot_over = tot_dt - tot_np
    biggest = sorted(over.items(), key=lambda kv: kv[1], reverse=True)
    ops = [a for a in p["areas"] if a[1].startswith("autograd ops")]
    engine = [a for a in p["areas"] if a[1].startswith("autograd engine")]
    numpy_c = [a for a in p["areas"] if a[1].startswith("NumPy C")]
    lines = [
        f"## Where the time goes: dtrain `mlp` step (64-128-10, batch 64), {p['steps']} steps", "",
        "Per phase, dtrain against a hand-written NumPy step doing the same array work with the same update rule "
        "(the array work without an engine; it includes NumPy's own per-call cost of about 1 µs per operation):", "",
        "| phase | dtrain µs/step | NumPy by hand µs/step | dtrain overhead µs | share of dtrain's overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in PHASES:
        d, n = ph[k]
        lines.append(f"| {k} | {d * 1e6:.1f} | {n * 1e6:.1f} | {(d - n) * 1e6:.1f} | "
                     f"{(d - n) / tot_over * 100:.0f}% |")
    lines += [f"| **total** | **{tot_dt * 1e6:.1f}** | **{tot_np * 1e6:.1f}** | **{tot_over * 1e6:.1f}** | 100% |",
              "",
              f"cProfile self time over {p['prof_steps']} raw steps ({p['prof_total_us']:.0f} µs/step under the "
              "profiler, which inflates Python calls), grouped by where it is spent; NumPy operators written inline "
              "(`a @ b`, `a * b`) count in the self time of the dtrain function that runs them:", "",
              "| where | share of self time |", "|---|---:|"]
    lines += [f"| {name} | {share * 100:.1f}% |" for share, name in p["areas"]]
    lines += ["", "Top functions by self time:", "",
              "| function | calls/step | share of self time |", "|---|---:|---:|"]
    lines += [f"| `{where}` | {calls:.1f} | {share * 100:.1f}% |" for share, calls, where in p["funcs"]]
    lines += [
        "", "Findings:", "",
        f"- The NumPy work itself (the same NumPy calls made by hand: kernels plus NumPy's own dispatch) takes "
        f"{tot_np * 1e6:.0f} µs of the {tot_dt * 1e6:.0f} µs step (**{tot_np / tot_dt * 100:.0f}%**); the other "
        f"**{tot_over / tot_dt * 100:.0f}%** ({tot_over * 1e6:.0f} µs) is dtrain's own Python overhead (graph "
        "recording, engine walk, module calls, optimizer loop).",
        f"- The overhead is largest in {biggest[0][0]} ({biggest[0][1] * 1e6:.0f} µs), then {biggest[1][0]} "
        f"({biggest[1][1] * 1e6:.0f} µs) and {biggest[2][0]} ({biggest[2][1] * 1e6:.0f} µs); zero_grad is "
        f"{ph['zero_grad'][0] * 1e6:.1f} µs.",
    ]
    if ops and engine and numpy_c:
        lines.append(
            f"- Under cProfile, {ops[0][0] * 100:.0f}% of self time is in op/Function bodies (this includes the inline "
            f"NumPy kernels), {engine[0][0] * 100:.0f}% in the engine's graph walk and {numpy_c[0][0] * 100:.0f}% in "
            "NumPy functions called by name; the rest is Tensor/Module/optimizer bookkeeping and builtins.")
    return lines


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _fmt(v: float, spec: str) -> str:
    return "—" if v != v else format(v, spec)  # NaN (missing column) as a dash


def table(rows: list[dict], have_torch: bool) -> list[str]:
    head = "| model | params | batch | dtrain raw samples/s | dtrain Trainer samples/s |"
    sep = "|---|---:|---:|---:|---:|"
    if have_torch:
        head += " torch samples/s | dtrain/torch (raw) |"
        sep += "---:|---:|"
    head += " Trainer/raw |"
    sep += "---:|"
    out = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['params']:,} | {r['batch']} | "
                f"{_fmt(r['dtrain_samples_per_s'], ',.0f')} | {_fmt(r['trainer_samples_per_s'], ',.0f')} |")
        if have_torch:
            line += f" {_fmt(r['torch_samples_per_s'], ',.0f')} | **{_fmt(r['ratio_dtrain_torch'], '.2f')}** |"
        line += f" {_fmt(r['ratio_trainer_raw'], '.2f')} |"
        out.append(line)
    return out


def write_outputs(out_dir: Path, rows: list[dict], prof: dict | None, args, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "train_throughput.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    have_torch = torch is not None and "torch" in args.impls
    torch_note = f"torch {torch.__version__}" if torch is not None else f"torch not available ({_TORCH_ERROR})"
    steps_note = (f"{args.steps} steps per repeat" if args.steps else
                  f"steps per repeat chosen per model and implementation so that a repeat takes about "
                  f"{args.target_s} s; the CSV has the counts")
    md = [
        "# Training throughput: dtrain zoo models vs PyTorch eager (CPU, 1 thread)",
        "",
        "Samples/s of single-process training steps on digits (float32, SGD lr 0.01 momentum 0.9, softmax "
        "cross-entropy). The PyTorch twin of each model has the same architecture and parameter names and starts "
        "from dtrain's initial `state_dict`.",
        "",
        "- **dtrain raw**: `model(x)` -> `F.cross_entropy` -> `opt.zero_grad()` -> `loss.backward()` -> "
        "`opt.step()` on pre-made batches.",
        "- **dtrain Trainer**: `dtrain.train.Trainer(..., monitor=False).train_step(x, y)` on the same batches "
        "(placement/casting of the batch, `loss.item()` and its finiteness check, the sync seam, the accuracy count).",
        "- **torch**: the raw loop in PyTorch eager, `torch.set_num_threads(1)`." if have_torch else
        f"- **torch: not measured** ({_TORCH_ERROR or 'excluded by --impls'}); only dtrain columns are shown.",
        "",
        f"Timing: {args.warmup} warm-up steps, then {args.repeats} interleaved repeats ({steps_note}); "
        "samples/s = batch / median step time over the repeats (the CSV also has the best repeat). "
        "Ratios > 1 mean dtrain (or the Trainer) is faster.",
        "",
        *table(rows, have_torch),
        "",
        "Trainer overhead per step (median Trainer step - median raw step; differences of a few percent of the "
        "step are within the run-to-run noise): "
        + ", ".join(f"{r['model']} {_fmt((r['trainer_ms_per_step'] - r['dtrain_ms_per_step']) * 1e3, '+.0f')} µs"
                    for r in rows) + ".",
        "",
        "Equivalence checks before timing:",
        "",
        *[f"- {r['model']}: {r['check']}" for r in rows],
        "",
    ]
    if prof is not None:
        md += [*profile_lines(prof), ""]
    md += [
        "## Machine",
        "",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores visible)",
        "- threads: 1 (OMP/OPENBLAS/MKL_NUM_THREADS=1 set before importing NumPy and torch; "
        "torch.set_num_threads(1))",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, {torch_note}",
        f"- BLAS: {blas_info()}",
        f"- load average (1/5/15 min) at start {fmt_load(args.load_start)}, at end {fmt_load(args.load_end)} "
        "(includes this benchmark itself, about 1; on 2 cores, values well above 1 mean other processes competed)",
        f"- wall time of the whole run: {args.wall_s:.0f} s",
        "",
        *command_section(command),
    ]
    (out_dir / "train_throughput.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None,
                   help="steps per repeat for every model (default: chosen per model from --target-s)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per implementation (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps per implementation (default 10)")
    p.add_argument("--target-s", type=float, default=0.4,
                   help="seconds per repeat when --steps is not given (default 0.4)")
    p.add_argument("--models", nargs="+", choices=[c.label for c in CONFIGS], default=[c.label for c in CONFIGS])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to run")
    p.add_argument("--profile-steps", type=int, default=2000, help="steps of the MLP phase profile (0: skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = p.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or args.repeats < 1 or args.warmup < 1:
        p.error("--steps, --repeats and --warmup must be positive")

    impls = [name for name in IMPLS if name in args.impls]
    if "torch" in impls and torch is None:
        print(f"torch not available, printing dtrain-only columns ({_TORCH_ERROR})")
        impls.remove("torch")
    args.impls = impls

    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv]) if argv is None else shlex.join(argv)
    args.load_start = os.getloadavg()
    t_start = time.perf_counter()
    flat = load_dataset("digits")
    image = load_dataset("digits", image=True)
    rows = [run_config(cfg, image if cfg.image else flat, impls, args)
            for cfg in CONFIGS if cfg.label in args.models]
    prof = None
    if args.profile_steps > 0:
        prof = profile_mlp(flat, args.seed, args.profile_steps)
        for line in profile_lines(prof)[-4:]:
            print(line)
    args.wall_s = time.perf_counter() - t_start
    args.load_end = os.getloadavg()
    write_outputs(args.out, rows, prof, args, command)
    print("\n".join(table(rows, "torch" in impls)))
    print(f"wrote {args.out / 'train_throughput.md'} and {args.out / 'train_throughput.csv'}")


if __name__ == "__main__":
    main()
