"""Single-process training throughput of dtrain's zoo models against PyTorch eager, on one CPU thread.

What is measured
    Samples per second of training steps on the digits data set (1437 training samples, scaled by the
    training split's statistics), float32, SGD with momentum 0.9 (lr 0.01), softmax cross-entropy, for
    four models built by ``dtrain.models.build_model`` and a PyTorch twin of each with the same
    architecture, parameter names and initial values (dtrain's ``state_dict`` is loaded into it):

    * ``mlp``: digits flat (64,) -> 128 -> 10, batch 64;
    * ``mlp-wide``: (64,) -> 512 -> 512 -> 10 (``hidden="512,512"``), batch 128;
    * ``cnn``: digits as (1, 8, 8), LeNet-style (2 conv 3x3 + max-pool, Linear 128, Dropout 0.25), batch 64;
    * ``resnet``: the zoo's small ResNet (conv-BN stem, two BasicBlocks, global average pool), batch 64;
    * ``cnn-cifar``: the same LeNet-style CNN on CIFAR-shaped synthetic images (3, 32, 32) with conv widths
      3 -> 32 -> 64 (``channels=(32, 64)``; Linear 4096 -> 128), batch 64 (``synthetic:image=32,channels=3``,
      1,280 samples, 10 classes).

    Five step implementations per model:

    * ``dtrain raw``: ``out = model(x); loss = F.cross_entropy(out, y); opt.zero_grad(); loss.backward();
      opt.step()`` on pre-made batches (inputs already ``dtrain.Tensor``);
    * ``dtrain captured``: the raw loop with forward and backward through ``dt.autograd.capture`` (checked
      to train to the same parameters and buffers as the raw loop, bit for bit, before timing);
    * ``dtrain Trainer``: ``dtrain.train.Trainer.train_step(x, y)`` (``monitor=False``) on the same
      batches as NumPy arrays, as the training loop runs it: device/dtype placement, the loss
      ``.item()`` and its finiteness check, the sync seam, the accuracy count;
    * ``dtrain Trainer --capture``: the same with ``TrainOptions(capture=True)``;
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
    and torch are imported. The torch twins are in :mod:`dtrain.bench.train_throughput_twins`, the
    profile in :mod:`dtrain.bench.train_throughput_profile`.

How to run
    python benchmarks/train_throughput.py            # = dtrain bench train_throughput (bench-results/DATE-TIME/)
    python benchmarks/train_throughput.py --steps 50 --repeats 3 --out /tmp/res

Outputs ``train_throughput.md`` (table, profile, machine info, exact command) and
``train_throughput.csv`` in ``--out``. No assertion is made on timings; only the equivalence check
can fail.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import dtrain as dt
import dtrain.nn.functional as F
from dtrain import optim

from .. import env
from .machine import blas_info, fmt_load, load_avg
from .peers import CycledStep, import_torch
from .report import OUT_HELP, command_line, command_section, default_out, fmt, write_csv
from .train_throughput_profile import NumpyMLPPhases, profile_lines, profile_mlp
from .train_throughput_twins import LR, MOMENTUM, TorchRaw, torch_twin

HELP = ("single-process training throughput of the zoo models: dtrain raw, dtrain captured, dtrain Trainer, "
        "PyTorch eager")

IMPLS = ("dtrain", "captured", "trainer", "trainer-captured", "torch")
IMPL_LABELS = {"dtrain": "dtrain raw", "captured": "dtrain captured", "trainer": "dtrain Trainer",
               "trainer-captured": "dtrain Trainer --capture", "torch": "torch"}


@dataclass(frozen=True)
class Config:
    """One benchmarked model: zoo name, builder options, batch size, input layout."""

    label: str
    model: str
    batch: int
    image: bool
    options: dict = field(default_factory=dict)
    data: str = "digits"

    def load(self):
        """The config's train/test Splits (digits flat or as images, or its synthetic spec)."""
        from dtrain.data import load_dataset

        return load_dataset("digits", image=self.image) if self.data == "digits" else load_dataset(self.data)


CONFIGS = (
    Config("mlp", "mlp", 64, False),
    Config("mlp-wide", "mlp", 128, False, {"hidden": "512,512"}),
    Config("cnn", "cnn", 64, True),
    Config("resnet", "resnet", 64, True),
    Config("cnn-cifar", "cnn", 64, True, {"channels": (32, 64)}, "synthetic:n=1600,image=32,channels=3,classes=10"),
)


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


