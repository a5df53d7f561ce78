"""Autograd overhead of dtrain against hand-written NumPy and PyTorch eager, on one CPU thread.

What is measured
    One training step's forward + backward (no optimizer update) of an MLP with ReLU activations and
    softmax cross-entropy (mean reduction, integer targets), float32, in three implementations that
    share the same data and weights:

    * ``dtrain``: leaf tensors ``dt.tensor(W, requires_grad=True)`` in torch layout (W: (out, in),
      b: (out,)); ``F.linear -> F.relu -> ... -> F.cross_entropy`` then ``loss.backward()``;
      ``p.grad = None`` before every step.
    * ``dtrain-captured``: the same step through ``dt.autograd.capture`` (traced on the first call, then
      each op's forward and backward replayed without the eager engine's per-op bookkeeping).
    * ``numpy``: the same math with a hand-written backward (the reference dtrain has to match).
    * ``dtrain-bodies`` and ``dtrain-apply``: the dtrain step taken apart (``autograd_layers``): the ops'
      forward and backward methods called directly on arrays, then the ops through ``Function.apply`` and
      the engine without the functional frontends; the report splits dtrain's overhead over NumPy into
      the ops' array code, apply + engine, and the frontends.
    * ``torch``: PyTorch CPU eager, ``torch.set_num_threads(1)`` (skipped if torch does not import).

    Before timing, the loss and all parameter gradients of the three are checked to agree
    (rtol 1e-4), so the timings compare the same computation. Timing uses ``time.perf_counter``:
    a warm-up, then ``--rounds`` interleaved rounds of ``--iters`` steps per implementation; the
    table reports the median and the minimum over rounds of the per-step time.

    Two configurations are run:

    * big (``--sizes``, default 784-1024-1024-10, ``--batch`` 128): BLAS-bound; the ratio
      speed(dtrain)/speed(numpy) = t_numpy / t_dtrain is the headline number (goal >= 0.9).
    * tiny (``--tiny-sizes``, default 784-32-10, ``--tiny-batch`` 8): BLAS time is negligible, so
      the per-step time is almost entirely Python-level engine overhead (reported in microseconds).

    All BLAS / OpenMP pools are limited to one thread through environment variables set before NumPy
    is imported (no threadpoolctl).

How to run
    python benchmarks/autograd_overhead.py                 # writes bench-results/DATE-TIME/
    python benchmarks/autograd_overhead.py --iters 10 --rounds 3 --out /tmp/res
    python benchmarks/autograd_overhead.py --impls dtrain --no-tiny --no-check  # profiling

Outputs ``autograd_overhead.md`` (tables, machine info, exact command) and ``autograd_overhead.csv``
in ``--out``. No assertion is made on timings; only the correctness check can fail.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import dtrain as dt
import dtrain.nn.functional as F

from .. import env
from .autograd_layers import DirectOps, OpBodiesMLP
from .machine import blas_info, fmt_load, load_avg
from .peers import import_torch
from .report import OUT_HELP, command_line, command_section, default_out, write_csv

HELP = "autograd overhead: MLP forward+backward, dtrain vs hand-written NumPy vs PyTorch (1 thread)"

IMPLS = ("dtrain", "dtrain-captured", "dtrain-apply", "dtrain-bodies", "numpy", "torch")


# ---------------------------------------------------------------------------------------------
# Problem setup
# ---------------------------------------------------------------------------------------------


def make_problem(sizes: list[int], batch: int, seed: int):
    """Data and He-initialised weights (torch layout), all float32 and C-contiguous."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=batch, dtype=np.int64)
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        w = (rng.standard_normal((fan_out, fan_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
        b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
        params.append((w, b))
    return x, y, params


# ---------------------------------------------------------------------------------------------
# a) dtrain
# ---------------------------------------------------------------------------------------------


class DtrainMLP:
    """Forward + backward of the MLP with dtrain's functional API (``self.F``)."""

    F = F

    def __init__(self, x, y, params):
        self.x = dt.tensor(x)
        self.y = y
        self.params = [(dt.tensor(w, requires_grad=True), dt.tensor(b, requires_grad=True)) for w, b in params]
        self.flat = [p for wb in self.params for p in wb]

    def step(self):
        for p in self.flat:
            p.grad = None
        h = self.x
        last = len(self.params) - 1
        for i, (w, b) in enumerate(self.params):
            h = self.F.linear(h, w, b)
            if i != last:
                h = self.F.relu(h)
        loss = self.F.cross_entropy(h, self.y)
        loss.backward()
        return loss

    def result(self):
        """The loss and every gradient (W1, b1, W2, ...) as NumPy arrays, after one step."""
        loss = self.step()
        return float(loss.data), [np.asarray(p.grad) for p in self.flat]


class CapturedMLP(DtrainMLP):
    """The same step as ``DtrainMLP``, through ``dt.autograd.capture``: traced on the first call, then replayed
    (each op's forward and backward without the eager engine's per-op bookkeeping)."""

    def __init__(self, x, y, params):
        super().__init__(x, y, params)
        self.captured = dt.autograd.capture(self._loss)

    def _loss(self, x, y):
        h = x
        last = len(self.params) - 1
        for i, (w, b) in enumerate(self.params):
            h = self.F.linear(h, w, b)
            if i != last:
                h = self.F.relu(h)
        return self.F.cross_entropy(h, y)

    def step(self):
        for p in self.flat:
            p.grad = None
        return self.captured(self.x, self.y)


# ---------------------------------------------------------------------------------------------
# b) hand-written NumPy (forward + manual backward)
# ---------------------------------------------------------------------------------------------


class NumpyMLP:
    def __init__(self, x, y, params):
        self.x = x
        self.y = y
        self.params = [(w.copy(), b.copy()) for w, b in params]
        self.rows = np.arange(x.shape[0])
        self.grads = None

    def step(self):
        x, y, rows, params = self.x, self.y, self.rows, self.params
        n = x.shape[0]
        # forward: keep the post-ReLU activations (their sign is the ReLU mask)
        acts = [x]
        h = x
        last = len(params) - 1
        for i, (w, b) in enumerate(params):
            h = h @ w.T
            h += b
            if i != last:
                np.maximum(h, 0, out=h)
                acts.append(h)
        # softmax cross-entropy, mean over the batch, numerically stable
        h -= h.max(axis=1, keepdims=True)
        e = np.exp(h)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - h[rows, y]))
        # backward: g = (softmax - onehot) / N
        e /= s
        e[rows, y] -= 1
        e *= np.float32(1.0 / n)
        g = e
        grads = [None] * (2 * len(params))
        for i in range(last, -1, -1):
            w = params[i][0]
            a = acts[i]
            grads[2 * i] = g.T @ a
            grads[2 * i + 1] = g.sum(axis=0)
            if i:
                g = g @ w
                g *= a > 0
        self.grads = grads
        return loss

    def result(self):
        loss = self.step()
        return loss, [np.asarray(g) for g in self.grads]


# ---------------------------------------------------------------------------------------------
# c) PyTorch CPU eager
# ---------------------------------------------------------------------------------------------


class TorchMLP(DtrainMLP):
    """The same step in PyTorch eager (the optional peer; only built when torch imports)."""

    def __init__(self, x, y, params):
        torch, why = import_torch()
        if torch is None:
            raise RuntimeError(f"autograd_overhead: torch is not available ({why})")
        self.F = torch.nn.functional
        self.x = torch.from_numpy(x.copy())
        self.y = torch.from_numpy(y.copy())
        self.params = [(torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_())
                       for w, b in params]
        self.flat = [p for wb in self.params for p in wb]

    def result(self):
        """The loss and every gradient as NumPy arrays, after one step."""
        loss = self.step()
        return float(loss.item()), [p.grad.numpy().copy() for p in self.flat]


class ApplyMLP(DtrainMLP):
    """The dtrain step with the ops called through ``Function.apply`` (no functional frontends)."""

    F = DirectOps


FACTORIES = {"dtrain": DtrainMLP, "dtrain-captured": CapturedMLP, "dtrain-apply": ApplyMLP,
             "dtrain-bodies": OpBodiesMLP, "numpy": NumpyMLP, "torch": TorchMLP}


# ---------------------------------------------------------------------------------------------
# Check and timing
# ---------------------------------------------------------------------------------------------


def check_same(models: dict, rtol: float, atol: float) -> None:
    """Loss and every gradient equal across implementations (reference: numpy)."""
    ref_loss, ref_grads = models["numpy"].result()
    for name, model in models.items():
        if name == "numpy":
            continue
        loss, grads = model.result()
        np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol, err_msg=f"{name}: loss")
        assert len(grads) == len(ref_grads), name
        for k, (g, r) in enumerate(zip(grads, ref_grads)):
            kind = "W" if k % 2 == 0 else "b"
            assert g.shape == r.shape and g.dtype == r.dtype == np.float32, (name, k, g.shape, g.dtype)
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{name}: grad {kind}{k // 2 + 1}")


def time_models(models: dict, iters: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of each round, rounds interleaved across implementations."""
    names = list(models)
    for name in names:
        for _ in range(warmup):
            models[name].step()
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            step = models[name].step
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            per_round[name].append((time.perf_counter() - t0) / iters)
    return per_round


def run_config(label: str, sizes: list[int], batch: int, impls: list[str], iters: int, rounds: int,
               warmup: int, seed: int, check: bool) -> list[dict]:
    x, y, params = make_problem(sizes, batch, seed)
    models = {name: FACTORIES[name](x, y, params) for name in impls}
    if check and "numpy" in models and len(models) > 1:
        check_same(models, rtol=1e-4, atol=1e-6)
        print(f"[{label}] check passed: loss and gradients agree across {', '.join(models)} (rtol 1e-4)")
    per_round = time_models(models, iters, rounds, warmup)
    rows = []
    ref = statistics.median(per_round["numpy"]) if "numpy" in per_round else None
    for name in impls:
        ts = per_round[name]
        med = statistics.median(ts)
        rows.append({
            "config": label,
            "sizes": "-".join(map(str, sizes)),
            "batch": batch,
            "impl": name,
            "median_s": med,
            "min_s": min(ts),
            "speed_vs_numpy": (ref / med) if ref is not None else float("nan"),
            "iters": iters,
            "rounds": rounds,
        })
        print(f"[{label}] {name:15s} median {med * 1e3:9.3f} ms  min {min(ts) * 1e3:9.3f} ms")
    return rows


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def fmt_time(seconds: float, unit: str) -> str:
    return f"{seconds * 1e3:.3f}" if unit == "ms" else f"{seconds * 1e6:.1f}"


def table(rows: list[dict], unit: str) -> list[str]:
    out = [f"| implementation | median {unit}/iter | min {unit}/iter | speed relative to numpy |",
           "|---|---:|---:|---:|"]
    for r in rows:
        speed = r["speed_vs_numpy"]
        out.append(f"| {r['impl']} | {fmt_time(r['median_s'], unit)} | {fmt_time(r['min_s'], unit)} | "
                   f"{speed:.3f}x |")
    return out


def ratio_lines(rows: list[dict]) -> list[str]:
    med = {r["impl"]: r["median_s"] for r in rows}
    lines = []
    if "dtrain" in med and "numpy" in med:
        lines.append(f"- speed(dtrain) / speed(numpy) = t_numpy / t_dtrain = **{med['numpy'] / med['dtrain']:.3f}**")
        lines.append(f"- dtrain overhead over numpy: {(med['dtrain'] - med['numpy']) * 1e6:.1f} µs/iter")
    if "dtrain-captured" in med and "numpy" in med:
        lines.append(f"- speed(dtrain-captured) / speed(numpy) = **{med['numpy'] / med['dtrain-captured']:.3f}** "
                     "(the same step through `dt.autograd.capture`: traced once, then replayed)")
    if all(k in med for k in ("dtrain", "dtrain-apply", "dtrain-bodies", "numpy")):
        us = {k: med[k] * 1e6 for k in ("dtrain", "dtrain-apply", "dtrain-bodies", "numpy")}
        lines.append(f"- dtrain's step taken apart (µs/iter): the ops' array code {us['dtrain-bodies']:.1f} "
                     f"(hand-written NumPy {us['numpy']:.1f}: {us['dtrain-bodies'] - us['numpy']:+.1f}); "
                     f"Function.apply, graph record and engine {us['dtrain-apply'] - us['dtrain-bodies']:+.1f}; "
                     f"functional frontends (argument checks) {us['dtrain'] - us['dtrain-apply']:+.1f}")
    if "dtrain" in med and "torch" in med:
        lines.append(f"- speed(dtrain) / speed(torch) = t_torch / t_dtrain = **{med['torch'] / med['dtrain']:.3f}**")
    return lines


def write_outputs(out_dir: Path, big: list[dict], tiny: list[dict], args, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = big + tiny
    write_csv(out_dir / "autograd_overhead.csv", list(rows[0]), rows)
    torch, why = import_torch()
    torch_note = f"torch {torch.__version__}" if torch is not None else f"torch not available ({why})"
    md = [
        "# Autograd overhead: dtrain vs hand-written NumPy vs PyTorch (CPU, 1 thread)",
        "",
        "Forward + backward (no optimizer step) of an MLP with ReLU and softmax cross-entropy (mean, integer "
        "targets), float32, same data and weights in every implementation. Loss and gradients were checked "
        "to agree (rtol 1e-4) before timing." if args.check else
        "Forward + backward of an MLP (ReLU, softmax cross-entropy). **Correctness check skipped (--no-check).**",
        "",
        f"Timing: {args.warmup} warm-up steps, then {args.rounds} interleaved rounds of N steps per "
        "implementation; median and minimum over rounds of the mean step time.",
        "",
        f"## Big MLP {big[0]['sizes']}, batch {big[0]['batch']} ({big[0]['iters']} iters x {big[0]['rounds']} rounds)",
        "",
        *table(big, "ms"),
        "",
        *ratio_lines(big),
    ]
    if tiny:
        md += [
            "",
            f"## Tiny MLP {tiny[0]['sizes']}, batch {tiny[0]['batch']}: Python/engine overhead "
            f"({tiny[0]['iters']} iters x {tiny[0]['rounds']} rounds)",
            "",
            "BLAS work is negligible here, so the time is dominated by per-op Python overhead.",
            "",
            *table(tiny, "µs"),
            "",
            *ratio_lines(tiny),
        ]
    md += [
        "",
        "## Machine",
        "",
        f"- CPU: {env.cpu_model()} ({env.usable_cores()} usable cores)",
        "- threads: 1 (OMP/OPENBLAS/MKL_NUM_THREADS=1 set before importing NumPy; torch.set_num_threads(1))",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, {torch_note}",
        f"- BLAS: {blas_info()}",
        f"- load average (1/5/15 min) at start {fmt_load(args.load_start)}, at end {fmt_load(args.load_end)} "
        "(includes this benchmark itself, about 1; on 2 cores, values well above 1 mean other processes competed)",
        "",
        *command_section(command),
    ]
    (out_dir / "autograd_overhead.md").write_text("\n".join(md))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench autograd_overhead``."""
    p.add_argument("--iters", type=int, default=20, help="steps per round, big MLP (default 20)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per implementation (default 5)")
    p.add_argument("--batch", type=int, default=128, help="batch size, big MLP (default 128)")
    p.add_argument("--sizes", type=int, nargs="+", default=[784, 1024, 1024, 10], help="big MLP layer widths")
    p.add_argument("--tiny-iters", type=int, default=1000, help="steps per round, tiny MLP (default 1000)")
    p.add_argument("--tiny-batch", type=int, default=8, help="batch size, tiny MLP (default 8)")
    p.add_argument("--tiny-sizes", type=int, nargs="+", default=[784, 32, 10], help="tiny MLP layer widths")
    p.add_argument("--no-tiny", dest="tiny", action="store_false", help="skip the tiny-MLP overhead table")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to run")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the correctness check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def _impls(args) -> list[str]:
    impls = list(args.impls)
    torch, why = import_torch() if "torch" in impls else (None, "")
    if "torch" in impls and torch is None:
        print(f"torch not available, skipping it ({why})")
        impls.remove("torch")
    if args.check and "numpy" not in impls and len(impls) > 1:
        impls.append("numpy")  # the reference of the check
    return impls


def run(args) -> int:
    """Time the big (and tiny) MLP per implementation; write autograd_overhead.md and .csv."""
    impls = _impls(args)
    args.load_start = load_avg()
    big = run_config("big", args.sizes, args.batch, impls, args.iters, args.rounds, args.warmup, args.seed,
                     args.check)
    tiny = []
    if args.tiny:
        tiny = run_config("tiny", args.tiny_sizes, args.tiny_batch, impls, args.tiny_iters, args.rounds,
                          args.warmup * 20, args.seed, args.check)
    for rows in (big, tiny):
        for line in ratio_lines(rows):
            print(line.replace("**", ""))
    args.load_end = load_avg()
    out = args.out or default_out()
    write_outputs(out, big, tiny, args, command_line())
    print(f"wrote {out / 'autograd_overhead.md'} and {out / 'autograd_overhead.csv'}")
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.autograd_overhead
    from .cli import main

    sys.exit(main("autograd_overhead"))
