"""Assemble and run one training job from a resolved config (what ``dtrain train`` runs).

Data set → model from the zoo → optimizer and schedule → loaders → Trainer. The two seams for
distributed runs come from :func:`make_sync`: a :class:`~dtrain.train.sync.GradientSync` (averages
gradients) and :class:`~dtrain.train.sync.Collectives` (rank, world size, metric sums, agreement);
a world of 1 uses the local ones. The gradient compressor is built here, once, from ``--compression``
and handed to DistributedDataParallel. This module only splits the global batch.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend, optim
from ..data import DataLoader, load_dataset
from ..env import launch_info, launched_by_mpi, memory_per_rank
from ..files import MiB, check_writable_dir
from ..models import MODELS, build_model, dense_parameters_at_least, loss_and_accuracy
from ..optim import lr_scheduler as sched
from ..threads import configure_threads
from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from .checkpointing import Checkpointing
from .config import MOMENTUM_OPTIMIZERS, ConfigError, parse_checkpoint_every, resume_changes
from .datacheck import data_fingerprint, data_mismatch
from .elastic import ElasticRank
from .log import RankLogger
from .options import EarlyStopping, TrainOptions
from .reporting import ReportOptions, check_out_dir
from .sync import Collectives, GradientSync, LocalCollectives, LocalGradientSync, mark_collective
from .trainer import Trainer

__all__ = ["build_job", "init_world", "make_compressor", "make_sync", "model_defaults", "run"]


class DataMismatchError(ValueError):
    """The ranks loaded different data for the same options (raised on every rank)."""


def model_defaults(model: str) -> dict:
    """The zoo's per-model training defaults (empty for an unknown model: validation reports it)."""
    spec = MODELS.get(model)
    return dict(spec.defaults) if spec else {}


def _load_data(cfg: dict):
    spec = MODELS[cfg["model"]]
    name = cfg["dataset"].split(":", 1)[0].lower()
    options = {}
    if spec.input_kind == "image" and name == "digits":
        options["image"] = True
    if spec.input_kind == "flat" and name == "mnist":
        options["flatten"] = True
    if name == "text" and cfg.get("seq_len"):
        options["seq_len"] = cfg["seq_len"]
    return load_dataset(cfg["dataset"], seed=cfg["seed"], **options)


def _optimizer_kwargs(cfg: dict) -> dict:
    kwargs = {"weight_decay": cfg["weight_decay"], "l1": cfg["l1"]}
    if cfg["optimizer"] in MOMENTUM_OPTIMIZERS:
        kwargs["momentum"] = cfg["momentum"]
    return kwargs


def _optimizer(cfg: dict, params):
    return optim.create(cfg["optimizer"], params, lr=cfg["lr"], **_optimizer_kwargs(cfg))


def _zero_optimizer(cfg: dict, opt, comm):
    """--zero: the --optimizer's rule over the same parameters, sharded over the world (ZeRO-1). Built once every
    rank has built its parts (its constructor broadcasts rank 0's parameters: a collective)."""
    from ..distributed import ZeroRedundancyOptimizer

    params = [p for group in opt.param_groups for p in group["params"]]
    return ZeroRedundancyOptimizer(params, type(opt), comm=comm, algorithm=cfg["allreduce"], lr=cfg["lr"],
                                   **_optimizer_kwargs(cfg))