class DtrainCaptured(DtrainRaw):
    """The raw loop with forward and backward through ``dt.autograd.capture`` (traced once, then replayed)."""

    def __init__(self, model, batches):
        super().__init__(model, batches)
        self.captured = dt.autograd.capture(lambda x, y: F.cross_entropy(model(x), y))

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        self.opt.zero_grad()
        loss = self.captured(x, y)
        self.opt.step()
        return loss


def check_captured(cfg: Config, splits, seed: int, steps: int = 3) -> str:
    """The captured step trains the model to the same parameters and buffers as the raw loop, bit for bit."""
    from dtrain.models import build_model

    states = []
    for kind in (DtrainRaw, DtrainCaptured):
        dt.manual_seed(seed)
        model = build_model(cfg.model, splits.input_shape, splits.n_classes, **cfg.options)
        model.train()
        obj = kind(model, make_batches(*splits.train.arrays, cfg.batch, seed))
        for i in range(steps):
            obj.step(i)
        states.append(model.state_dict())
    for name, a in states[0].items():
        if not np.array_equal(np.asarray(a), np.asarray(states[1][name])):
            raise AssertionError(f"{cfg.label}: the captured step's {name} differs from the raw loop's after "
                                 f"{steps} steps")
    return f"captured = raw bit for bit after {steps} steps (parameters and buffers)"


class DtrainTrainer:
    """``Trainer.train_step`` on the same model and optimizer kind (its own SGD instance)."""

    def __init__(self, model, batches, train_split, capture: bool = False):
        from dtrain.data import DataLoader
        from dtrain.models import loss_and_accuracy
        from dtrain.train import ReportOptions, Trainer, TrainOptions

        loss_fn, correct_fn = loss_and_accuracy("classification")
        opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        loader = DataLoader(train_split, batch_size=len(batches[0][0]))
        self.trainer = Trainer(model, opt, loader, loss_fn=loss_fn, correct_fn=correct_fn,
                               options=TrainOptions(capture=capture),
                               report=ReportOptions(monitor=False, progress=False))
        self.batches = batches

    def step(self, i: int):
        """``Trainer.train_step`` on batch ``i`` (cycled)."""
        x, y = self.batches[i % len(self.batches)]
        return self.trainer.train_step(x, y)


def build_impls(cfg: Config, splits, impls: list[str], seed: int) -> tuple[dict, int]:
    """The step objects of one config (sharing one dtrain model) and its parameter count."""
    from dtrain.models import build_model

    torch, _why = import_torch() if "torch" in impls else (None, None)
    dt.manual_seed(seed)
    model = build_model(cfg.model, splits.input_shape, splits.n_classes, **cfg.options)
    model.train()
    n_params = sum(int(p.data.size) for p in model.parameters())
    batches = make_batches(*splits.train.arrays, cfg.batch, seed)
    objs: dict = {}
    if "torch" in impls:
        torch.manual_seed(seed)
        twin = torch_twin(torch, cfg, model)
        twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}, strict=True)
        twin.train()
        objs["torch"] = TorchRaw(torch, twin, batches)
    if "dtrain" in impls:
        objs["dtrain"] = DtrainRaw(model, batches)
    if "captured" in impls:
        objs["captured"] = DtrainCaptured(model, batches)
    if "trainer" in impls:
        objs["trainer"] = DtrainTrainer(model, batches, splits.train)
    if "trainer-captured" in impls:
        objs["trainer-captured"] = DtrainTrainer(model, batches, splits.train, capture=True)
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
    """Seconds ``obj`` takes for steps ``start .. start + n - 1``."""
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
    """Check and time one model's implementations; its table row."""
    objs, n_params = build_impls(cfg, splits, impls, args.seed)
    check = "not checked (torch missing)"
    if "torch" in objs and "dtrain" in objs:
        check = check_same(cfg, objs)
        print(f"[{cfg.label}] check passed: {check}")
    if "captured" in objs:
        captured = check_captured(cfg, splits, args.seed)
        check = f"{check}; {captured}"
        print(f"[{cfg.label}] check passed: {captured}")
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
    row["ratio_captured_torch"] = row["captured_samples_per_s"] / row["torch_samples_per_s"]
    for name in ("dtrain", "captured"):  # per repeat: both ran in the same minute of the machine
        pairs = [t / d for t, d in zip(per_repeat.get("torch", []), per_repeat.get(name, []))]
        for stat, fn in (("median", statistics.median), ("min", min), ("max", max)):
            row[f"paired_{name}_torch_{stat}"] = fn(pairs) if pairs else float("nan")
    row["ratio_trainer_raw"] = row["trainer_samples_per_s"] / row["dtrain_samples_per_s"]
    row["ratio_trainer_captured"] = row["trainer-captured_samples_per_s"] / row["trainer_samples_per_s"]
    row["check"] = check
    parts = [f"{IMPL_LABELS[k]} {row[f'{k}_samples_per_s']:9.0f}/s" for k in impls]
    print(f"[{cfg.label}] " + "  ".join(parts) + f"  (steps/repeat {'/'.join(str(v) for v in n.values())})")
    return row


