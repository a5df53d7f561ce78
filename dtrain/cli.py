"""The ``dtrain`` command line: ``dtrain info`` and ``dtrain train``.

``train`` builds the job from dtrain.train.config.OPTIONS (one table for flags, TOML keys, defaults
and validation) and runs dtrain.train.job.run. Bad input exits with status 2 and one line on stderr
naming the problem; the distributed flags arrive with the distributed issues.
"""

from __future__ import annotations

import argparse
import platform
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


def _train(args) -> int:
    from .train.config import OPTIONS, resolve_config
    from .train.job import model_defaults, run

    flags = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    config = resolve_config(flags, args.config, model_defaults)
    run(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .train.config import OPTIONS

    p = argparse.ArgumentParser(prog="dtrain", description="Distributed data-parallel training over MPI.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, MPI library, CUDA availability")
    info.set_defaults(func=_info)
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as exc:
        # Bad input (config, data, checkpoint, numbers): one clear line, no traceback.
        print(f"dtrain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dtrain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
