"""The ``dtrain`` command line: ``dtrain info``, ``train``, ``launch``, ``bench NAME`` and ``cluster``.

``train`` builds the job from dtrain.train.config.OPTIONS (one table for flags, TOML keys, defaults
and validation) and runs dtrain.train.job.run. Bad input exits with status 2 and one line on stderr
naming the problem. Under mpiexec an error every rank raised together (a bad option, a failed agreement) is
printed once, by rank 0; an error on one rank alone is printed by that rank, with its rank.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import signal
import sys

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
        from .distributed import init

        world = init()
        lines.append(f"MPI world: {world.size} rank(s) on {world.node_count} node(s), {world.local_size} per node "
                     f"on this one; thread level {world.thread_level} (overlapped DDP needs 'multiple')")
    except Exception as exc:  # mpi4py missing or no MPI library found
        lines.append(f"mpi4py: unavailable ({type(exc).__name__}: {exc})")
    if dtrain.backend.cupy_available():
        import cupy

        lines.append(f"cupy {cupy.__version__}; CUDA devices: {cupy.cuda.runtime.getDeviceCount()} (under mpiexec "
                     "--device cuda gives each rank cuda:{local_rank % devices})")
    else:
        lines.append(f"cupy/CUDA: unavailable: {dtrain.backend.cuda_problem()}")
    try:
        from .distributed.gpu import transport

        lines.append(f"collectives on GPU arrays: {transport()}")
    except Exception as exc:  # no MPI
        lines.append(f"collectives on GPU arrays: unavailable ({type(exc).__name__}: {exc})")
    lines.append(f"bfloat16: {'yes (ml_dtypes)' if dtrain.bfloat16 is not None else 'no (pip install ml_dtypes)'}")
    lines += _thread_lines()
    from .autograd.ops.gemm import describe

    lines.append(describe())
    print("\n".join(lines))
    return 0


def _thread_lines() -> list[str]:
    """What ``dtrain train`` would choose for the BLAS/OpenMP threads here, and the pools loaded now."""
    from .threads import choose_threads, library_threads, pools_summary

    try:
        choice = choose_threads(library_threads=library_threads()).message + " [as dtrain train would choose]"
    except ValueError as exc:  # a thread variable that is not a number
        choice = f"BLAS threads: unknown ({exc})"
    return [choice, pools_summary()]


def _train(args) -> int:
    from .threads import configure_threads
    from .train.config import OPTIONS, resolve_config
    from .train.job import init_world, make_sync, model_defaults, run

    # Under mpiexec the world comes first, so a configuration error on any one rank (MPMD command lines,
    # per-rank config files, a bad --compression spec) reaches every rank instead of leaving the others
    # waiting. This agreement is also the one a rank with a bad command line joins (_usage_error): keep it
    # the first collective here.
    comm = init_world()
    flags = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    error = config = seams = None
    try:
        config = resolve_config(flags, args.config, model_defaults)
        # BLAS/OpenMP pools sized before any compute: N ranks of machine-wide BLAS oversubscribe the cores.
        configure_threads(config["threads"])
        seams = make_sync(config, comm)
    except ValueError as exc:
        error = exc
    if comm is None:
        if error is not None:
            raise error
    else:
        from .train.ddp_sync import agree

        agree(comm, error, "the configuration")
    sync, collectives = seams
    run(config, sync=sync, collectives=collectives)
    return 0


def _train_config(train_args) -> dict:
    """``dtrain train TRAIN_ARGS`` parsed and resolved as a rank would (UsageError / ConfigError when bad), for a
    supervisor that must know the run's folders before it starts anything."""
    from .train.config import OPTIONS, resolve_config
    from .train.job import model_defaults

    try:
        targs = build_parser().parse_args(["train", *train_args])
    except UsageError as exc:
        raise ValueError(f"dtrain train {shlex.join(train_args)}: {exc}") from None
    flags = {o.name: getattr(targs, o.name) for o in OPTIONS if hasattr(targs, o.name)}
    return resolve_config(flags, targs.config, model_defaults)