def table(rows: list[dict], have_torch: bool) -> list[str]:
    """The throughput table (samples/s per implementation, ratios)."""
    head = "| model | params | batch | dtrain raw samples/s | dtrain captured samples/s | dtrain Trainer samples/s |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if have_torch:
        head += " torch samples/s | dtrain/torch (raw) | captured/torch |"
        sep += "---:|---:|---:|"
    head += " Trainer/raw | Trainer --capture samples/s | Trainer --capture / Trainer |"
    sep += "---:|---:|---:|"
    out = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['params']:,} | {r['batch']} | "
                f"{fmt(r['dtrain_samples_per_s'], ',.0f')} | {fmt(r['captured_samples_per_s'], ',.0f')} | "
                f"{fmt(r['trainer_samples_per_s'], ',.0f')} |")
        if have_torch:
            line += (f" {fmt(r['torch_samples_per_s'], ',.0f')} | **{fmt(r['ratio_dtrain_torch'], '.2f')}** | "
                     f"**{fmt(r['ratio_captured_torch'], '.2f')}** |")
        line += (f" {fmt(r['ratio_trainer_raw'], '.2f')} | {fmt(r['trainer-captured_samples_per_s'], ',.0f')} | "
                 f"**{fmt(r['ratio_trainer_captured'], '.2f')}** |")
        out.append(line)
    return out


def _intro(rows: list[dict], args, have_torch: bool, torch_error) -> list[str]:
    steps_note = (f"{args.steps} steps per repeat" if args.steps else
                  f"steps per repeat chosen per model and implementation so that a repeat takes about "
                  f"{args.target_s} s; the CSV has the counts")
    return [
        "# Training throughput: dtrain zoo models vs PyTorch eager (CPU, 1 thread)",
        "",
        "Samples/s of single-process training steps on digits (cnn-cifar: CIFAR-shaped synthetic images, "
        "3x32x32) (float32, SGD lr 0.01 momentum 0.9, softmax cross-entropy). The PyTorch twin of each model "
        "has the same architecture and parameter names and starts "
        "from dtrain's initial `state_dict`.",
        "",
        "- **dtrain raw**: `model(x)` -> `F.cross_entropy` -> `opt.zero_grad()` -> `loss.backward()` -> "
        "`opt.step()` on pre-made batches.",
        "- **dtrain captured**: the raw loop with `loss = step(x, y)` for forward and backward, "
        "`step = dt.autograd.capture(lambda x, y: F.cross_entropy(model(x), y))` (traced on the first call, then "
        "replayed without the eager engine's per-op bookkeeping).",
        "- **dtrain Trainer**: `dtrain.train.Trainer(..., monitor=False).train_step(x, y)` on the same batches "
        "(placement/casting of the batch, `loss.item()` and its finiteness check, the sync seam, the accuracy count).",
        "- **dtrain Trainer --capture**: the same Trainer with `TrainOptions(capture=True)` (`dtrain train "
        "--capture`).",
        "- **torch**: the raw loop in PyTorch eager, `torch.set_num_threads(1)`." if have_torch else
        f"- **torch: not measured** ({torch_error or 'excluded by --impls'}); only dtrain columns are shown.",
        "",
        f"Timing: {args.warmup} warm-up steps, then {args.repeats} interleaved repeats ({steps_note}); "
        "samples/s = batch / median step time over the repeats (the CSV also has the best repeat). "
        "Ratios > 1 mean dtrain (or the Trainer) is faster.",
        "",
        *table(rows, have_torch),
        "",
        "Trainer overhead per step (median Trainer step - median raw step; differences of a few percent of the "
        "step are within the run-to-run noise): "
        + ", ".join(f"{r['model']} {fmt((r['trainer_ms_per_step'] - r['dtrain_ms_per_step']) * 1e3, '+.0f')} µs"
                    for r in rows) + ".",
        "",
        *(["Per-repeat ratios (each repeat runs the implementations back to back, so a slow spell of the machine "
           "hits both; median and range over the repeats): "
           + ", ".join(f"{r['model']} raw {_paired(r, 'dtrain')}, captured {_paired(r, 'captured')}" for r in rows)
           + ".", ""] if have_torch else []),
        "Equivalence checks before timing:",
        "",
        *[f"- {r['model']}: {r['check']}" for r in rows],
        "",
    ]


