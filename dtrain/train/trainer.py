"""Trainer: the training loop — epochs, evaluation, metrics, monitoring, checkpoints, early stopping.

One step is: forward, loss, ``zero_grad``, backward, ``sync.after_backward(n)`` (the seam where a
distributed job averages gradients; a no-op in one process), optional clipping, ``optimizer.step()``
and a per-step scheduler step. After each epoch the model is evaluated on the test split and one
metrics record is logged (rank 0 prints it and appends it to ``metrics.jsonl``).

Reproducibility: everything random comes from seeded generators (model init and dropout from
``dtrain.manual_seed(seed)`` set by the caller, shuffling from the loader's (seed, epoch) rule), so
the same seed on the same machine gives a bitwise-identical run. The loop's position (epoch, batch
within the epoch, step, partial epoch sums) is plain data in :class:`TrainState`, saved in
checkpoints, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import backend
from ..autograd.autocast import autocast
from ..autograd.function import no_grad
from ..autograd.tensor import Tensor
from ..backend import as_device, is_float_dtype, resolve_dtype, to_device
from ..nn.utils.clip import clip_grad_norm_
from ..optim.lr_scheduler import ReduceLROnPlateau
from . import monitor as mon
from .checkpoint import CheckpointError, CheckpointManager, param_checksum
from .log import RankLogger
from .loss_scale import LossScaler, make_loss_scaler
from .sync import LocalSync

__all__ = ["EarlyStopping", "TrainState", "Trainer", "TrainingInterrupted", "param_digests"]

NONFINITE_POLICIES = ("raise", "skip")
PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}  # --precision -> autocast dtype


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training at a step boundary on every rank (after the final checkpoint).

    Attributes: signum, step (steps completed), checkpoint (the path written, or None).
    """

    collective = True  # every rank stops at the same step and raises it together

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        saved = (f"checkpoint {checkpoint} written; continue with --resume {checkpoint}" if checkpoint
                 else "no checkpoint written (no --checkpoint-dir or --out)")
        super().__init__(f"interrupted by {name} after step {step}: {saved}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def param_digests(model) -> list[tuple[str, str]]:
    """[(name, 16-byte BLAKE2b of the bytes)] for every parameter, in registration order: what ranks compare
    to detect divergence (buffers such as BatchNorm running statistics are per rank by design)."""
    out = []
    for name, p in model.named_parameters():
        a = np.ascontiguousarray(to_device(p.data, "cpu"))
        out.append((name, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()))
    return out

SUMMARY_KEYS = ("test_accuracy", "test_loss", "epochs", "steps", "world_size", "wall_s", "samples_per_s",
                "compression", "compression_ratio", "param_checksum")


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` ("test_loss" or "train_loss") has not improved by ``min_delta`` for
    ``patience`` evaluations in a row."""

    patience: int
    min_delta: float = 0.0
    monitor: str = "test_loss"

    def __post_init__(self):
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"early stopping patience must be a positive integer, got {self.patience!r}")
        if self.monitor not in ("test_loss", "train_loss"):
            raise ValueError(f"early stopping monitors 'test_loss' or 'train_loss', got {self.monitor!r}")


@dataclass
class TrainState:
    """Where the loop is: everything needed (with the model/optimizer/RNG state) to resume exactly."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimizer steps taken
    loss_sum: float = 0.0  # this epoch so far, summed over samples (this rank)
    correct: float = 0.0
    seen: int = 0  # samples this rank trained on this epoch
    samples: int = 0  # samples trained on, all ranks, whole run
    train_time: float = 0.0  # seconds spent in training steps, whole run
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0  # steps skipped on every rank because the gradients were non-finite
    loss_scale: dict | None = None  # the loss scaler's state (saved with checkpoints)
    bytes_at_epoch_start: int = 0  # this rank's bytes sent for gradient sync before this epoch
    step_at_epoch_start: int = 0
    history: list = field(default_factory=list)  # metrics records
    grad_flow: list = field(default_factory=list)  # per-epoch layer gradient norms

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        return cls(**d)


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader``, evaluating on ``test_loader`` every epoch.

    Args:
        model, optimizer: an ``nn.Module`` and a ``dtrain.optim`` optimizer over its parameters.
        train_loader: a ``dtrain.data.DataLoader`` (``iter_epoch(epoch, start_batch)`` is used so runs
            resume mid-epoch); test_loader: optional, evaluated after every epoch.
        loss_fn: ``loss_fn(output, target) -> scalar Tensor``; correct_fn: ``(output, target) -> number
            of correct predictions`` or None (regression: no accuracy).
        epochs: passes over the training data; max_steps: stop after this many optimizer steps.
        scheduler: an LR scheduler stepped after every optimizer step (ReduceLROnPlateau: after every
            evaluation, with the monitored loss).
        clip_grad_norm: clip the global gradient norm to this value before each step.
        early_stopping: an :class:`EarlyStopping` or None.
        checkpoints: a :class:`CheckpointManager` or None; checkpoint_every: steps between checkpoints
            (0: none), checkpoint_every_epochs: epochs between checkpoints (0: none); one is always
            written at the end when a manager is given.
        out_dir: write metrics.jsonl, summary.json and PNG plots there (rank 0).
        sync: the gradient/metric synchronisation seam (:class:`LocalSync` for one process).
        device, dtype: where and in which float dtype the batches are placed.
        monitor: record gradient flow, weight and activation statistics once per epoch.
        progress: show a tqdm progress bar on rank 0 (None: only when stderr is a terminal).
        config: the run's configuration, stored in checkpoints and summary files.
        nonfinite: what to do when the (all-reduced) gradients are non-finite: "raise" a FloatingPointError
            naming the step and the ranks whose loss was non-finite, or "skip" the step on every rank
            (counted in ``state.skipped_steps`` and logged). A dynamic loss scale always skips and backs off.
        loss_scale: None/"none", "dynamic", a number (fixed scale) or a :class:`LossScaler`.
        check_every: compare parameter digests across ranks every this many steps (0: only at the end).
        handle_signals: on SIGINT/SIGTERM finish the current step on every rank, write a final checkpoint
            (rank 0) and raise :class:`TrainingInterrupted`; a second signal interrupts at once.
        precision: "fp32", or "fp16"/"bf16" for mixed precision: forward (and so backward) of matmul, linear
            and conv2d in half precision under :func:`dtrain.autograd.autocast`, parameters and optimizer
            in float32, the loss in float32.
    """

    def __init__(self, model, optimizer, train_loader, test_loader=None, *, loss_fn: Callable,
                 correct_fn: Callable | None = None, epochs: int = 1, max_steps: int | None = None,
                 scheduler=None, clip_grad_norm: float | None = None, early_stopping: EarlyStopping | None = None,
                 checkpoints: CheckpointManager | None = None, checkpoint_every: int = 0,
                 checkpoint_every_epochs: int = 0, out_dir: str | None = None, sync=None, device=None, dtype=None,
                 monitor: bool = True, progress: bool | None = None, logger: RankLogger | None = None,
                 config: dict | None = None, nonfinite: str = "raise", loss_scale=None, check_every: int = 0,
                 handle_signals: bool = True, precision: str = "fp32"):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
        for name, v in (("checkpoint_every", checkpoint_every), ("checkpoint_every_epochs", checkpoint_every_epochs),
                        ("check_every", check_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.test_loader = train_loader, test_loader
        self.loss_fn, self.correct_fn = loss_fn, correct_fn
        self.epochs, self.max_steps = epochs, max_steps
        self.scheduler, self.clip_grad_norm = scheduler, clip_grad_norm
        self.early_stopping = early_stopping
        self.checkpoints = checkpoints
        self.checkpoint_every, self.checkpoint_every_epochs = checkpoint_every, checkpoint_every_epochs
        self.out_dir = out_dir
        self.sync = sync or LocalSync()
        self.device = as_device(device)
        self.dtype = resolve_dtype(dtype) if dtype is not None else backend.get_default_dtype()
        self.log = logger or RankLogger(self.sync.rank, self.sync.world_size)
        self.monitor = monitor
        self.progress = progress
        self.config = dict(config or {})
        self.state = TrainState()
        self.nonfinite, self.check_every, self.handle_signals = nonfinite, check_every, handle_signals
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self._amp = PRECISIONS[precision]
        self.scaler = loss_scale if isinstance(loss_scale, LossScaler) else make_loss_scaler(loss_scale)
        self._signal: int | None = None  # the first SIGINT/SIGTERM received
        self._restore_signals = lambda: None
        self._interrupted = False  # every rank agreed to stop after the current step
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._net = self.sync.prepare(model)  # what forward runs through (a DDP wrapper in a world > 1)
        self._activations = mon.ActivationMonitor(model) if monitor else None
        self._metrics_file = None

    # -- one step ------------------------------------------------------------------------------
    def _to_device(self, a):
        """A batch array on the training device; float inputs cast to the training dtype."""
        a = to_device(a, self.device)
        if is_float_dtype(a.dtype) and a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return a

    def _forward(self, x, net=None):
        x = self._to_device(x)
        net = self._net if net is None else net
        if self._amp is None:
            return net(Tensor(x) if is_float_dtype(x.dtype) else x)  # integer token ids go in as arrays
        with autocast(self._amp):  # mixed precision: half matmul/linear/conv on float32 master weights
            out = net(Tensor(x) if is_float_dtype(x.dtype) else x)
        # The loss (softmax, log, means) is computed in float32.
        return out.float() if isinstance(out, Tensor) and out.dtype != np.float32 else out

    def train_step(self, x, y, record: bool = False) -> tuple[float, float]:
        """One optimizer step on batch (x, y). Returns (summed loss over the batch, correct count).

        Non-finite gradients after the all-reduce (or a non-finite loss on any rank) follow the
        ``nonfinite`` policy: FloatingPointError naming the step and ranks, or the step skipped on every
        rank (NumPy's overflow warnings are silenced inside the step: that check reports it once, clearly).
        """
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._train_step(x, y, record)

    def _train_step(self, x, y, record: bool) -> tuple[float, float]:
        step = self.state.step + 1
        self.sync.set_step(step)
        self.optimizer.zero_grad()
        out, loss = None, None
        loss_value = 0.0
        if len(x):
            y = self._to_device(y)
            if record and self._activations is not None:
                with self._activations.recording():
                    out = self._forward(x)
            else:
                out = self._forward(x)
            loss = self.loss_fn(out, y)
            loss_value = float(loss.item())
        # Two votes travel with this step's gradient sync (no collective of their own): "a signal asked
        # me to stop" and "my loss is non-finite". Their sums are the same on every rank.
        self.sync.set_control([float(self._signal is not None), float(not math.isfinite(loss_value))])
        if loss is not None:
            (loss * self.scaler.scale if self.scaler is not None else loss).backward()  # DDP averages during it
        votes = self.sync.after_backward(len(x))  # a rank with an empty shard of the batch still takes part
        if votes[0] > 0 and not self._interrupted:
            self._interrupted = True
            self._signal = self._signal or signal.SIGTERM  # a peer's signal: stop together
        # After the all-reduce every rank holds the same gradients, so every rank decides alike.
        finite = votes[1] == 0 and _all_finite(self._params)
        if self.scaler is not None:
            self.scaler.update(finite)
            if finite and self.scaler.scale != 1.0:
                _unscale(self._params, self.scaler.scale)
        if not finite:
            self._nonfinite_step(step, loss_value)
            return 0.0, 0.0
        if record and self.monitor:
            self._grad_record = mon.layer_grad_norms(self.model)
        if self.clip_grad_norm is not None:
            clip_grad_norm_(self._params, self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        correct = self.correct_fn(out, y) if self.correct_fn is not None and out is not None else 0.0
        return loss_value * len(x), correct

    def _nonfinite_step(self, step: int, loss_value: float) -> None:
        """Non-finite gradients (every rank sees the same): skip the step everywhere, or raise everywhere."""
        st = self.state
        dynamic = self.scaler is not None and self.scaler.dynamic
        if self.nonfinite == "skip" or dynamic:
            st.skipped_steps += 1
            why = f"loss scale backed off to {self.scaler.scale:g}" if dynamic else "--nonfinite skip"
            self.log.warning(f"step {step} (epoch {st.epoch + 1}): non-finite gradients after the all-reduce; the "
                             f"step is skipped on every rank ({why}; {st.skipped_steps} skipped so far)")
            return
        losses = self.sync.allgather(loss_value if math.isfinite(loss_value) else repr(loss_value))
        bad = [r for r, v in enumerate(losses) if isinstance(v, str)]
        where = (f"the loss was {', '.join(f'{losses[r]} on rank {r}' for r in bad)}" if bad
                 else "the loss was finite on every rank, the gradients were not")
        from .distributed import mark_collective

        raise mark_collective(FloatingPointError(
            f"non-finite gradients after the all-reduce at step {step} (epoch {st.epoch + 1}): {where}; lower --lr, "
            "check the input data, or pass --nonfinite skip to skip such steps"))

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, loader=None) -> tuple[float | None, float | None]:
        """(mean loss, accuracy or None) over ``loader`` (default: the test loader), in eval mode."""
        loader = loader if loader is not None else self.test_loader
        if loader is None:
            return None, None
        was_training = self.model.training
        self.model.eval()
        sums = np.zeros(3)  # loss sum, correct, count
        try:
            with no_grad():
                for x, y in loader.iter_epoch(0):
                    if not len(x):  # this rank's shard of the batch is empty
                        continue
                    y = self._to_device(y)
                    out = self._forward(x, self.model)  # the bare model: evaluation needs no gradient sync
                    sums[0] += float(self.loss_fn(out, y).item()) * len(x)
                    if self.correct_fn is not None:
                        sums[1] += self.correct_fn(out, y)
                    sums[2] += _targets_per_sample(y) * len(x)
        finally:
            self.model.train(was_training)
        sums = self.sync.sum(sums)
        n_samples = sums[2] / max(_targets_per_sample_static(loader), 1)
        loss = float(sums[0] / n_samples)
        return loss, (float(sums[1] / sums[2]) if self.correct_fn is not None else None)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``epochs`` (or ``max_steps``, or early stopping); return the summary dict."""
        start = time.perf_counter()
        st = self.state
        if self.out_dir and self.log.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self._metrics_file = open(os.path.join(self.out_dir, "metrics.jsonl"), "a" if st.step else "w")
        self.model.train()
        restore = self._install_signal_handlers()
        try:
            while st.epoch < self.epochs and not self._done():
                self._run_epoch()
            if self._interrupted:
                path = self._save_checkpoint(final=True, fallback=True)
                raise TrainingInterrupted(self._signal, st.step, path)
            if self.checkpoints is not None:
                self._save_checkpoint(final=True)
        finally:
            restore()
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None
            if self._activations is not None:
                self._activations.remove()
        return self._finish(time.perf_counter() - start)

    def _done(self) -> bool:
        return self._interrupted or self.state.stopped_early or (
            self.max_steps is not None and self.state.step >= self.max_steps)

    # -- signals -------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        """SIGINT/SIGTERM -> stop after the current step (agreed by every rank); returns the undo function."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # not allowed here (e.g. an embedded interpreter)
                pass

        def restore():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self._restore_signals = restore
        return restore

    def _on_signal(self, signum, frame) -> None:
        if self._signal is not None:  # the second signal: stop now
            self._restore_signals()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self._signal = signum
        self.log.warning(f"received {signal.Signals(signum).name}: stopping after the current step on every rank; "
                         "rank 0 writes a checkpoint (send it again to stop at once)")

    def _run_epoch(self) -> None:
        st = self.state
        loader = self.train_loader
        n_batches = len(loader)
        batches = loader.iter_epoch(st.epoch, st.batch)
        bar = self._progress_bar(n_batches, st.batch)
        t0 = time.perf_counter()
        self._grad_record = None
        try:
            for x, y in batches:
                last = st.batch == n_batches - 1 or (self.max_steps is not None and st.step + 1 >= self.max_steps)
                loss_sum, correct = self.train_step(x, y, record=last)
                st.loss_sum += loss_sum
                st.correct += correct
                st.seen += len(x)
                st.batch += 1
                st.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / len(x):.4f}", refresh=False)
                if self._interrupted:
                    break
                if self.check_every and st.step % self.check_every == 0:
                    self.sync.check_identical(param_digests(self.model), st.step)  # divergence guard
                if self.checkpoint_every and st.step % self.checkpoint_every == 0 and st.batch < n_batches:
                    st.train_time += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._save_checkpoint()
                if self._done():
                    break
        finally:
            if bar is not None:
                bar.close()
        st.train_time += time.perf_counter() - t0
        if self._interrupted:  # the final checkpoint is written at this step boundary, mid-epoch
            return
        self._end_epoch(complete=st.batch >= n_batches)

    def _end_epoch(self, complete: bool) -> None:
        st = self.state
        sums = self.sync.sum(np.array([st.loss_sum, st.correct, st.seen], dtype=np.float64))
        global_seen = sums[2]
        samples = st.samples + int(global_seen)  # committed to the state only when the epoch is complete
        train_loss = sums[0] / max(global_seen, 1)
        test_loss, test_acc = self.evaluate()
        sent, raw = self.sync.bytes_sent()
        record: dict[str, Any] = {
            "epoch": st.epoch + 1, "step": st.step, "train_loss": train_loss,
            "train_accuracy": (sums[1] / (global_seen * _targets_per_sample_static(self.train_loader)))
            if self.correct_fn is not None else None,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "samples_per_s": samples / st.train_time if st.train_time > 0 else None,
            "bytes_sent": sent, "bytes_uncompressed": raw,
            "bytes_per_step": (sent - st.bytes_at_epoch_start) / max(1, st.step - st.step_at_epoch_start),
            "compression_ratio": raw / sent if sent else None,
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_complete": complete,
        }
        if self.monitor:
            if self._grad_record is not None:
                record["grad_norm"] = float(math.sqrt(sum(v * v for v in self._grad_record.values())))
                record["grad_norms"] = self._grad_record
                st.grad_flow.append(self._grad_record)
            if self._activations is not None:
                dead = self._activations.dead_relu_fraction()
                if dead:
                    record["dead_relu"] = dead
            record["weight_norm"] = float(math.sqrt(sum(float((p.data.astype(np.float64) ** 2).sum())
                                                        for p in self._params)))
        st.history.append(record)
        self._log_record(record)
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(test_loss if test_loss is not None else train_loss)
        if self.early_stopping is not None:
            self._check_early_stopping(record)
        st.epoch += int(complete)
        st.bytes_at_epoch_start, st.step_at_epoch_start = sent, st.step
        if complete:
            st.samples = samples
            st.batch, st.loss_sum, st.correct, st.seen = 0, 0.0, 0.0, 0
            if self.checkpoint_every_epochs and st.epoch % self.checkpoint_every_epochs == 0 \
                    and st.epoch < self.epochs and not self._done():
                self._save_checkpoint()

    def _check_early_stopping(self, record: dict) -> None:
        st, es = self.state, self.early_stopping
        value = record.get(es.monitor)
        if value is None:
            value = record["train_loss"]
        if st.best is None or value < st.best - es.min_delta:
            st.best, st.bad_epochs = value, 0
        else:
            st.bad_epochs += 1
            if st.bad_epochs >= es.patience:
                st.stopped_early = True
                self.log.info(f"early stopping: {es.monitor} has not improved by {es.min_delta} for "
                              f"{es.patience} epochs (best {st.best:.4f})")

    def _log_record(self, r: dict) -> None:
        parts = [f"epoch {r['epoch']:3d}", f"step {r['step']:6d}", f"train_loss {r['train_loss']:.4f}"]
        if r["test_loss"] is not None:
            parts.append(f"test_loss {r['test_loss']:.4f}")
        if r["test_accuracy"] is not None:
            parts.append(f"test_accuracy {r['test_accuracy']:.4f}")
        if r["samples_per_s"] is not None:
            parts.append(f"{r['samples_per_s']:.0f} samples/s")
        self.log.info("  ".join(parts))
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(_jsonable(r)) + "\n")
            self._metrics_file.flush()

    def _progress_bar(self, total: int, initial: int):
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show or not self.log.is_main:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=initial, desc=f"epoch {self.state.epoch + 1}/{self.epochs}", leave=False,
                    unit="batch", dynamic_ncols=True)

    # -- checkpoints and the end ---------------------------------------------------------------
    def _save_checkpoint(self, final: bool = False, fallback: bool = False) -> str | None:
        """Collective: every rank hands its RNG and compression state to rank 0, which writes the file.

        A periodic checkpoint that cannot be written (a full disk...) is a warning: the previous one is
        intact and training goes on. The final one is an error on every rank. ``fallback``: without a
        checkpoint manager, write to ``out_dir/checkpoints`` (the interrupted-run checkpoint). Returns
        the path written (rank 0) or None.
        """
        manager = self.checkpoints
        if manager is None and fallback and self.out_dir:
            manager = CheckpointManager(os.path.join(self.out_dir, "checkpoints"))
        if manager is None:
            if fallback:
                self.log.warning("no --checkpoint-dir or --out: the interrupted run's state is not saved")
            return None
        st = self.state
        rng_states = self.sync.gather(backend.default_generator.get_state())
        compression_states = self.sync.gather(self.sync.compressor_state())  # error-feedback memories, Qs
        # The partial epoch's sums over every rank: restored on rank 0 (others start at zero), so a resumed
        # epoch reports the same train loss at any world size.
        epoch_sums = self.sync.sum(np.array([st.loss_sum, st.correct, st.seen], dtype=np.float64))
        if self.scaler is not None:
            st.loss_scale = self.scaler.state_dict()
        path, error = None, None
        if self.log.is_main:
            try:
                path = manager.save(self, rng_states, compression_states,
                                    epoch_sums=(float(epoch_sums[0]), float(epoch_sums[1]), int(epoch_sums[2])))
                self.log.info(f"checkpoint: {path}")
            except (CheckpointError, OSError) as exc:
                if not final:
                    self.log.warning(f"checkpoint at step {st.step} not written: {exc}; the previous checkpoint is "
                                     "intact and training continues")
                else:
                    error = exc
        if final:
            self.sync.agree(error)  # the final checkpoint failing is everyone's error
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore model, optimizer, scheduler, RNG and loop state from a checkpoint file."""
        from .checkpoint import restore_trainer

        restore_trainer(self, path)
        if self.scaler is not None and self.state.loss_scale:
            self.scaler.load_state_dict(self.state.loss_scale)

    def _finish(self, wall: float) -> dict:
        st = self.state
        last = st.history[-1] if st.history else {}
        sent, raw = self.sync.bytes_sent()
        summary = {
            "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "epochs": st.epoch + (0 if not st.history or last.get("epoch_complete", True) else 1),
            "steps": st.step, "world_size": self.sync.world_size, "wall_s": wall,
            "samples_per_s": last.get("samples_per_s"),
            "compression": self.sync.compression, "compression_ratio": self.sync.compression_ratio(),
            "param_checksum": param_checksum(self.model),
        }
        self.sync.check_identical(param_digests(self.model), st.step)  # the divergence guard, at the end
        assert tuple(summary) == SUMMARY_KEYS
        if self.out_dir and self.log.is_main:
            with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
                json.dump(_jsonable(summary), f, indent=2)
            if self.config:
                with open(os.path.join(self.out_dir, "config.json"), "w") as f:
                    json.dump(_jsonable(self.config), f, indent=2)
            mon.plot_learning_curves(st.history, os.path.join(self.out_dir, "learning_curves.png"))
            if st.grad_flow:
                mon.plot_grad_flow(st.grad_flow, os.path.join(self.out_dir, "grad_flow.png"))
        del sent, raw
        return summary


def _all_finite(params) -> bool:
    """True when every gradient is finite. A sum is finite only if every term is (inf and nan propagate);
    only a finite sum that overflowed needs the element-wise check."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        xp = backend.get_array_module(g)
        if not math.isfinite(float(xp.sum(g))) and not bool(xp.isfinite(g).all()):
            return False
    return True


def _unscale(params, scale: float) -> None:
    inv = 1.0 / scale
    for p in params:
        if p.grad is not None:
            p.grad *= inv


def _targets_per_sample(y) -> int:
    """Predictions per sample: 1 for classification/regression rows, seq_len for language models."""
    return int(np.prod(y.shape[1:])) if y.ndim > 1 and y.dtype.kind in "iu" else 1


def _targets_per_sample_static(loader) -> int:
    ds = loader.dataset
    y = ds.arrays[1] if hasattr(ds, "arrays") else None
    return _targets_per_sample(y) if y is not None else 1


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
