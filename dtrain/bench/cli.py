"""``dtrain bench NAME [options]``: one subcommand per benchmark, each with its module's own options."""

from __future__ import annotations

import argparse
import importlib

from . import BENCHMARKS

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` and its subcommands (one per module of :data:`dtrain.bench.BENCHMARKS`) to ``subparsers``."""
    bench = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS),
                                  description="Benchmarks (results and the commands that made them: "
                                              "benchmarks/results). Those that compare world sizes launch "
                                              "mpiexec themselves; run them without mpiexec.")
    sub = bench.add_subparsers(dest="bench", required=True, metavar="NAME")
    for name in BENCHMARKS:
        module = importlib.import_module(f"{__package__}.{name}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=module.HELP, description=doc.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    bench.set_defaults(func=run)
    return bench


def run(args) -> int:
    """Run the chosen benchmark with one BLAS thread per process."""
    from .machine import pin_blas_threads

    pin_blas_threads()
    return importlib.import_module(f"{__package__}.{args.bench}").run(args)


def main(name: str, argv: list[str] | None = None) -> int:
    """Benchmark ``name`` as a script (``python benchmarks/NAME.py``, ``python -m dtrain.bench.NAME``): the
    same options as ``dtrain bench NAME``."""
    from .machine import pin_blas_threads

    pin_blas_threads()
    module = importlib.import_module(f"{__package__}.{name}")
    p = argparse.ArgumentParser(prog=name, description=module.HELP)
    module.add_arguments(p)
    return module.run(p.parse_args(argv))
