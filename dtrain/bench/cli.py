"""``dtrain bench NAME [options]``: one subcommand per benchmark, each with its module's own options."""

from __future__ import annotations

import argparse
import importlib

from . import BENCHMARKS
from .report import written_outputs

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` and its subcommands (one per module of :data:`dtrain.bench.BENCHMARKS`) to ``subparsers``."""
    bench = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS), description=(
        "Benchmarks. Each writes its report to --out (default: a new bench-results/DATE-TIME/ folder; the "
        "committed results and the commands that made them are in benchmarks/results). Those that compare "
        "world sizes launch mpiexec themselves; run them without mpiexec."))
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
    return _run_and_report(importlib.import_module(f"{__package__}.{args.bench}"), args)


def main(name: str, argv: list[str] | None = None) -> int:
    """Benchmark ``name`` as a script (``python benchmarks/NAME.py``, ``python -m dtrain.bench.NAME``): the
    same options as ``dtrain bench NAME``."""
    from .machine import pin_blas_threads

    pin_blas_threads()
    module = importlib.import_module(f"{__package__}.{name}")
    p = argparse.ArgumentParser(prog=name, description=module.HELP)
    module.add_arguments(p)
    return _run_and_report(module, p.parse_args(argv))


def _run_and_report(module, args) -> int:
    """Run a benchmark, then say where its results went when no ``--out`` chose the folder."""
    status = module.run(args)
    for path in written_outputs():
        print(f"results written to {path.resolve()} (pass --out DIR to choose the folder)")
    return status
