"""Every benchmark's logic, importable from the installed package: ``dtrain bench NAME`` runs one (``dtrain
bench --help`` lists them); the scripts in the repository's ``benchmarks/`` folder are thin entry points
to the same ``main()``. Results go to a fresh ``bench-results/DATE-TIME/`` folder unless ``--out`` says
otherwise; the committed ones in ``benchmarks/results`` are regenerated with ``--out benchmarks/results``.

Each benchmark module has ``HELP`` (one line), ``add_arguments(parser)``, ``run(args) -> exit status`` and
``main(argv=None)``. Shared pieces: :mod:`.machine` (CPU time, load, versions, one BLAS thread),
:mod:`.report` (output folder, command line, CSV and Markdown cells), :mod:`.profile` (cProfile summary),
:mod:`.ranks` (one mpiexec per world size), :mod:`.peers` (the optional PyTorch peer, a training step).
"""

BENCHMARKS = ("allreduce", "throughput", "train_throughput", "scaling", "simulate", "compression",
              "mixed_precision", "autograd_overhead", "checkpoint_memory", "zero_memory", "gpu_step", "gpu_allreduce",
              "cluster_allreduce", "cluster_tta", "cluster_straggler")
"""The benchmark modules under dtrain.bench, in the order ``dtrain bench --help`` lists them."""
