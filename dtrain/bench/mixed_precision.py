"""Mixed precision on digits: accuracy, speed and memory of --precision fp16/bf16 against float32.

What is measured
    For the zoo's ``mlp`` and ``cnn`` with their default settings (20 epochs, SGD momentum), one process,
    one BLAS thread: the final test accuracy and loss of a full ``dtrain train`` run per precision, the
    training throughput it reports (samples/s), the steps skipped by the dynamic loss scale (fp16) and
    the scale at the end, and the peak memory NumPy allocates during one training step (tracemalloc,
    after a warm-up step): activations, gradients and the half copies of the weights. The goal of the
    issue: the same accuracy as float32 within 0.5 points.

    On a CPU half precision saves activation memory but not time: half-precision products are done
    as tensor cores do them (half inputs, float32 accumulation, one rounding), which on a CPU means
    converting to float32 for BLAS and back, and NumPy's float16 casts are slow. The speed-up belongs
    to GPUs' tensor cores.

How to run
    python benchmarks/mixed_precision.py     # = dtrain bench mixed_precision (bench-results/DATE-TIME/)
    python benchmarks/mixed_precision.py --models mlp --epochs 1 --out /tmp/mp
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

from .. import env
from .report import OUT_HELP, command_line, command_section, default_out, write_markdown

HELP = "mixed precision on digits: accuracy, speed and step memory of fp16/bf16 against fp32"


def config(**flags) -> dict:
    """A resolved ``dtrain train`` configuration with these flags (no progress bar, no monitoring)."""
    from dtrain.train.config import resolve_config
    from dtrain.train.job import model_defaults

    return resolve_config({"progress": False, "monitor": False, **flags}, None, model_defaults)


def step_peak_bytes(cfg: dict) -> int:
    """The most NumPy holds at once during one training step (tracemalloc), after a warm-up step."""
    from dtrain.train.job import build_job

    trainer = build_job(cfg)
    x, y = next(iter(trainer.train_loader.iter_epoch(0)))
    trainer.train_step(x, y)  # warm-up: buffers, optimizer state
    tracemalloc.start()
    trainer.train_step(x, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def measure(models: list[str], epochs: int | None) -> list[dict]:
    """One full training run per (model, precision), with its step memory, relative to fp32."""
    from dtrain.train.job import run as train

    rows = []
    extra = {"epochs": epochs} if epochs else {}
    for model in models:
        base = None
        for precision in ("fp32", "fp16", "bf16"):
            cfg = config(model=model, precision=precision, **extra)
            summary = train(cfg)
            peak = step_peak_bytes(config(model=model, precision=precision, **extra))
            if base is None:
                base = (summary, peak)
            rows.append({"model": model, "precision": precision, "acc": summary["test_accuracy"],
                         "loss": summary["test_loss"], "sps": summary["samples_per_s"], "peak": peak,
                         "d_acc": (summary["test_accuracy"] - base[0]["test_accuracy"]) * 100,
                         "speed": summary["samples_per_s"] / base[0]["samples_per_s"], "mem": peak / base[1],
                         "scale": cfg["loss_scale"]})
            print(rows[-1], flush=True)
    return rows


def report_lines(rows: list[dict], epochs: int | None) -> list[str]:
    """mixed_precision.md: the table and what it means."""
    lines = ["# Mixed precision on digits: accuracy, speed, memory", "",
             f"One process, 1 BLAS thread, {env.cpu_model()}. Default zoo settings "
             f"({f'{epochs} epochs' if epochs else '20 epochs'}). `peak step memory`: the most NumPy held at once "
             "during one training step (tracemalloc), after a warm-up step.", "",
             "| model | precision | loss scale | test accuracy | Δ vs fp32 (points) | test loss | samples/s | "
             "speed vs fp32 | peak step memory | memory vs fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['scale']} | {r['acc']:.4f} | {r['d_acc']:+.2f} | "
                     f"{r['loss']:.4f} | {r['sps']:,.0f} | {r['speed']:.2f}x | {r['peak'] / 1e6:.2f} MB | "
                     f"{r['mem']:.2f}x |")
    return lines + [
        "", "Goal: the same accuracy as float32 within 0.5 points. Half-precision products are computed as "
        "GPU tensor cores do them (half inputs, float32 accumulation, rounded once); on a CPU that means "
        "converting to float32 for BLAS and back, so the half types cost time here; the memory column shows "
        "what they save.", "", *command_section(command_line())]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench mixed_precision``."""
    p.add_argument("--models", default="mlp,cnn", help="comma-separated zoo models (default mlp,cnn)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the model's default, 20)")
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def run(args) -> int:
    """Train every (model, precision) and write mixed_precision.md."""
    rows = measure([m for m in args.models.split(",") if m], args.epochs)
    lines = report_lines(rows, args.epochs)
    write_markdown(args.out or default_out(), "mixed_precision.md", lines)
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.mixed_precision
    from .cli import main

    sys.exit(main("mixed_precision"))