def _launch(args) -> int:
    from .launch import launch

    if args.max_restarts is not None:
        if args.dry_run:
            raise ValueError("--dry-run shows one mpiexec command; with --max-restarts each attempt's is printed "
                             "when it starts")
        from .elastic import launch_elastic

        return launch_elastic(args.np, args.train_args, _train_config(args.train_args),
                              max_restarts=args.max_restarts, min_ranks=args.min_ranks, hosts_cmd=args.hosts_cmd,
                              device=args.device, mpiexec=args.mpiexec, python=args.python, threads=args.threads,
                              bind=args.bind)
    if args.hosts_cmd is not None:
        raise ValueError("--hosts-cmd goes with --max-restarts (it says where each attempt may run)")
    return launch(args.np, device=args.device, mpiexec=args.mpiexec, python=args.python, threads=args.threads,
                  bind=args.bind, train_args=args.train_args, dry_run=args.dry_run)


class UsageError(SystemExit):
    """A bad command line, as argparse found it: ``parser`` (whose usage to show) and ``message``.

    A SystemExit with status 2, as argparse's own error is; :func:`main` prints it (once under mpiexec).
    """

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(2)
        self.parser, self.message = parser, message

    def __str__(self) -> str:
        return self.message


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (main reports it, once under mpiexec) and reports arguments no
    parser knows from the sub-command they were given to, with that sub-command's usage."""

    commands: dict | None = None  # sub-command name -> its parser (set by build_parser on the top-level parser)

    def error(self, message):
        raise UsageError(self, message)

    def parse_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            message = f"unrecognized arguments: {' '.join(extras)}"
            if command == "launch":  # the options were meant for dtrain train: say where they go
                from .launch import separator_hint

                message += separator_hint(argv, extras)
            (self.commands or {}).get(command, self).error(message)
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The ``dtrain`` argument parser: one sub-command per function below."""
    p = _Parser(prog="dtrain", description="Distributed data-parallel training over MPI.")
    sub = p.add_subparsers(dest="command", required=True)
    p.commands = sub.choices
    info = sub.add_parser("info", help="versions, MPI library, CUDA availability")
    info.set_defaults(func=_info)
    _add_train_parser(sub)
    from .bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    _add_launch_parser(sub)
    from .cluster.cli import add_parser as add_cluster_parser

    add_cluster_parser(sub, supervise=_cluster_elastic)
    return p


def _add_train_parser(sub) -> None:
    """``dtrain train``: one flag per option of dtrain.train.config.OPTIONS."""
    from .train.config import OPTIONS

    tr = sub.add_parser(
        "train", help="train a model (default: an MLP on the digits data set)",
        description="Train a model from the zoo on a data set. Every option can also be set in a TOML file "
                    "given with --config (keys as below, with dashes or underscores); flags override it.",
        epilog="Writes one metrics line per epoch; with --out DIR also metrics.jsonl, summary.json, "
               "config.json and PNG plots. Exit status 0 on success, non-zero with the reason on stderr.",
        argument_default=argparse.SUPPRESS)
    tr.add_argument("--config", metavar="FILE.toml", default=None, help="read options from this TOML file")
    for opt in OPTIONS:
        default = f" (default: {opt.default})" if opt.default not in (None, "") else ""
        kwargs = {"help": opt.help + default}
        if opt.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = opt.type
            kwargs["metavar"] = opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else opt.name.upper())
        if opt.name == "resume":
            kwargs.update(nargs="?", const="latest")
            kwargs["metavar"] = "PATH"
        tr.add_argument(opt.flag, dest=opt.name, **kwargs)
    tr.set_defaults(func=_train)


def _cluster_elastic(args, argv) -> int:
    """``dtrain cluster run --max-restarts``: the elastic supervisor on the virtual cluster."""
    from .elastic import cluster_elastic, split_train_command

    _, train_args = split_train_command(argv)
    return cluster_elastic(args.name, args.np, argv, _train_config(train_args), max_restarts=args.max_restarts,
                           min_ranks=args.min_ranks, ppn=args.ppn, mpiexec=args.mpiexec)


def _add_launch_parser(sub) -> None:
    """``dtrain launch``: run ``dtrain train`` on N ranks of this machine under mpiexec."""
    from .launch import BIND_CHOICES, DEVICES, non_negative_int_arg, positive_int_arg, ranks_arg

    la = sub.add_parser(
        "launch", help="run dtrain train on N ranks of this machine under mpiexec (-n auto: one per GPU or core)",
        description="Start `dtrain train` on N ranks of this machine under mpiexec (MPICH or Open MPI, told "
                    "apart by `mpiexec --version`), one BLAS/OpenMP thread per rank, DTRAIN_* variables and "
                    "CUDA_VISIBLE_DEVICES forwarded. Everything after `--` goes to dtrain train.",
        epilog="examples:\n"
               "  dtrain launch -n auto -- --model cnn --out runs/cnn     one rank per CPU core\n"
               "  dtrain launch -n auto --device cuda -- --model resnet   one rank per visible GPU\n"
               "  dtrain launch -n 4 --dry-run -- --epochs 1              print the mpiexec command only\n\n"
               "With --device cuda each rank uses cuda:(local rank % GPUs). The exit status is mpiexec's; "
               "bad input (no GPU, no mpiexec) exits with 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    la.add_argument("-n", "--np", dest="np", type=ranks_arg, required=True, metavar="auto|N",
                    help="ranks to start; auto: one per visible GPU with --device cuda (CUDA_VISIBLE_DEVICES, "
                         "else CuPy, else nvidia-smi -L), else one per usable CPU core divided by --threads")
    la.add_argument("--device", choices=DEVICES, default="cpu",
                    help="cpu (default) or cuda: passed on to dtrain train as --device cuda")
    la.add_argument("--mpiexec", metavar="PATH", default=None,
                    help="the MPI launcher (default: mpiexec next to --python, else on PATH)")
    la.add_argument("--python", metavar="PY", default=None,
                    help="the Python that has dtrain installed (default: this one)")
    la.add_argument("--threads", type=positive_int_arg, default=1, metavar="T",
                    help="OMP/OpenBLAS/MKL threads per rank (default 1)")
    la.add_argument("--bind", choices=BIND_CHOICES, default=None,
                    help="pin each rank to a core, socket or NUMA domain, or nowhere (default: MPI's own default)")
    la.add_argument("--dry-run", action="store_true",
                    help="dry run: print the exact mpiexec command (shell-quoted, one line) and exit")
    la.add_argument("--max-restarts", type=non_negative_int_arg, default=None, metavar="R",
                    help="elastic: supervise the job and, when a rank or a node fails (killed, hung past --timeout, "
                         "lost), relaunch it from the last good checkpoint on the hosts still alive, up to R times "
                         "(needs --out or --checkpoint-dir after --; --checkpoint-every defaults to 60s)")
    la.add_argument("--min-ranks", type=positive_int_arg, default=1, metavar="K",
                    help="with --max-restarts: give up when fewer than K ranks can be started (default 1)")
    la.add_argument("--hosts-cmd", default=None, metavar="SCRIPT",
                    help="with --max-restarts: a command printing the live hosts, one HOST:SLOTS per line "
                         "(Horovod's host-discovery format), run before every attempt (default: this machine)")
    la.add_argument("train_args", nargs="*", metavar="-- TRAIN_ARGS", help="options for dtrain train, after --")
    la.set_defaults(func=_launch)


def _distributed_errors() -> tuple:
    """Job-level errors raised on every rank (another rank failed; the ranks hold different models; no MPI
    library to run on). Importing them loads no MPI."""
    from .distributed import ModelMismatchError
    from .distributed.comm import MPIUnavailableError
    from .train.sync import DistributedRunError

    return DistributedRunError, ModelMismatchError, MPIUnavailableError


def _write_error(line: str) -> None:
    # One write per line: under mpiexec several ranks share stderr, and print() may write the text and
    # the newline separately (unbuffered), gluing ranks' messages together.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _is_collective(exc: BaseException) -> bool:
    """Raised on every rank together (after an agreement), so that one report, rank 0's, is enough.
    ModelMismatchError is, by its contract, raised on every rank of the comparison."""
    from .distributed import ModelMismatchError

    return bool(getattr(exc, "collective", False)) or isinstance(exc, ModelMismatchError)


def _report(command: str, exc: BaseException, status: int) -> int:
    """The one ``dtrain COMMAND: error: ...`` line for bad input, then the exit status: rank 0 alone reports
    an error every rank raised together; an error of this rank alone names the rank and ends the job."""
    from .distributed.comm import current_world
    from .env import launcher_rank

    world = current_world()
    if world is not None and world.size > 1 and _is_collective(exc):
        if world.rank == 0:
            _write_error(f"dtrain {command}: error: {exc}")
        return status
    rank = launcher_rank()
    where = f" [rank {rank}]" if rank is not None else ""
    _write_error(f"dtrain {command}: error:{where} {exc}")
    return _abort_if_alone(exc, status)


def _usage_error(exc: UsageError) -> int:
    """Report a bad command line (usage line and error), exit status 2. Under mpiexec the rank joins the
    configuration agreement of ``dtrain train`` (which the ranks whose command line parsed are in), so no rank
    waits for it: when every rank has the same bad command line rank 0 alone prints it; a rank whose command
    line alone is bad is named, with its error, by rank 0's report that the job failed."""
    from .env import launcher_rank

    rank = launcher_rank()
    if rank is not None:
        try:
            from .train.ddp_sync import agree
            from .train.job import init_world

            comm = init_world()
        except Exception:  # no usable MPI: every rank reports for itself
            comm = None
        if comm is not None:
            try:
                agree(comm, exc, "the configuration")
            except UsageError:  # this rank's own error, now known to every rank
                pass
            if comm.rank != 0:
                return 2
            rank = None  # the job's report: no rank tag
    where = f" [rank {rank}]" if rank is not None else ""
    exc.parser.print_usage(sys.stderr)
    _write_error(f"{exc.parser.prog}: error:{where} {exc}")
    return 2


