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
    python benchmarks/mixed_precision.py            # writes benchmarks/results/mixed_precision.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tracemalloc
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import command_section, cpu_model  # noqa: E402

from dtrain.train.config import resolve_config  # noqa: E402
from dtrain.train.job import build_job, model_defaults, run  # noqa: E402


def config(**flags):
    return resolve_config({"progress": False, "monitor": False, **flags}, None, model_defaults)


def step_peak_bytes(cfg: dict) -> int:
    trainer = build_job(cfg)
    x, y = next(iter(trainer.train_loader.iter_epoch(0)))
    trainer.train_step(x, y)  # warm-up: buffers, optimizer state
    tracemalloc.start()
    trainer.train_step(x, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        base = None
        for precision in ("fp32", "fp16", "bf16"):
            cfg = config(model=model, precision=precision)
            summary = run(cfg)
            peak = step_peak_bytes(config(model=model, precision=precision))
            if base is None:
                base = (summary, peak)
            rows.append({"model": model, "precision": precision, "acc": summary["test_accuracy"],
                         "loss": summary["test_loss"], "sps": summary["samples_per_s"], "peak": peak,
                         "d_acc": (summary["test_accuracy"] - base[0]["test_accuracy"]) * 100,
                         "speed": summary["samples_per_s"] / base[0]["samples_per_s"], "mem": peak / base[1],
                         "scale": cfg["loss_scale"]})
            print(rows[-1], flush=True)
    lines = ["# Mixed precision on digits: accuracy, speed, memory", "",
             f"One process, 1 BLAS thread, {cpu_model()}. Default zoo settings (20 epochs). `peak step memory`: the "
             "most NumPy held at once during one training step (tracemalloc), after a warm-up step.", "",
             "| model | precision | loss scale | test accuracy | Δ vs fp32 (points) | test loss | samples/s | "
             "speed vs fp32 | peak step memory | memory vs fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['scale']} | {r['acc']:.4f} | {r['d_acc']:+.2f} | "
                     f"{r['loss']:.4f} | {r['sps']:,.0f} | {r['speed']:.2f}x | {r['peak'] / 1e6:.2f} MB | "
                     f"{r['mem']:.2f}x |")
    lines += ["", "Goal: the same accuracy as float32 within 0.5 points. Half-precision products are computed as "
              "GPU tensor cores do them (half inputs, float32 accumulation, rounded once); on a CPU that means "
              "converting to float32 for BLAS and back, so the half types cost time here; the memory column shows "
              "what they save.", "", *command_section(shlex.join([sys.executable, *sys.argv]))]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixed_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