def _scheduler(cfg: dict, opt, steps_per_epoch: int):
    # The schedule spans the planned epochs; --max-steps only stops early (so an interrupted run and
    # its resumption follow the same schedule as one uninterrupted run).
    total = cfg["epochs"] * steps_per_epoch
    warm = cfg["warmup_steps"]
    kind = cfg["scheduler"]
    if kind == "plateau":
        if warm:
            raise ConfigError("--warmup-steps cannot be combined with --scheduler plateau")
        return sched.ReduceLROnPlateau(opt, factor=min(cfg["lr_gamma"], 0.99), patience=2)
    after = None
    if kind == "step":
        after = sched.StepLR(opt, step_size=cfg["lr_step_epochs"] * steps_per_epoch, gamma=cfg["lr_gamma"])
    elif kind == "multistep":
        after = sched.MultiStepLR(opt, milestones=sorted({max(1, total // 2), max(2, 3 * total // 4)}),
                                  gamma=cfg["lr_gamma"])
    elif kind == "exponential":
        after = sched.ExponentialLR(opt, gamma=cfg["lr_gamma"] ** (1.0 / steps_per_epoch))  # gamma per epoch
    elif kind == "cosine":
        after = sched.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    if warm:
        return sched.LinearWarmup(opt, warm, after=after)
    return after


def init_world():
    """The MPI world Communicator when launched by an MPI launcher with more than one rank, else None.

    Its collectives get a deadline (DTRAIN_TIMEOUT, default 300 s) from the start, so even a rank whose
    configuration fails cannot leave the others waiting."""
    if not launched_by_mpi():
        return None
    from ..distributed import init

    comm = init()
    return comm if comm.size > 1 else None


def make_compressor(cfg: dict):
    """The gradient Compressor for ``--compression`` (the one place its spec is parsed); ConfigError if bad."""
    from ..distributed.compression import CompressionError
    from ..distributed.compression import get as get_compressor

    try:
        return get_compressor(cfg["compression"])
    except CompressionError as exc:
        raise ConfigError(f"--compression: {exc}") from None


def make_sync(cfg: dict, comm=None) -> tuple[GradientSync, Collectives]:
    """The Trainer's seams: local ones for one process; DDP and MPI collectives over the world when launched
    with more than one rank (``comm``: that world, default :func:`init_world`). Builds the compressor (a bad
    ``--compression`` is a ConfigError here, in any world) and applies --timeout/--stall-warning."""
    compressor = make_compressor(cfg)
    comm = comm if comm is not None else init_world()
    if comm is None:
        implied = {"fp16": "fp16", "bf16": "bf16"}.get(cfg["precision"])  # what --precision chose by itself
        if compressor.spec not in ("none", implied):
            RankLogger().warning(f"--compression {compressor.spec} has no effect in a world of 1 (launch with "
                                 "mpiexec)")
        return LocalGradientSync(), LocalCollectives()
    from ..distributed import set_timeout
    from .ddp_sync import DDPGradientSync, MPICollectives

    set_timeout(cfg["timeout"], cfg["stall_warning"])
    if cfg.get("zero"):  # the optimizer averages (_zero_optimizer); _make_trainer attaches it to this seam
        from .zero_sync import ZeroGradientSync

        return ZeroGradientSync(comm), MPICollectives(comm)
    sync = DDPGradientSync(comm, compressor, algorithm=cfg["allreduce"], bucket_mb=cfg["bucket_mb"],
                           overlap=cfg["overlap"])
    return sync, MPICollectives(comm)


def build_job(cfg: dict, sync: GradientSync | None = None, collectives: Collectives | None = None,
              logger: RankLogger | None = None) -> Trainer:
    """Build the Trainer for a resolved config (see config.resolve_config); nothing runs yet.

    ``sync``/``collectives``: the seams from :func:`make_sync` (default: one process). In a world > 1 every
    rank builds the same job; a failure on any rank (a missing file, a bad value) is raised on every rank
    before the first collective, so none is left waiting.
    """
    sync = sync or LocalGradientSync()
    collectives = collectives or LocalCollectives()
    log = logger or RankLogger(collectives.rank, collectives.world_size, quiet=False)
    error = None
    try:
        parts = _build_parts(cfg, collectives)
    except (ValueError, OSError) as exc:
        error, parts = exc, None
    collectives.agree(error)
    # In a world > 1, building the Trainer wraps the model in DDP, which checks every rank holds the same model.
    trainer = _make_trainer(cfg, sync, collectives, log, *parts)
    _supervised(trainer, collectives)
    collectives.check_same_config(cfg)
    if collectives.world_size > 1:  # before the first collective whose count depends on the data
        problem = data_mismatch(collectives.allgather(data_fingerprint(trainer.splits)))
        if problem is not None:
            raise mark_collective(DataMismatchError(problem))
    error = None
    try:
        _resume(cfg, trainer, log)
    except (ValueError, OSError) as exc:
        error = exc
    collectives.agree(error)
    return trainer


def _build_parts(cfg: dict, collectives: Collectives):
    world, rank = collectives.world_size, collectives.rank
    if cfg["model"] not in MODELS:
        raise ConfigError(f"unknown model {cfg['model']!r}; expected one of: {', '.join(sorted(MODELS))}")
    backend.manual_seed(cfg["seed"])  # model init and dropout draw from the default generator
    dtype = np.dtype(cfg["dtype"])
    device = backend.as_device(_rank_device(cfg["device"], collectives))
    splits = _load_data(cfg)
    backend.set_default_dtype(dtype)
    model_options = {"hidden": cfg["hidden"], "dropout": cfg["dropout"]}
    _check_model_fits(cfg, splits, dtype)
    try:
        model = build_model(cfg["model"], splits.input_shape, splits.output_size, splits.task, **model_options)
    except MemoryError as exc:
        raise ConfigError(f"building the {cfg['model']} model ({_sizes(cfg)}) ran out of memory on rank {rank}: "
                          f"{exc}") from None
    model.to(device)
    if cfg["sync_batchnorm"] and world > 1:
        from ..distributed import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, collectives.comm)
    if rank > 0:  # dropout: an independent stream per rank (rank 0 keeps the single-process stream)
        backend.default_generator.manual_seed(int(np.random.SeedSequence([cfg["seed"], rank]).generate_state(1)[0]))

    # Each global batch (the same on every rank) is split into contiguous per-rank parts; DDP weights
    # each rank by its part's size, so N ranks compute exactly what one process does on the batch.
    shard = (rank, world) if world > 1 else None
    if cfg["batch_size"] < world:
        raise ConfigError(f"--batch-size {cfg['batch_size']} (global) is smaller than the {world} ranks")
    train_loader = DataLoader(splits.train, batch_size=cfg["batch_size"], shuffle=True, seed=cfg["seed"],
                              shard=shard)
    test_loader = DataLoader(splits.test, batch_size=min(1024, len(splits.test)), shard=shard)
    opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = _scheduler(cfg, opt, len(train_loader))
    loss_fn, correct_fn = loss_and_accuracy(splits.task)
    if any(parse_checkpoint_every(cfg["checkpoint_every"])) and not cfg["checkpoint_dir"]:
        raise ConfigError(f"--checkpoint-every {cfg['checkpoint_every']} needs --checkpoint-dir DIR")
    if cfg["allreduce"] == "nccl" and device.type != "cuda":
        raise ConfigError(f"--allreduce nccl needs --device cuda (NCCL reduces GPU arrays), got --device "
                          f"{cfg['device']}")
    for option, folder in (("--out", cfg["out"]), ("--checkpoint-dir", cfg["checkpoint_dir"])):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{option} {folder} exists and is not a directory")
    check_out_dir(cfg["out"], resume=bool(cfg["resume"]), overwrite=bool(cfg.get("overwrite")))
    if rank == 0:  # the rank that writes: a folder that cannot take the files fails now, not after training
        _check_output_folders(cfg, model, dtype)
    if cfg["resume"] == "latest" and not cfg["checkpoint_dir"]:
        raise ConfigError("--resume without a PATH needs --checkpoint-dir DIR to look for the latest checkpoint")
    return splits, model, opt, scheduler, loss_fn, correct_fn, train_loader, test_loader, dtype, device


def _sizes(cfg: dict) -> str:
    return f"--hidden {cfg['hidden']}" if cfg.get("hidden") is not None else "its default sizes"


def _check_model_fits(cfg: dict, splits, dtype: np.dtype) -> None:
    """Refuse, before allocating anything, a model whose dense layers alone need more memory than this rank's
    share of the node (``--hidden 200000000`` would otherwise take the machine down): per parameter its
    weight, gradient and one optimizer or all-reduce buffer, plus the float64 draw it is initialised from."""
    params = dense_parameters_at_least(cfg["model"], splits.input_shape, splits.output_size, cfg["hidden"])
    need = params * (3 * dtype.itemsize + 8)
    room = memory_per_rank()
    if room is not None and need > room:
        sharing = launch_info().local_size or 1
        share = f" (this rank's 1/{sharing} share of the node)" if sharing > 1 else ""
        raise ConfigError(f"{_sizes(cfg)}: the {cfg['model']} model would have at least {params:,} parameters, "
                          f"about {need / 2**30:.1f} GiB with gradients, an optimizer buffer and initialisation "
                          f"in {dtype.name}, more than the {room / 2**30:.1f} GiB of memory available{share}; "
                          "choose smaller widths")


def _check_output_folders(cfg: dict, model, dtype: np.dtype) -> None:
    """--out and --checkpoint-dir exist (created), take a file, and have room: a checkpoint holds the
    parameters, about two optimizer buffers and the RNG states (3x the parameters, plus 1 MiB)."""
    if cfg["out"]:
        check_writable_dir(cfg["out"], "--out", MiB)
    if cfg["checkpoint_dir"]:
        need = 3 * model.num_parameters() * dtype.itemsize + MiB
        check_writable_dir(cfg["checkpoint_dir"], "--checkpoint-dir", need)


def _supervised(trainer: Trainer, collectives: Collectives) -> None:
    """Under ``dtrain launch --max-restarts`` (DTRAIN_ELASTIC_DIR set): this rank's record for the supervisor,
    rank 0's progress file, and the deadline's report of the ranks it found missing."""
    elastic = ElasticRank.from_env(collectives.rank)
    if elastic is None:
        return
    comm = getattr(collectives, "comm", None)
    hosts = getattr(comm, "hosts", None)
    elastic.register(hosts[collectives.rank] if hosts else None)
    trainer.elastic = elastic
    watchdog = getattr(comm, "watchdog", None)
    if watchdog is not None:
        watchdog.on_deadline = elastic.deadline_fired


def _rank_device(spec: str, collectives: Collectives) -> str:
    """``--device cuda`` under mpiexec: one GPU per rank, ``cuda:{local_rank % n_gpus}`` (``cuda:i`` names a
    device explicitly and wins). The chosen GPU becomes this process's current device."""
    if spec != "cuda" or collectives.comm is None:
        return spec
    from ..distributed.gpu import gpu_count

    n = gpu_count()
    if n == 0:
        raise ConfigError(f"--device cuda: rank {collectives.rank} sees no CUDA device (is CuPy installed, and "
                          "CUDA_VISIBLE_DEVICES not empty?)")
    index = collectives.comm.local_rank % n
    import cupy

    cupy.cuda.Device(index).use()
    return f"cuda:{index}"


def _make_trainer(cfg, sync, collectives, log, splits, model, opt, scheduler, loss_fn, correct_fn, train_loader,
                  test_loader, dtype, device) -> Trainer:
    every_steps, every_epochs, every_seconds = parse_checkpoint_every(cfg["checkpoint_every"])
    zero = hasattr(sync, "attach")  # --zero: the seam sums the votes, the sharded optimizer averages the gradients
    if zero:
        try:  # (what it refuses, e.g. shm across nodes or on a GPU, it refuses on every rank)
            opt = _zero_optimizer(cfg, opt, collectives.comm)
        except (TypeError, ValueError) as exc:
            hint = " (on the command line: --zero --allreduce ring)" if cfg["allreduce"] == "shm" else ""
            raise mark_collective(ConfigError(f"--zero --allreduce {cfg['allreduce']}: {exc}{hint}")) from None
        opt.max_grad_norm = cfg["clip_grad_norm"]  # clipped inside the step, where the averaged gradient exists
        scheduler = _scheduler(cfg, opt, len(train_loader))
        sync.attach(opt)
    manager = CheckpointManager(cfg["checkpoint_dir"], keep=cfg["keep_checkpoints"]) if cfg["checkpoint_dir"] else None
    if manager is not None and collectives.rank == 0:
        stale = manager.remove_stale_temporaries()
        if stale:
            log.info(f"{cfg['checkpoint_dir']}: removed {len(stale)} partial file(s) an interrupted write left "
                     f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''})")
    options = TrainOptions(device=device, dtype=dtype, precision=cfg["precision"], loss_scale=cfg["loss_scale"],
                           clip_grad_norm=None if zero else cfg["clip_grad_norm"],
                           nonfinite=cfg["nonfinite"],
                           check_every=cfg["check_every"], max_skipped_in_a_row=cfg["max_skipped_in_a_row"],
                           max_skipped_fraction=cfg["max_skipped_fraction"], capture=cfg["capture"])
    trainer = Trainer(
        model, opt, train_loader, test_loader, loss_fn=loss_fn, correct_fn=correct_fn, epochs=cfg["epochs"],
        max_steps=cfg["max_steps"], scheduler=scheduler,
        early_stopping=EarlyStopping(cfg["early_stopping"]) if cfg["early_stopping"] else None, options=options,
        report=ReportOptions(out_dir=cfg["out"], progress=cfg["progress"], monitor=cfg["monitor"],
                             tensorboard=cfg["tensorboard"]),
        checkpoints=Checkpointing(manager, every_steps, every_epochs, every_seconds), sync=sync,
        collectives=collectives, logger=log, config=cfg)
    trainer.splits = splits
    return trainer


def _resume(cfg: dict, trainer: Trainer, log: RankLogger) -> None:
    """Restore the trainer from ``cfg["resume"]``: "latest" (bare --resume: the newest checkpoint in
    --checkpoint-dir, verified against its manifest), "last-good" (the newest one there that verifies
    and loads; every newer corrupt one is named in a warning), or a PATH. Raises CheckpointError
    naming the file; a failed resume reads only, so it never deletes or overwrites a checkpoint."""
    spec = cfg["resume"]
    if not spec:
        return
    if spec in ("latest", "last-good"):
        flag = "--resume" if spec == "latest" else "--resume last-good"
        if trainer.checkpoints.manager is None:
            raise CheckpointError(f"{flag} needs --checkpoint-dir DIR to look for checkpoints in")
        if spec == "latest":
            path = trainer.checkpoints.manager.latest()
        else:
            path, skipped = trainer.checkpoints.manager.last_good()
            if log.is_main:  # every rank reads the same folder; one report is enough
                for bad, reason in skipped:
                    log.warning(f"--resume last-good: skipping {bad}: {reason}")
        if path is None:
            what = "no checkpoint" if spec == "latest" else "no checkpoint that verifies"
            raise CheckpointError(f"{flag}: {what} found in {cfg['checkpoint_dir']}")
    else:
        path = spec
        if not os.path.exists(path):
            raise CheckpointError(f"--resume: checkpoint {path} does not exist")
    state = load_checkpoint(path)
    trainer.load_state_dict(state, source=f"checkpoint {path}")
    log.info(f"resumed from {path} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}")
    if log.is_main:  # options that differ from the checkpoint's run: allowed, but said (once)
        for line in resume_changes(state.get("config") or {}, cfg):
            log.warning(line)


def run(cfg: dict, sync: GradientSync | None = None, collectives: Collectives | None = None,
        logger: RankLogger | None = None) -> dict:
    """Build and train; returns the summary dict (also written to ``out/summary.json``).

    Without ``sync`` the seams come from :func:`make_sync` (DDP under mpiexec with > 1 rank).
    """
    previous_dtype = backend.get_default_dtype()
    threads = configure_threads(cfg.get("threads"))  # once per process: `dtrain train` did it already
    if sync is None:
        sync, collectives = make_sync(cfg)
    collectives = collectives or LocalCollectives()
    logger = logger or RankLogger(collectives.rank, collectives.world_size, quiet=False)
    logger.info(threads.message)  # the first line: a wrong thread count explains a slow or different run
    try:
        trainer = build_job(cfg, sync, collectives, logger)
        log, world = trainer.log, trainer.collectives.world_size
        s = trainer.splits
        log.info(f"dtrain: {cfg['model']} ({trainer.model.num_parameters():,} parameters) on {s.name}: "
                 f"{len(s.train)} train / {len(s.test)} test samples, {cfg['optimizer']} lr {cfg['lr']}, "
                 f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, world size {world}")
        summary = trainer.fit()
        acc, loss = summary["test_accuracy"], summary["test_loss"]
        log.info(f"done: {summary['steps']} steps in {summary['wall_s']:.1f} s"  # no loss: nothing was evaluated
                 + (f", test_loss {loss:.4f}" if loss is not None else "")
                 + (f", test_accuracy {acc:.4f}" if acc is not None else ""))
        return summary
    finally:
        backend.set_default_dtype(previous_dtype)