def _machine(args, torch_note: str) -> list[str]:
    return [
        "## Machine",
        "",
        f"- CPU: {env.cpu_model()} ({env.usable_cores()} usable cores)",
        "- threads: 1 (OMP/OPENBLAS/MKL_NUM_THREADS=1 set before importing NumPy and torch; "
        "torch.set_num_threads(1))",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, {torch_note}",
        f"- BLAS: {blas_info()}",
        f"- load average (1/5/15 min) at start {fmt_load(args.load_start)}, at end {fmt_load(args.load_end)} "
        "(includes this benchmark itself, about 1; on 2 cores, values well above 1 mean other processes competed)",
        f"- wall time of the whole run: {args.wall_s:.0f} s",
        "",
    ]


def _paired(row: dict, name: str) -> str:
    med, lo, hi = (row[f"paired_{name}_torch_{k}"] for k in ("median", "min", "max"))
    return f"{fmt(med, '.2f')} ({fmt(lo, '.2f')} to {fmt(hi, '.2f')})"


def write_outputs(out_dir: Path, rows: list[dict], prof: dict | None, args, command: str) -> None:
    """Write train_throughput.md and train_throughput.csv to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "train_throughput.csv", list(rows[0]), rows)
    torch, torch_error = import_torch()
    have_torch = torch is not None and "torch" in args.impls
    torch_note = f"torch {torch.__version__}" if torch is not None else f"torch not available ({torch_error})"
    md = [*_intro(rows, args, have_torch, torch_error), *([*profile_lines(prof), ""] if prof is not None else []),
          *_machine(args, torch_note), *command_section(command)]
    (out_dir / "train_throughput.md").write_text("\n".join(md))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench train_throughput``."""
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
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def _impls(args) -> list[str]:
    if (args.steps is not None and args.steps < 1) or args.repeats < 1 or args.warmup < 1:
        raise SystemExit(f"train_throughput: --steps, --repeats and --warmup must be positive, got "
                         f"{args.steps}, {args.repeats}, {args.warmup}")
    impls = [name for name in IMPLS if name in args.impls]
    torch, why = import_torch() if "torch" in impls else (None, None)
    if "torch" in impls and torch is None:
        print(f"torch not available, printing dtrain-only columns ({why})")
        impls.remove("torch")
    return impls


def _profile(splits, seed: int, steps: int) -> dict:
    """The phase split and cProfile of the small MLP's dtrain step (the first config)."""
    from dtrain.models import build_model

    cfg = CONFIGS[0]
    dt.manual_seed(seed)
    model = build_model(cfg.model, splits.input_shape, splits.n_classes)
    batches = make_batches(*splits.train.arrays, cfg.batch, seed)
    return profile_mlp(DtrainRaw(model, batches), NumpyMLPPhases(model, batches), steps)


def run(args) -> int:
    """Check and time every model, profile the small MLP, write train_throughput.md and .csv."""
    args.impls = _impls(args)
    args.load_start, t_start = load_avg(), time.perf_counter()
    rows = [run_config(cfg, cfg.load(), args.impls, args) for cfg in CONFIGS if cfg.label in args.models]
    prof = _profile(CONFIGS[0].load(), args.seed, args.profile_steps) if args.profile_steps > 0 else None
    if prof is not None:
        print("\n".join(profile_lines(prof)[-4:]))
    args.wall_s, args.load_end = time.perf_counter() - t_start, load_avg()
    out = args.out or default_out()
    write_outputs(out, rows, prof, args, command_line())
    print("\n".join(table(rows, "torch" in args.impls)))
    print(f"wrote {out / 'train_throughput.md'} and {out / 'train_throughput.csv'}")
    return 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.train_throughput
    from .cli import main

    sys.exit(main("train_throughput"))
