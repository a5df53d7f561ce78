"""Compare two `dtrain train` runs of the same job (a CPU run and a GPU run): used by benchmarks/gpu_check.sh.

    python benchmarks/gpu_check_compare.py CPU_OUT GPU_OUT [--rtol 1e-3]

Reads each run's summary.json and metrics.jsonl. The runs agree when they took the same number of steps, their
per-epoch training losses and the final test loss agree within ``--rtol`` (float32 on different BLAS
libraries: sums in another order, so not bit for bit), and the test accuracies are within one sample of each
other. Prints the comparison; exits 1 when they disagree, 2 when a run's files are missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _load(out: Path) -> tuple[dict, list[float]]:
    try:
        summary = json.loads((out / "summary.json").read_text())
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        print(f"gpu_check_compare: cannot read the run in {out}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    losses = [float(r["train_loss"]) for r in records if "train_loss" in r and "epoch" in r]
    return summary, losses


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol * 1e-3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="compare a CPU and a GPU run of the same dtrain job")
    p.add_argument("cpu", type=Path)
    p.add_argument("gpu", type=Path)
    p.add_argument("--rtol", type=float, default=1e-3)
    args = p.parse_args(argv)
    (s_cpu, l_cpu), (s_gpu, l_gpu) = _load(args.cpu), _load(args.gpu)
    problems = []
    if s_cpu["steps"] != s_gpu["steps"]:
        problems.append(f"steps {s_cpu['steps']} on the CPU, {s_gpu['steps']} on the GPU")
    if len(l_cpu) != len(l_gpu) or not all(_close(a, b, args.rtol) for a, b in zip(l_cpu, l_gpu)):
        problems.append(f"training losses differ: CPU {l_cpu}, GPU {l_gpu}")
    if not _close(s_cpu["test_loss"], s_gpu["test_loss"], args.rtol):
        problems.append(f"test loss {s_cpu['test_loss']:.6g} on the CPU, {s_gpu['test_loss']:.6g} on the GPU")
    if abs(s_cpu["test_accuracy"] - s_gpu["test_accuracy"]) > 1.5 / 360:  # digits: 360 test samples
        problems.append(f"test accuracy {s_cpu['test_accuracy']:.4f} on the CPU, "
                        f"{s_gpu['test_accuracy']:.4f} on the GPU")
    print(f"CPU {args.cpu}: test_loss {s_cpu['test_loss']:.6g}, accuracy {s_cpu['test_accuracy']:.4f}; "
          f"GPU {args.gpu}: test_loss {s_gpu['test_loss']:.6g}, accuracy {s_gpu['test_accuracy']:.4f}")
    for line in problems:
        print(f"DISAGREE: {line}")
    print("agree within rtol", args.rtol if not problems else "")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
