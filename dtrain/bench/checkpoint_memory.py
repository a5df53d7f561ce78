"""Peak memory and time of gradient checkpointing (``dt.autograd.checkpoint``) on a deep MLP.

What is measured
    A deep MLP of ``--blocks`` blocks (default 16), each ``h = act(F.linear(h, W_i, b_i))`` with a
    square ``--width`` x ``--width`` weight (default 512) and ``act`` = exact GELU (``--act gelu``,
    default) or tanh, on a batch of ``--batch`` rows (default 256), float32, followed by an MSE loss
    against a fixed random target. Weights and biases are leaf tensors (``requires_grad=True``).

    * ``plain``: the blocks are called directly, so every block's saved activations (the Linear's
      input, the activation's input and helpers) stay alive until backward reaches that block.
    * ``checkpoint``: every ``--segment`` consecutive blocks (default 1: each block) are wrapped as
      ``h = dt.autograd.checkpoint(segment_fn, h, W_i, b_i, ...)``: forward keeps only the segment's
      inputs and backward recomputes the segment.

    Peak memory of one forward + backward is measured with ``tracemalloc`` (NumPy reports its array
    allocations to it): with parameters and inputs already allocated and ``.grad`` reset to None,
    ``tracemalloc.reset_peak()``, run the step, and report ``peak - memory before the step`` (the
    extra memory the step needed at its high point; it includes the parameter gradients, which
    both variants end up holding). Each variant is measured ``--mem-repeats`` times (the minimum is
    reported). Timing is done separately, without tracemalloc (it slows allocation down):
    ``--rounds`` interleaved rounds of ``--iters`` steps, median of the per-step time.

    Before measuring, the gradients of both variants are compared: they must agree
    (``np.testing.assert_allclose``, rtol 1e-6); the table also says whether they are bit-identical.

How to run
    python benchmarks/checkpoint_memory.py            # = dtrain bench checkpoint_memory (bench-results/DATE-TIME/)
    python benchmarks/checkpoint_memory.py --blocks 32 --act tanh --out /tmp/res

Outputs ``checkpoint_memory.md`` (table, machine info, exact command) and ``checkpoint_memory.csv`` in
``--out``. No assertion is made on memory or timings; only the gradient check can fail.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import dtrain as dt
import dtrain.nn.functional as F

from .. import env
from .machine import fmt_load, load_avg
from .report import OUT_HELP, command_line, command_section, default_out, write_csv

HELP = "gradient checkpointing (dt.autograd.checkpoint) on a deep MLP: peak memory and time vs plain"

MiB = 1024 * 1024
ACTS = {"gelu": F.gelu, "tanh": F.tanh}


class DeepMLP:
    """Leaf parameters, fixed input and target; ``step(variant)`` runs forward + backward."""

    def __init__(self, blocks: int, width: int, batch: int, act: str, segment: int, seed: int):
        rng = np.random.default_rng(seed)
        scale = np.float32(1.0 / np.sqrt(width))
        self.params = []
        for _ in range(blocks):
            w = rng.standard_normal((width, width), dtype=np.float32) * scale
            b = rng.standard_normal(width, dtype=np.float32) * np.float32(0.1)
            self.params.append((dt.tensor(w, requires_grad=True), dt.tensor(b, requires_grad=True)))
        self.flat = [p for wb in self.params for p in wb]
        self.x = dt.tensor(rng.standard_normal((batch, width), dtype=np.float32))
        self.target = dt.tensor(rng.standard_normal((batch, width), dtype=np.float32))
        self.act = ACTS[act]
        self.segment = segment

    def block(self, h, w, b):
        return self.act(F.linear(h, w, b))

    def segment_fn(self, h, *wb):
        for i in range(0, len(wb), 2):
            h = self.block(h, wb[i], wb[i + 1])
        return h

    def forward(self, variant: str):
        h = self.x
        if variant == "plain":
            for w, b in self.params:
                h = self.block(h, w, b)
        else:
            for s in range(0, len(self.params), self.segment):
                wb = [p for pair in self.params[s:s + self.segment] for p in pair]
                h = dt.autograd.checkpoint(self.segment_fn, h, *wb)
        return F.mse_loss(h, self.target)

    def zero_grad(self):
        for p in self.flat:
            p.grad = None

    def step(self, variant: str):
        self.zero_grad()
        loss = self.forward(variant)
        loss.backward()
        return loss

    def grads(self):
        return [p.grad.copy() for p in self.flat]


def check_grads(model: DeepMLP) -> tuple[bool, float]:
    """Gradients of both variants agree; returns (bit-identical, max abs difference)."""
    loss_a = float(model.step("plain").data)
    ga = model.grads()
    loss_b = float(model.step("checkpoint").data)
    gb = model.grads()
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6, err_msg="loss")
    identical = loss_a == loss_b
    max_diff = 0.0
    for k, (a, b) in enumerate(zip(ga, gb)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8, err_msg=f"grad of parameter {k}")
        identical = identical and np.array_equal(a, b)
        max_diff = max(max_diff, float(np.max(np.abs(a - b))))
    model.zero_grad()
    return identical, max_diff


def measure_peak(model: DeepMLP, variant: str) -> tuple[int, int, int]:
    """Extra traced bytes: (peak during forward+backward, held after forward, held after backward)."""
    model.zero_grad()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss = model.forward(variant)
        after_forward = tracemalloc.get_traced_memory()[0]
        loss.backward()
        del loss
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    model.zero_grad()
    return peak - base, after_forward - base, current - base


def time_variants(model: DeepMLP, variants: list[str], iters: int, rounds: int, warmup: int):
    for v in variants:
        for _ in range(warmup):
            model.step(v)
    per_round: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            t0 = time.perf_counter()
            for _ in range(iters):
                model.step(v)
            per_round[v].append((time.perf_counter() - t0) / iters)
    model.zero_grad()
    return per_round


def measure(args) -> tuple[list[dict], dict, bool, float]:
    """Check the gradients, then measure both variants: rows, bytes held after each step, bit-identical?,
    largest gradient difference."""
    model = DeepMLP(args.blocks, args.width, args.batch, args.act, args.segment, args.seed)
    identical, max_diff = check_grads(model)
    print(f"gradient check passed: bit-identical={identical}, max |diff|={max_diff:.3g}")

    variants = ["plain", "checkpoint"]
    peaks: dict[str, int] = {}
    saved: dict[str, int] = {}
    held: dict[str, int] = {}
    for _ in range(args.mem_repeats):
        for v in variants:
            pk, fwd, cur = measure_peak(model, v)
            peaks[v] = min(peaks.get(v, pk), pk)
            saved[v] = min(saved.get(v, fwd), fwd)
            held[v] = cur
    per_round = time_variants(model, variants, args.iters, args.rounds, args.warmup)

    rows = []
    for v in variants:
        med = statistics.median(per_round[v])
        rows.append({
            "variant": v if v == "plain" else f"checkpoint (every {args.segment} block{'s' * (args.segment > 1)})",
            "peak_mib": peaks[v] / MiB,
            "after_forward_mib": saved[v] / MiB,
            "after_forward_vs_plain": saved[v] / saved["plain"],
            "held_after_mib": held[v] / MiB,
            "time_ms_median": med * 1e3,
            "time_ms_min": min(per_round[v]) * 1e3,
            "peak_vs_plain": peaks[v] / peaks["plain"],
            "time_vs_plain": med / statistics.median(per_round["plain"]),
        })
        print(f"{v:10s} peak {peaks[v] / MiB:8.2f} MiB  after forward {saved[v] / MiB:8.2f} MiB  "
              f"time {med * 1e3:8.2f} ms")

    return rows, held, identical, max_diff


def report_lines(args, rows: list[dict], held: dict, identical: bool, max_diff: float, meta: dict) -> list[str]:
    """checkpoint_memory.md."""
    act_bytes = args.batch * args.width * 4
    grad_bytes = args.blocks * (args.width * args.width + args.width) * 4
    md = [
        "# Gradient checkpointing: peak memory and time (dtrain, NumPy CPU)",
        "",
        f"Deep MLP: {args.blocks} blocks of `{args.act}(F.linear(h, W, b))`, width {args.width}, batch "
        f"{args.batch}, float32, MSE loss; one forward + backward. `checkpoint` wraps every {args.segment} "
        f"block(s) in `dt.autograd.checkpoint(fn, h, W_i, b_i, ...)`.",
        "",
        "| variant | peak MiB | peak relative to plain | held after forward MiB | after forward relative to plain "
        "| time ms (median) | time ms (min) | time relative to plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(f"| {r['variant']} | {r['peak_mib']:.2f} | {r['peak_vs_plain']:.3f} | {r['after_forward_mib']:.2f} | "
                  f"{r['after_forward_vs_plain']:.3f} | {r['time_ms_median']:.2f} | {r['time_ms_min']:.2f} | "
                  f"{r['time_vs_plain']:.3f} |")
    md += [
        "",
        f"- Gradients: identical across variants (assert_allclose rtol 1e-6 passed); bit-identical: "
        f"**{'yes' if identical else 'no'}**, max |difference| = {max_diff:.3g}.",
        "- Peak MiB = tracemalloc peak during one forward+backward minus the traced memory just before it "
        f"(parameters, input and target already allocated, `.grad` = None); minimum of {args.mem_repeats} "
        "measurements. It includes the parameter gradients, which both variants hold at the end "
        f"({held['plain'] / MiB:.2f} MiB traced after the plain step, {held['checkpoint'] / MiB:.2f} MiB after "
        "the checkpointed one), so the gradients set a floor under the peak of either variant.",
        "- Held after forward = traced memory right after the forward pass (loss computed, backward not yet "
        "run) minus the same baseline: the activations the graph saved for backward, which is what "
        "checkpointing removes.",
        f"- For scale: one activation array ({args.batch}x{args.width} float32) is {act_bytes / MiB:.2f} MiB; "
        f"all parameter gradients are {grad_bytes / MiB:.2f} MiB.",
        f"- Time: {args.warmup} warm-up steps, then {args.rounds} interleaved rounds of {args.iters} steps, "
        "without tracemalloc; the checkpointed variant runs each block's forward twice.",
        "",
        "## Machine",
        "",
        f"- CPU: {env.cpu_model()} ({env.usable_cores()} usable cores); "
        f"OMP/OPENBLAS/MKL_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}",
        f"- Python {platform.python_version()}, NumPy {np.__version__}",
        f"- load average (1/5/15 min) at start {fmt_load(meta['load_start'])}, at end {fmt_load(meta['load_end'])} "
        "(the machine may be shared)",
        "",
        *command_section(command_line()),
    ]
    return md


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench checkpoint_memory``."""
    p.add_argument("--blocks", type=int, default=16, help="number of Linear+activation blocks (default 16)")
    p.add_argument("--width", type=int, default=512, help="block width (default 512)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--act", choices=sorted(ACTS), default="gelu", help="activation (default gelu)")
    p.add_argument("--segment", type=int, default=1, help="blocks per checkpointed segment (default 1)")
    p.add_argument("--iters", type=int, default=5, help="steps per timing round (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per variant (default 2)")
    p.add_argument("--mem-repeats", type=int, default=3, help="tracemalloc measurements per variant (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def run(args) -> int:
    """Measure and write checkpoint_memory.md and .csv."""
    meta = {"load_start": load_avg()}
    rows, held, identical, max_diff = measure(args)
    meta["load_end"] = load_avg()
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "checkpoint_memory.csv", list(rows[0]), rows)
    (out / "checkpoint_memory.md").write_text("\n".join(report_lines(args, rows, held, identical, max_diff, meta)))
    print(f"wrote {out / 'checkpoint_memory.md'} and {out / 'checkpoint_memory.csv'}")
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.checkpoint_memory
    from .cli import main

    sys.exit(main("checkpoint_memory"))
