"""The training job's configuration: one table of options shared by the CLI flags and TOML files.

Precedence, lowest to highest: built-in defaults, the chosen model's defaults (e.g. Adam for the
language models), the environment (DTRAIN_TIMEOUT), the TOML ``--config`` file, explicit command-line
flags. Every option's type and range is validated here, with an error that names the option, the bad
value and what was expected; the spec-shaped ones are parsed once, where their object is built
(``--compression`` by :func:`dtrain.train.job.make_compressor`, ``--dataset`` by ``load_dataset``).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..env import timeout_from_env
from ..files import InputFileError, parse_guarded, read_limited
from ..spec import is_real

__all__ = ["MOMENTUM_OPTIMIZERS", "OPTIONS", "ConfigError", "Option", "load_toml", "require_tensorboardx",
           "resolve_config", "resume_changes"]


class ConfigError(ValueError):
    """A bad option value, an unknown key or an unreadable config file."""


@dataclass(frozen=True)
class Option:
    name: str  # key in TOML and the config dict; the flag is --name with dashes
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    check: str | None = None  # "positive", "nonnegative", "fraction" (0 <= v < 1)
    metavar: str | None = None
    optional: bool = False  # None allowed (means "not set")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("model", str, "mlp", "model from the zoo", ("mlp", "cnn", "resnet", "lstm", "transformer")),
    Option("dataset", str, "digits", "digits | synthetic[:k=v,...] | mnist:DIR | npz:FILE | text[:FILE] "
           "(text is the default for lstm/transformer)", metavar="SPEC"),
    Option("epochs", int, 20, "passes over the training data", check="positive"),
    Option("batch_size", int, 64, "GLOBAL mini-batch size, split across the ranks under mpiexec",
           check="positive"),
    Option("lr", float, 0.05, "learning rate (per-model defaults: mlp 0.05 and cnn 0.02 with SGD; resnet 3e-3, "
           "lstm 5e-3, transformer 3e-3 with Adam)",
           check="positive"),
    Option("optimizer", str, "sgd", "optimizer", ("sgd", "adam", "adamw", "rmsprop", "adagrad")),
    Option("momentum", float, 0.9, "SGD/RMSprop momentum, in [0, 1)", check="fraction"),
    Option("weight_decay", float, 0.0, "L2 weight decay (decoupled for adamw)", check="nonnegative"),
    Option("l1", float, 0.0, "L1 regularisation strength", check="nonnegative"),
    Option("scheduler", str, "none", "learning-rate schedule (stepped per optimizer step; plateau per epoch)",
           ("none", "step", "multistep", "exponential", "cosine", "plateau")),
    Option("warmup_steps", int, 0, "linear learning-rate warm-up over this many steps, before the schedule",
           check="nonnegative"),
    Option("lr_gamma", float, 0.1, "decay factor of the step/multistep/exponential/plateau schedules",
           check="positive"),
    Option("lr_step_epochs", int, 10, "StepLR period in epochs (multistep: milestones at 1/2 and 3/4 of training)",
           check="positive"),
    Option("clip_grad_norm", float, None, "clip the global gradient norm to this value", check="positive",
           optional=True),
    Option("hidden", str, None, "hidden widths: MLP layers '256,128'; the LSTM/CNN hidden size", optional=True,
           metavar="W[,W...]"),
    Option("dropout", float, None, "dropout probability inside the model (model default if unset)",
           check="fraction", optional=True),
    Option("seq_len", int, None, "sequence length of the text data set (default 32)", check="positive",
           optional=True),
    Option("compression", str, "auto", "gradient compression under mpiexec: none | fp16 | bf16 | powersgd:RANK | "
           "topk:RATIO | randomk:RATIO | qsgd:LEVELS | signsgd; auto: none, or the --precision's half type (none with "
           "--zero)",
           metavar="SPEC"),
    Option("precision", str, "fp32", "mixed precision: fp16/bf16 compute matmul, linear and conv in half precision "
           "on float32 master weights (with fp16, dynamic loss scaling by default)", ("fp32", "fp16", "bf16")),
    Option("allreduce", str, "ring", "gradient all-reduce under mpiexec: our ring, hierarchical (within each node, "
           "then a ring over node leaders), MPI_Allreduce, NCCL (with --device cuda), or shm (every rank on one "
           "node: DDP's buckets live in a shared-memory window and are summed in place; the fastest on one node "
           "here)", ("ring", "hierarchical", "mpi", "nccl", "shm")),
    Option("zero", bool, False, "under mpiexec, ZeRO-1 instead of DDP: the optimizer state is sharded over the "
           "ranks, each rank updates its 1/N of the parameters and the ranks exchange the updated chunks; with "
           "--allreduce shm the gradients and parameters live in a shared-memory window (on one node the fastest "
           "step); --allreduce ring or shm; not with --compression (--clip-grad-norm clips inside the sharded step)"),
    Option("bucket_mb", float, 25.0, "DDP gradient bucket size in MiB", check="positive", metavar="MB"),
    Option("overlap", bool, True, "overlap gradient all-reduce with backward"),
    Option("capture", bool, False, "trace each training step once (per batch shape) and replay its ops without the "
           "eager engine's per-op bookkeeping: the same results bit for bit, faster on small models; needs "
           "--precision fp32 and a model of ops capture may replay (every zoo model)"),
    Option("sync_batchnorm", bool, False, "under mpiexec, BatchNorm statistics over the global batch (SyncBatchNorm)"),
    Option("device", str, "cpu", "cpu | cuda | cuda:INDEX", metavar="DEVICE"),
    Option("dtype", str, "float32", "parameter and activation dtype", ("float32", "float64")),
    Option("seed", int, 0, "seed for initialisation, dropout and shuffling (same seed, same run)",
           check="nonnegative"),
    Option("max_steps", int, None, "stop after this many optimizer steps (the LR schedule still spans --epochs)",
           check="positive", optional=True),
    Option("early_stopping", int, None, "stop when the test loss has not improved for this many epochs",
           check="positive", optional=True, metavar="PATIENCE"),
    Option("checkpoint_dir", str, None, "write checkpoints to this folder", optional=True, metavar="DIR"),
    Option("checkpoint_every", str, "0", "checkpoint every N steps, every N epochs with 'Ne' (e.g. 2e), or "
           "every N seconds / minutes of wall-clock time with 'Ns' / 'Nm' (e.g. 30s: rank 0's clock, agreed "
           "with the step's gradient sync); 0: only at the end", metavar="N|Ne|Ns"),
    Option("keep_checkpoints", int, 3, "how many checkpoints to keep", check="positive"),
    Option("resume", str, None, "continue from the latest checkpoint in --checkpoint-dir (bare --resume), from "
           "PATH, or with 'last-good' from the newest checkpoint there that verifies (corrupt ones are skipped)",
           optional=True, metavar="PATH"),
    Option("timeout", float, 300.0, "seconds a collective may wait for its peers before the whole job is aborted "
           "with a message naming the operation and the missing ranks; 0: wait forever (env DTRAIN_TIMEOUT)",
           check="nonnegative", metavar="SECONDS"),
    Option("stall_warning", float, None, "warn (naming the late ranks) when a collective has waited this long "
           "(default: half of --timeout)", check="positive", optional=True, metavar="SECONDS"),
    Option("check_every", int, 100, "compare a checksum of the parameters across ranks every K steps (and at the "
           "end); 0: only at the end", check="nonnegative", metavar="K"),
    Option("nonfinite", str, "raise", "non-finite gradients after the all-reduce: raise an error, or skip the step "
           "on every rank (counted and logged, within --max-skipped-in-a-row and --max-skipped-fraction)",
           ("raise", "skip")),
    Option("max_skipped_in_a_row", int, 25, "end the run with an error when this many consecutive steps were skipped "
           "for non-finite gradients (--nonfinite skip or a dynamic loss scale)", check="positive", metavar="K"),
    Option("max_skipped_fraction", float, 0.2, "end the run with an error when more than this fraction of the "
           "steps were skipped (checked from step 50 on, and at the end)", check="fraction", metavar="F"),
    Option("loss_scale", str, "auto", "loss scaling: none | dynamic (scale backs off and the step is skipped on "
           "non-finite gradients, grows after 2000 good steps) | a fixed positive number; auto: dynamic with "
           "--precision fp16, else none", metavar="auto|none|dynamic|S"),
    Option("threads", int, None, "BLAS/OpenMP threads of each process; 0: leave the libraries' own defaults "
           "(default: the thread variables such as OMP_NUM_THREADS when set, else under mpiexec usable cores / "
           "ranks on this node, else the library default)", check="nonnegative", optional=True, metavar="N"),
    Option("out", str, None, "write metrics.jsonl, summary.json and PNG plots to this folder", optional=True,
           metavar="DIR"),
    Option("overwrite", bool, False, "replace the results of a previous run found in --out (without it, a new "
           "run refuses a folder that holds metrics.jsonl, summary.json, ...; --resume continues that run)"),
    Option("progress", bool, None, "progress bar on rank 0 (default: when rank 0's output reaches a terminal, "
           "under mpiexec too)", optional=True),
    Option("monitor", bool, True, "record gradient flow, weight and dead-ReLU statistics each epoch"),
    Option("tensorboard", bool, False, "also write the per-epoch metrics as TensorBoard scalars to "
           "--out DIR/tensorboard (needs tensorboardX: pip install tensorboardX)"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the optimizers --momentum is passed to
# Options that steer the run rather than define what is trained: changing them on --resume is routine.
_RUN_CONTROL = frozenset({"resume", "out", "overwrite", "progress", "monitor", "tensorboard", "device", "timeout",
                          "stall_warning", "check_every", "checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                          "max_steps", "threads", "capture"})


def _coerce(opt: Option, value, source: str):
    where = f"{opt.flag}" if source == "flag" else f"'{opt.name}' in {source}"
    if value is None:
        if opt.optional:
            return None
        raise ConfigError(f"{where} needs a value")
    try:
        if opt.type is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif opt.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif opt.type is float:
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif opt.type is str:
            if isinstance(value, (list, tuple)) and opt.name == "hidden":
                value = ",".join(str(v) for v in value)
            elif is_real(value):
                value = str(value)
            elif not isinstance(value, str):
                raise TypeError
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {opt.type.__name__}, got {value!r}") from None
    if opt.type is int and not -(2**63) <= value < 2**63:  # checkpoints and the collectives carry it as int64
        raise ConfigError(f"{where} must fit in a 64-bit integer, got {value}")
    if opt.choices and str(value).lower() not in opt.choices:
        raise ConfigError(f"{where}: unknown {opt.name} {value!r}; expected one of: {', '.join(opt.choices)}")
    if opt.choices:
        value = str(value).lower()
    if opt.check and isinstance(value, (int, float)):
        bad = (
            (opt.check == "positive" and not value > 0)
            or (opt.check == "nonnegative" and not value >= 0)
            or (opt.check == "fraction" and not 0 <= value < 1)
            or (isinstance(value, float) and not math.isfinite(value))
        )
        if bad:
            expected = {"positive": "> 0", "nonnegative": ">= 0", "fraction": "in [0, 1)"}[opt.check]
            raise ConfigError(f"{where} must be {expected}, got {value!r}")
    return value


def load_toml(path: str) -> dict:
    """Read a TOML config file: a flat table of option names (dashes or underscores), a regular file of at
    most 1 MiB. Errors name the file; a key given twice (``batch-size`` and ``batch_size``) is one."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        raw = read_limited(path, "config file", _MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except InputFileError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text (byte {exc.start}: "
                          f"{raw[exc.start:exc.start + 1]!r}); a binary file?") from None
    try:
        data = parse_guarded(tomllib.loads, text, f"config file {path}")
    except InputFileError as exc:
        raise ConfigError(f"{exc} (not valid TOML for a config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return _toml_options(data, path)


_MAX_CONFIG_BYTES = 1 << 20


def _toml_options(data: dict, path: str) -> dict:
    out, spelled = {}, {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: [{key}] tables are not supported; write the options at the "
                              f"top level (valid keys: {', '.join(_BY_NAME)})")
        if name not in _BY_NAME:
            raise ConfigError(f"config file {path}: unknown key {key!r}; valid keys: {', '.join(_BY_NAME)}")
        if name in spelled:
            raise ConfigError(f"config file {path}: {spelled[name]!r} and {key!r} are the same option; keep one")
        spelled[name] = key
        out[name] = _coerce(_BY_NAME[name], value, f"config file {path}")
    return out


def parse_checkpoint_every(value: str) -> tuple[int, int, float]:
    """'N' -> (N steps, 0, 0); 'Ne' / 'Nepoch(s)' -> (0, N epochs, 0); 'Ns' / 'Nm' -> (0, 0, seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(e|epoch|epochs|s|m)?\s*", str(value))
    unit = m.group(2) if m else None
    if not m or (unit not in ("s", "m") and "." in m.group(1)) or (unit in ("s", "m") and float(m.group(1)) <= 0):
        raise ConfigError("--checkpoint-every must be N (steps), Ne (epochs) or Ns / Nm (seconds / minutes of "
                          f"wall-clock time), e.g. 500, 2e or 30s; got {value!r}")
    if unit in ("s", "m"):
        return 0, 0, float(m.group(1)) * (60.0 if unit == "m" else 1.0)
    n = int(m.group(1))
    return (0, n, 0.0) if unit else (n, 0, 0.0)


def parse_loss_scale(value) -> str:
    """'none' | 'dynamic' | a positive finite number (as its string): the --loss-scale option, validated."""
    text = str(value).strip().lower()
    if text in ("none", "dynamic"):
        return text
    try:
        scale = float(text)
    except ValueError:
        scale = None
    if scale is None or not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--loss-scale must be none, dynamic or a positive number, got {value!r}")
    return repr(scale)


MAX_KEEP_CHECKPOINTS = 10_000  # latest.json lists each kept file (~150 bytes) and is read back with a 4 MiB cap
MIN_STALL_WARNING = 0.1  # seconds: below it every ordinary collective would be reported as stalled

def _check_static_loss_scale(config: dict) -> None:
    """A static --loss-scale larger than the gradients' type can hold overflows on every step: an error now,
    not a run whose every step fails (the message used to suggest lowering --lr). The scaled gradients are
    float16 under --precision fp16, float32 under bf16, else the --dtype."""
    if config["loss_scale"] in ("none", "dynamic"):
        return
    scale = float(config["loss_scale"])
    kind = {"fp16": "float16", "bf16": "float32"}.get(config["precision"], str(config["dtype"]))
    limit = float(np.finfo(kind).max)
    if scale > limit:
        raise ConfigError(f"--loss-scale {scale:g} is larger than {kind} can hold ({limit:g}): every scaled "
                          f"gradient would overflow; use --loss-scale dynamic, or a power of two up to "
                          f"{2.0 ** math.floor(math.log2(limit)):g}")


def _check_momentum(config: dict, given: dict, from_toml: dict, toml_path: str | None, model: str) -> None:
    """An explicitly set --momentum that the chosen optimizer has no use for is an error (it would be ignored)."""
    if config["optimizer"] in MOMENTUM_OPTIMIZERS:
        return
    if "momentum" not in given and "momentum" not in from_toml:
        return  # the default, never passed to this optimizer
    m = config["momentum"]
    where = f"--momentum {m}" if "momentum" in given else f"'momentum = {m}' in config file {toml_path}"
    # Not chosen by the user, an optimizer without momentum can only be the model's default.
    chosen = "" if "optimizer" in given or "optimizer" in from_toml else f" (the {model} model's default)"
    raise ConfigError(f"{where} has no effect with --optimizer {config['optimizer']}{chosen}: "
                      f"only {' and '.join(MOMENTUM_OPTIMIZERS)} use momentum; drop it or choose one of those")


def require_tensorboardx():
    """The ``tensorboardX`` module that ``--tensorboard`` writes with, or ConfigError naming the pip command."""
    try:
        import tensorboardX
    except ImportError as exc:
        raise ConfigError(f"--tensorboard needs the tensorboardX package ({exc}): pip install tensorboardX") from None
    return tensorboardX


def _check_tensorboard(config: dict) -> None:
    if not config["out"]:
        raise ConfigError("--tensorboard writes its event files to --out DIR/tensorboard: it needs --out DIR")
    require_tensorboardx()


def _as_flag(name: str, value) -> str:
    """How the option reads on a command line: "with --lr 0.1", "with --no-overlap", "without --hidden"."""
    flag = "--" + name.replace("_", "-")
    if value is None:
        return f"without {flag}"
    if isinstance(value, bool):
        return f"with {flag}" if value else f"with --no-{flag[2:]}"
    return f"with {flag} {value}"


def resume_changes(saved: dict, current: dict) -> list[str]:
    """One warning line per option that defines the training (not the run control: output folders,
    timeouts, --max-steps, ...) whose value differs between a checkpoint's recorded config ``saved`` and
    this run's ``current`` one, e.g. "resuming with --lr 0.1 (the checkpoint was trained with 0.05)".
    Options either side lacks (older checkpoints) are not compared."""
    lines = []
    for name, value in current.items():
        if name in _RUN_CONTROL or name not in saved or saved[name] == value:
            continue
        was = saved[name]
        shown = str(was) if len(str(was)) <= 80 else f"{str(was)[:77]}..."  # a crafted checkpoint's 10 MB value
        was_text = _as_flag(name, was) if was is None or isinstance(was, bool) else f"with {shown}"
        lines.append(f"resuming {_as_flag(name, value)} (the checkpoint was trained {was_text})")
    return lines


def resolve_config(flags: dict, toml_path: str | None = None, model_defaults=None) -> dict:
    """Merge defaults < model defaults < TOML < flags into one validated config dict.

    Args:
        flags: options given explicitly on the command line (name -> raw value).
        toml_path: optional TOML file.
        model_defaults: callable(model name) -> dict of that model's default options.
    """
    from_toml = load_toml(toml_path) if toml_path else {}
    given = {}
    for name, value in flags.items():
        if name not in _BY_NAME:
            raise ConfigError(f"unknown option {name!r}")
        given[name] = _coerce(_BY_NAME[name], value, "flag")
    model = given.get("model", from_toml.get("model", _BY_NAME["model"].default))
    config = {o.name: o.default for o in OPTIONS}
    if model_defaults is not None:
        for name, value in model_defaults(model).items():
            config[name] = _coerce(_BY_NAME[name], value, f"the {model} model's defaults")
    try:  # the launcher's environment: below TOML and flags
        env_timeout = timeout_from_env(None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if env_timeout is not None:
        config["timeout"] = env_timeout
    config.update(from_toml)
    config.update(given)
    _check_momentum(config, given, from_toml, toml_path, model)
    if config["tensorboard"]:  # on every rank, before anything is built
        _check_tensorboard(config)
    parse_checkpoint_every(config["checkpoint_every"])
    half = config["precision"] != "fp32"
    if half and config["dtype"] != "float32":
        raise ConfigError(f"--precision {config['precision']} keeps float32 master weights: it needs --dtype float32, "
                          f"got --dtype {config['dtype']}")
    if str(config["loss_scale"]).strip().lower() == "auto":
        config["loss_scale"] = "dynamic" if config["precision"] == "fp16" else "none"
    config["loss_scale"] = parse_loss_scale(config["loss_scale"])
    _check_static_loss_scale(config)
    if config["keep_checkpoints"] > MAX_KEEP_CHECKPOINTS:  # the manifest lists them all and is read back whole
        raise ConfigError(f"--keep-checkpoints must be at most {MAX_KEEP_CHECKPOINTS}, got "
                          f"{config['keep_checkpoints']}")
    if config["stall_warning"] is not None and config["stall_warning"] < MIN_STALL_WARNING:
        raise ConfigError(f"--stall-warning must be at least {MIN_STALL_WARNING:g} s, got {config['stall_warning']:g}: "
                          "a shorter wait is an ordinary collective, not a stall (every one would be reported)")
    if str(config["compression"]).strip().lower() == "auto":  # gradients travel in the compute precision
        config["compression"] = "none" if config["zero"] else \
            {"fp32": "none", "fp16": "fp16", "bf16": "bf16"}[config["precision"]]
    # The --compression spec itself is parsed once, where its Compressor is built: job.make_compressor.
    if config["zero"]:
        _check_zero(config)
    return config


def _check_zero(config: dict) -> None:
    """--zero averages the gradients inside the optimizer's step (ZeroRedundancyOptimizer), over its own collectives:
    another all-reduce or a compressor is refused in every world, naming the option. (--clip-grad-norm clips
    inside that step, where the averaged gradient exists.)"""
    if config["allreduce"] not in ("ring", "shm"):
        raise ConfigError(f"--zero takes --allreduce ring or shm (the ZeRO optimizer's own collectives), got "
                          f"--allreduce {config['allreduce']}")
    if str(config["compression"]).strip().lower() != "none":
        raise ConfigError(f"--zero does not compress gradients: drop --compression {config['compression']} (or "
                          "train without --zero)")

