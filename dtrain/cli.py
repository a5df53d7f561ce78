"""The ``dtrain`` command line: ``dtrain info`` and ``dtrain train``.

``train`` is, for now, a single-process MLP on the digits data built directly on the autograd engine
(the full Trainer, models, optimizers and ``mpiexec`` support arrive with the layers/optimizer and
distributed issues; their flags will be added here as they land).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def _info(_args) -> int:
    import dtrain

    lines = [f"dtrain {dtrain.__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"numpy {np.__version__}"]
    try:
        from mpi4py import MPI

        vendor, ver = MPI.get_vendor()
        lines.append(f"mpi4py {__import__('mpi4py').__version__}; MPI library {vendor} "
                     f"{'.'.join(map(str, ver))}; {MPI.Get_library_version().splitlines()[0].strip()}")
    except Exception as exc:  # mpi4py missing or no MPI library found
        lines.append(f"mpi4py: unavailable ({type(exc).__name__}: {exc})")
    if dtrain.backend.cupy_available():
        import cupy

        lines.append(f"cupy {cupy.__version__}; CUDA devices: {cupy.cuda.runtime.getDeviceCount()}")
    else:
        lines.append(f"cupy/CUDA: unavailable ({dtrain.backend._cupy_error})")
    lines.append(f"bfloat16: {'yes (ml_dtypes)' if dtrain.bfloat16 is not None else 'no (pip install ml_dtypes)'}")
    print("\n".join(lines))
    return 0


def _load_digits(seed: int):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("dtrain train: the digits data set needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    mu, sd = x[n_test:].mean(0), x[n_test:].std(0) + 1e-8  # statistics of the training split only
    x = (x - mu) / sd
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def _train(args) -> int:
    import dtrain as dt
    import dtrain.nn.functional as F

    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.hidden < 1:
        raise SystemExit(f"dtrain train: --epochs ({args.epochs}), --batch-size ({args.batch_size}), "
                         f"--hidden ({args.hidden}) must be >= 1 and --lr ({args.lr}) > 0")
    (xtr, ytr), (xte, yte) = _load_digits(args.seed)
    rng = np.random.default_rng(args.seed)

    def init(fan_in, fan_out):
        bound = 1.0 / np.sqrt(fan_in)  # torch.nn.Linear's default range
        w = dt.tensor(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32), requires_grad=True)
        b = dt.tensor(rng.uniform(-bound, bound, fan_out).astype(np.float32), requires_grad=True)
        return w, b

    params = [*init(64, args.hidden), *init(args.hidden, 10)]

    def model(x):
        w1, b1, w2, b2 = params
        return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)

    def evaluate():
        with dt.no_grad():
            logits = model(dt.tensor(xte, dtype=np.float32))
            loss = F.cross_entropy(logits, yte).item()
        return loss, float((logits.numpy().argmax(1) == yte).mean())

    metrics_file = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        metrics_file = open(os.path.join(args.out, "metrics.jsonl"), "w")
    start, step, seen = time.perf_counter(), 0, 0
    velocity = [np.zeros_like(p.data) for p in params]
    try:
        for epoch in range(1, args.epochs + 1):
            order = rng.permutation(len(xtr))
            train_loss = 0.0
            for i in range(0, len(order), args.batch_size):
                idx = order[i : i + args.batch_size]
                loss = F.cross_entropy(model(dt.tensor(xtr[idx], dtype=np.float32)), ytr[idx])
                for p in params:
                    p.grad = None
                loss.backward()
                for p, v in zip(params, velocity):  # SGD with momentum 0.9
                    v *= 0.9
                    v += p.grad
                    p.data -= args.lr * v
                train_loss += loss.item() * len(idx)
                step += 1
                seen += len(idx)
            test_loss, acc = evaluate()
            rec = {"epoch": epoch, "step": step, "train_loss": train_loss / len(xtr), "test_loss": test_loss,
                   "test_accuracy": acc, "samples_per_s": seen / (time.perf_counter() - start)}
            print(f"epoch {epoch:3d}  train_loss {rec['train_loss']:.4f}  test_loss {test_loss:.4f}  "
                  f"test_accuracy {acc:.4f}")
            if metrics_file:
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
    finally:
        if metrics_file:
            metrics_file.close()
    if args.out:
        summary = {"test_accuracy": acc, "test_loss": test_loss, "epochs": args.epochs, "steps": step,
                   "world_size": 1, "wall_s": time.perf_counter() - start,
                   "samples_per_s": seen / (time.perf_counter() - start)}
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dtrain", description="Distributed data-parallel training over MPI.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, MPI library, CUDA availability")
    info.set_defaults(func=_info)
    tr = sub.add_parser("train", help="train an MLP on the built-in digits data set (single process)")
    tr.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    tr.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    tr.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, momentum 0.9 (default 0.05)")
    tr.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP (default 128)")
    tr.add_argument("--seed", type=int, default=0, help="seed for init, split and shuffling (default 0)")
    tr.add_argument("--out", default=None, help="write metrics.jsonl and summary.json to this folder")
    tr.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