def _abort_if_alone(exc: BaseException, status: int) -> int:
    """An error raised on this rank only, in a world > 1, would leave the other ranks waiting in their
    next collective: end the whole job (MPI_Abort). Errors every rank raised together just exit."""
    from .distributed.comm import current_world

    world = current_world()
    if world is not None and world.size > 1 and not getattr(exc, "collective", False):
        _write_error(f"dtrain: error: [rank {world.rank}] the error above was not agreed with the other ranks: "
                     "aborting the job (MPI_Abort) so that none of them waits for this rank")
        world.abort(status)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the ``dtrain`` command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _usage_error(exc)
    from .autograd import CaptureError
    from .env import launcher_rank
    from .train.signals import TrainingInterrupted

    rank = launcher_rank()
    where = f" [rank {rank}]" if rank is not None else ""
    try:
        return args.func(args)
    except TrainingInterrupted as exc:  # SIGINT/SIGTERM: every rank stopped at the same step
        if not rank:
            _write_error(f"dtrain {args.command}: {exc}")
        return exc.exit_status
    except (ValueError, OSError, FloatingPointError, CaptureError, *_distributed_errors()) as exc:
        # Bad input (config, data, checkpoint, numbers, no GPU, a model --capture cannot replay): one clear
        # line, no traceback.
        return _report(args.command, exc, 2)
    except KeyboardInterrupt as exc:  # Ctrl-C outside training, or a second SIGINT/SIGTERM (SecondSignal)
        _write_error(f"dtrain {args.command}: interrupted{where}")
        return _abort_if_alone(exc, 128 + getattr(exc, "signum", signal.SIGINT))
    except Exception as exc:  # a bug: the traceback, then make sure no other rank waits for this one
        import traceback

        _write_error(f"dtrain {args.command}: internal error{where}:\n{traceback.format_exc().rstrip()}")
        return _abort_if_alone(exc, 1)


if __name__ == "__main__":
    sys.exit(main())
