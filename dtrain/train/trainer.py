"""Trainer: the training loop — ``fit`` (epochs and evaluation), ``train_step`` and ``evaluate``.

One step is: forward, loss, ``zero_grad``, backward, ``sync.after_backward(n)`` (the seam where a distributed
job averages gradients; an identity in one process), the non-finite check, optional clipping,
``optimizer.step()`` and a per-step scheduler step. After each epoch the model is evaluated and reported.

Everything else is a collaborator, each in its own module: the gradient and collective seams
(:mod:`.sync`), non-finite gradients and loss scaling (:mod:`.nonfinite`), signals (:mod:`.signals`),
checkpoints (:mod:`.checkpointing`, through :meth:`Trainer.state_dict`/:meth:`Trainer.load_state_dict`),
reporting (:mod:`.reporting`), monitoring (:mod:`.monitor`) and the divergence guard (:mod:`.divergence`).

Reproducibility: everything random comes from seeded generators (model init and dropout from
``dtrain.manual_seed(seed)`` set by the caller, shuffling from the loader's (seed, epoch) rule), so
the same seed on the same machine gives a bitwise-identical run. The loop's position is plain data in
:class:`~dtrain.train.state.TrainState`, saved in checkpoints, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backend
from ..autograd.autocast import autocast
from ..autograd.capture import capture
from ..autograd.function import no_grad
from ..autograd.tensor import Tensor
from ..backend import as_device, is_float_dtype, resolve_dtype, to_device
from ..nn.utils.clip import clip_grad_norm_
from ..optim.lr_scheduler import ReduceLROnPlateau
from ..spec import check_int, is_int
from .checkpoint import CheckpointError, load_checkpoint, param_checksum
from .checkpointing import Checkpointing
from .divergence import DivergenceGuard
from .log import RankLogger
from .monitor import EpochMonitor
from .nonfinite import NonFiniteGuard
from .options import EarlyStopping, TrainOptions
from .reporting import Reporter, ReportOptions
from .signals import SignalStop
from .state import TrainState, check_rng_states
from .sync import (
    Collectives,
    DistributedRunError,
    GradientSync,
    LocalCollectives,
    LocalGradientSync,
    mark_collective,
)

__all__ = ["Trainer"]


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
        early_stopping: an :class:`EarlyStopping` or None.
        options: a :class:`TrainOptions` (device, dtype, precision, loss scale, clipping, non-finite policy,
            divergence checks, signal handling).
        report: a :class:`ReportOptions` (``out_dir``, progress bar, monitoring).
        checkpoints: a :class:`Checkpointing` (manager and schedule) or None.
        sync, collectives: the :class:`GradientSync` and :class:`Collectives` seams (one process by default).
        logger: a RankLogger; config: the run's configuration, stored in checkpoints and config.json.
    """

    def __init__(self, model, optimizer, train_loader, test_loader=None, *, loss_fn: Callable,
                 correct_fn: Callable | None = None, epochs: int = 1, max_steps: int | None = None,
                 scheduler=None, early_stopping: EarlyStopping | None = None, options: TrainOptions | None = None,
                 report: ReportOptions | None = None, checkpoints: Checkpointing | None = None,
                 sync: GradientSync | None = None, collectives: Collectives | None = None,
                 logger: RankLogger | None = None, config: dict | None = None):
        self.epochs = check_int("epochs", epochs, 1)
        self.max_steps = None if max_steps is None else check_int(
            "max_steps", max_steps, 1, expected="a positive integer or None")
        self.options = options or TrainOptions()
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.test_loader = train_loader, test_loader
        self.loss_fn, self.correct_fn = loss_fn, correct_fn
        self.scheduler, self.early_stopping = scheduler, early_stopping
        self.sync = sync or LocalGradientSync()
        self.collectives = collectives or LocalCollectives()
        self.device = as_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype) if self.options.dtype is not None \
            else backend.get_default_dtype()
        self.precision = self.options.precision
        self.config = dict(config or {})
        self.state = TrainState()
        self.log = logger or RankLogger(self.collectives.rank, self.collectives.world_size)
        self.reporter = Reporter(report or ReportOptions(), self.log)
        self.checkpoints = checkpoints or Checkpointing()
        self.nonfinite = NonFiniteGuard(self.options.nonfinite, self.options.loss_scale, self.collectives, self.log,
                                        self.options.max_skipped_in_a_row, self.options.max_skipped_fraction)
        self.signals = SignalStop(self.options.handle_signals, self.log)
        self.divergence = DivergenceGuard(self.options.check_every)
        self._checkpoint_votes = 0.0  # the last step's time-based checkpoint votes
        self.elastic = None  # an ElasticRank under `dtrain launch --max-restarts` (progress, restart record)
        self._restart = None  # the restart record this attempt wrote
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._net = self.sync.prepare(model)  # what forward runs through (a DDP wrapper in a world > 1)
        self.monitor = EpochMonitor(model) if self.reporter.options.monitor else None
        self._captured, self._loss_value = None, 0.0  # the step through dt.autograd.capture (options.capture)
        if self.options.capture:
            if self.nonfinite.scaler is not None:
                raise ValueError("capture: a loss scale cannot be replayed (the scale changes between steps); "
                                 "train without one (loss_scale None) or without capture")
            self._captured = capture(self._loss_and_output, before_backward=self._votes_on_loss)

    # -- one step ------------------------------------------------------------------------------
    def _to_device(self, a):
        """A batch array on the training device; float inputs cast to the training dtype."""
        a = to_device(a, self.device)
        if is_float_dtype(a.dtype) and a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return a

    def _input(self, x):
        """The batch's inputs as the model takes them: a Tensor on the device, or integer token ids as arrays."""
        x = self._to_device(x)
        return Tensor(x) if is_float_dtype(x.dtype) else x

    def _forward(self, x, net=None):
        net = self._net if net is None else net
        half = self.options.autocast_dtype
        if half is None:
            return net(self._input(x))
        with autocast(half):  # mixed precision: half matmul/linear/conv on float32 master weights
            out = net(self._input(x))
        # The loss (softmax, log, means) is computed in float32.
        return out.float() if isinstance(out, Tensor) and out.dtype != np.float32 else out

    def train_step(self, x, y, record: bool = False) -> tuple[float, float]:
        """One optimizer step on batch (x, y). Returns (summed loss over the batch, correct count).

        ``record``: this is the epoch's last step, whose activations and gradient flow the monitor records.
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
        out, loss, loss_value = None, None, 0.0
        if len(x) and self._captured is not None and not (record and self.monitor is not None):
            y = self._to_device(y)
            _, out = self._captured(self._input(x), y)  # forward, votes, backward (DDP averages in it)
            loss_value = self._loss_value
        else:
            if len(x):
                y = self._to_device(y)
                recording = self.monitor.recording(record) if self.monitor is not None else contextlib.nullcontext()
                with recording:
                    out = self._forward(x)
                loss = self.loss_fn(out, y)
                loss_value = float(loss.item())
            self._send_votes(loss_value)
            if loss is not None:
                self.nonfinite.scale(loss).backward()  # DDP averages during it
        votes = self.sync.after_backward(len(x))  # a rank with an empty shard of the batch still takes part
        self.signals.tally(votes[0])
        self._checkpoint_votes = float(votes[2])
        # After the all-reduce every rank holds the same gradients (or, --zero, votes[1] counted non-finite ones).
        if not self.nonfinite.check(self._params, votes[1], self.state, step, loss_value, self.sync.votes_on_gradients):
            return 0.0, 0.0
        if record and self.monitor is not None:
            self.monitor.capture_grads()
        if self.options.clip_grad_norm is not None:
            clip_grad_norm_(self._params, self.options.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        correct = self.correct_fn(out, y) if self.correct_fn is not None and out is not None else 0.0
        return loss_value * len(x), correct

    def _send_votes(self, loss_value: float) -> None:
        # Two votes travel with this step's gradient sync (no collective of their own): "a signal asked
        # me to stop" and "my loss is non-finite". Their sums are the same on every rank.
        # A third: rank 0's "a time-based checkpoint is due" (--checkpoint-every 30s).
        self.sync.set_control([self.signals.vote(), float(not math.isfinite(loss_value)),
                               self.checkpoints.time_vote(self.log.is_main)])

    def _loss_and_output(self, x, y):
        """The captured step's loss function: the loss, and the output for the accuracy count."""
        return self.loss_fn(out := self._net(x), y), out

    def _votes_on_loss(self, loss) -> None:
        """Between the captured step's forward and backward: the loss is known, the votes go with the sync."""
        self._loss_value = float(loss)
        self._send_votes(self._loss_value)

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
        sums = self.collectives.sum(sums)
        n_samples = sums[2] / max(_targets_per_sample_static(loader), 1)
        loss = float(sums[0] / n_samples)
        return loss, (float(sums[1] / sums[2]) if self.correct_fn is not None else None)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``epochs`` (or ``max_steps``, or early stopping); return the summary dict."""
        start = time.perf_counter()
        st = self.state
        self.reporter.open(resumed=st.step > 0)
        if self.elastic is not None:
            self._start_elastic()
        self.model.train()
        final_error = None
        try:
            with self.signals.installed():
                while st.epoch < self.epochs and not self._done():
                    self._run_epoch()
                if self.signals.stopping:
                    path = self.checkpoints.save(self, final=True, fallback=True)
                    raise self.signals.interrupted(st.step, path)
                if self.checkpoints.manager is not None:
                    final_error = self._final_checkpoint()
        finally:
            self.reporter.close()
            if self.monitor is not None:
                self.monitor.close()
        summary = self._finish(time.perf_counter() - start)
        if final_error is not None:  # raised on every rank, after summary.json says what the run reached
            raise final_error
        return summary

    def _final_checkpoint(self) -> BaseException | None:
        """The end-of-run checkpoint; the error (every rank's) when it could not be written where asked.
        The summary is still written before that error ends the run."""
        try:
            self.checkpoints.save(self, final=True)
        except (CheckpointError, OSError, DistributedRunError) as exc:
            return exc
        return None

    def _done(self) -> bool:
        return self.signals.stopping or self.state.stopped_early or (
            self.max_steps is not None and self.state.step >= self.max_steps)

    def _run_epoch(self) -> None:
        st = self.state
        n_batches = len(self.train_loader)
        bar = self.reporter.progress_bar(n_batches, st.batch, f"epoch {st.epoch + 1}/{self.epochs}")
        t0 = time.perf_counter()
        if self.monitor is not None:
            self.monitor.start_epoch()
        try:
            for x, y in self.train_loader.iter_epoch(st.epoch, st.batch):
                last = st.batch == n_batches - 1 or (self.max_steps is not None and st.step + 1 >= self.max_steps)
                loss_sum, correct = self.train_step(x, y, record=last)
                st.loss_sum += loss_sum
                st.correct += correct
                st.seen += len(x)
                st.batch += 1
                st.step += 1
                if self.elastic is not None:
                    self.elastic.step(st.step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / len(x):.4f}", refresh=False)
                if self.signals.stopping:
                    break
                self.divergence.after_step(self.model, self.collectives, st.step)
                if self.checkpoints.due_after_step(st, n_batches, self._checkpoint_votes):
                    st.train_time += time.perf_counter() - t0  # checkpoint time is not training time
                    t0 = time.perf_counter()
                    self.checkpoints.save(self)
                if self._done():
                    break
        finally:
            if bar is not None:
                bar.close()
        st.train_time += time.perf_counter() - t0
        if self.signals.stopping:  # the final checkpoint is written at this step boundary, mid-epoch
            return
        self._end_epoch(complete=st.batch >= n_batches)

    def _end_epoch(self, complete: bool) -> None:
        st = self.state
        record, samples = self._epoch_record(complete)
        st.history.append(record)
        self.reporter.record(record)
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(record["test_loss"] if record["test_loss"] is not None else record["train_loss"])
        if self.early_stopping is not None:
            self.early_stopping.update(st, record, self.log)
        st.epoch += int(complete)
        st.bytes_at_epoch_start, st.step_at_epoch_start = record["bytes_sent"], st.step
        if complete:
            st.samples = samples
            st.batch, st.loss_sum, st.correct, st.seen = 0, 0.0, 0.0, 0
            if self.checkpoints.due_after_epoch(st, self.epochs) and not self._done():
                self.checkpoints.save(self)

    def _epoch_record(self, complete: bool) -> tuple[dict, int]:
        """The epoch's metrics record (collective: sums over the ranks, evaluation) and the run's sample count
        including this epoch (committed to the state only when the epoch is complete)."""
        st = self.state
        sums = self.collectives.sum(np.array([st.loss_sum, st.correct, st.seen], dtype=np.float64))
        global_seen = sums[2]
        samples = st.samples + int(global_seen)
        test_loss, test_acc = self.evaluate()
        sent, raw = self.sync.bytes_sent()
        record: dict[str, Any] = {
            "epoch": st.epoch + 1, "step": st.step, "train_loss": sums[0] / max(global_seen, 1),
            "train_accuracy": (sums[1] / (global_seen * _targets_per_sample_static(self.train_loader)))
            if self.correct_fn is not None else None,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "samples_per_s": samples / st.train_time if st.train_time > 0 else None,
            "bytes_sent": sent, "bytes_uncompressed": raw,
            "bytes_per_step": (sent - st.bytes_at_epoch_start) / max(1, st.step - st.step_at_epoch_start),
            "compression_ratio": raw / sent if sent else None,
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_complete": complete,
        }
        if self.monitor is not None:
            self.monitor.add_to(record, st.grad_flow)
        return record, samples

    def _start_elastic(self) -> None:
        """A supervised attempt: rank 0 writes progress; a restarted one records its restart (once resumed)."""
        elastic, st = self.elastic, self.state
        self.checkpoints.on_written = elastic.checkpointed
        elastic.resumed(st.step)
        self._restart = elastic.restart_record(st.step, self.collectives.world_size)
        if self._restart is not None:
            r = self._restart
            self.log.info(f"restart {r['attempt']}: resumed at step {r['resumed_step']} on {r['world_size']} ranks; "
                          f"{r['steps_redone']} steps to redo, {r['seconds_lost']:.1f} s lost since the checkpoint")
            self.reporter.event(r, st.epoch + 1)

    def _finish(self, wall: float) -> dict:
        self._check_result()
        summary = Reporter.summary(self.state, wall, self.collectives.world_size, self.sync,
                                   param_checksum(self.model))
        if self.elastic is not None:
            summary.update(self.elastic.summary_fields(self._restart))
        self.divergence.at_end(self.model, self.collectives, self.state.step)
        error = None
        try:
            self.reporter.finish(summary, self.config, self.state)
        except OSError as exc:  # rank 0's full --out: every rank's error (exit 2), not an MPI_Abort
            error = exc
        self.collectives.agree(error)
        return summary

    def _check_result(self) -> None:
        """A run whose steps were (nearly) all skipped, or whose final losses are not finite, is an error on
        every rank (they hold the same numbers), never a summary that looks like success."""
        st = self.state
        if st.step and st.skipped_steps == st.step:
            raise mark_collective(FloatingPointError(
                f"every one of the {st.step} steps was skipped for non-finite gradients: nothing was trained; lower "
                "--lr or check the input data"))
        if st.step >= self.nonfinite.FRACTION_FROM_STEP:
            self.nonfinite.check_budget(st, st.step)
        last = st.history[-1] if st.history else {}
        bad = [k for k in ("train_loss", "test_loss") if isinstance(last.get(k), float) and not math.isfinite(last[k])]
        if bad:
            raise mark_collective(FloatingPointError(
                f"training ended at step {st.step} with a non-finite {' and '.join(bad)} "
                f"({', '.join(f'{k} {last[k]}' for k in bad)}); lower --lr or check the input data"))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, *, rng_states: list | None = None, compression_states: list | None = None,
                   epoch_sums: tuple | None = None, optimizer_state: dict | None = None) -> dict:
        """A checkpoint's content: model, optimizer, scheduler, loop (and loss scale), config, world, RNG, compression.

        Args:
            rng_states: every rank's default-generator state, in rank order (default: this process's).
            compression_states: every rank's compressor state (error-feedback memories, PowerSGD Qs).
            epoch_sums: ``(loss_sum, correct, seen)`` of the current epoch summed over ALL ranks; stored
                in place of this rank's partial sums (a world > 1 must pass them for exact train metrics
                after a mid-epoch resume). Default: this rank's own sums (exact in a world of 1).
            optimizer_state: the optimizer's ``state_dict()`` if the caller has it (--zero's is collective).
        """
        loop = self.state.to_json()
        loop["loss_scale"] = self.nonfinite.state_dict()
        if epoch_sums is not None:
            loss_sum, correct, seen = epoch_sums
            loop.update(loss_sum=float(loss_sum), correct=float(correct), seen=int(seen))
        return {
            "world_size": int(self.collectives.world_size),
            "config": self.config,
            "model": dict(self.model.state_dict()),
            "optimizer": optimizer_state if optimizer_state is not None else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_states if rng_states is not None else [backend.default_generator.get_state()],
            "trainer": loop,
            "compression": list(compression_states or []),
        }

    def load_state_dict(self, state: dict, source: str = "the state dict") -> None:
        """Restore what :meth:`state_dict` returned into the model, optimizer, scheduler, default RNG and loop.

        The world size may differ from the one that saved it: model, optimizer, scheduler and loop
        position restore exactly; rank r takes the saved RNG state r when the saving run had a rank r
        (others keep their own seeded stream); per-rank compressor memories cannot be split over a
        different world, so they are discarded (with a warning). The epoch's partial sums go to rank 0
        (they were summed over all ranks when saved); other ranks start them at zero. Errors are
        CheckpointErrors naming ``source`` (e.g. "checkpoint PATH").
        """
        states = state.get("rng") or []
        rank = self.collectives.rank
        if "trainer" not in state:
            raise CheckpointError(f"{source} holds no trainer state (the loop position): expected a 'trainer' entry")
        try:  # every field checked before anything changes: the error names the field and the value
            check_rng_states(states, source)
            loop = TrainState.from_json(state["trainer"], source)
            loop.check_fits(self.epochs, len(self.train_loader), source)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        saved_world = state.get("world_size", max(len(states), 1))  # older files: one RNG state per rank
        if not is_int(saved_world) or saved_world < 1:
            raise CheckpointError(f"{source} records an invalid world size {saved_world!r}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if rank < len(states):
                backend.default_generator.set_state(states[rank])
            self._load_compression(state.get("compression") or [], saved_world, source)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            # a crafted value the loaders did not expect (OverflowError, AttributeError...) is still this file's fault
            raise CheckpointError(f"{source} does not fit this run: {exc}") from None
        if rank != 0:  # rank 0 carries the whole epoch's sums; the end-of-epoch reduction adds the rest
            loop.loss_sum, loop.correct, loop.seen = 0.0, 0.0, 0
        self.state = loop
        self.nonfinite.load_state_dict(loop.loss_scale)

    def _load_compression(self, compression: list, saved_world: int, source: str) -> None:
        """This rank's compressor state, when the saving world had the same ranks; else drop the memories."""
        rank, world = self.collectives.rank, self.collectives.world_size
        if saved_world == world:
            if len(compression) == world and compression[rank]:
                self.sync.load_compressor_state(compression[rank])
        elif self.sync.compression != "none" and any(_has_compressor_memory(c) for c in compression):
            if rank == 0:  # every rank drops its own memories; one report is enough
                self.log.warning(f"{source} was saved by {saved_world} rank(s) and this run has {world}: "
                                 f"the per-rank gradient-compression state (error-feedback memories) cannot be "
                                 f"split over a different world size, so compression restarts with empty "
                                 f"memories (the run is not exact from here)")

    def load_checkpoint(self, path: str) -> None:
        """Restore model, optimizer, scheduler, RNG and loop state from a checkpoint file."""
        self.load_state_dict(load_checkpoint(path), source=f"checkpoint {path}")


def _targets_per_sample(y) -> int:
    """Predictions per sample: 1 for classification/regression rows, seq_len for language models."""
    return int(np.prod(y.shape[1:])) if y.ndim > 1 and y.dtype.kind in "iu" else 1


def _targets_per_sample_static(loader) -> int:
    ds = loader.dataset
    y = ds.arrays[1] if hasattr(ds, "arrays") else None
    return _targets_per_sample(y) if y is not None else 1


def _has_compressor_memory(state) -> bool:
    """Whether a rank's saved compressor state holds anything beyond its spec (memories, Qs)."""
    inner = state.get("compressor") if isinstance(state, dict) else None
    return isinstance(inner, dict) and any(k != "spec" for k in inner)
