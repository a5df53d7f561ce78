"""Strong and weak scaling of DDP training over world sizes, with the step split into compute, exposed and
overlapped communication and optimizer, and a check of the cost model (dtrain.distributed.costmodel).

The sweep lives in the package (``dtrain.bench.scaling``) so that ``dtrain bench scaling`` works from an
installed dtrain; this script is the same entry point from a checkout:

    /work/venv/bin/python benchmarks/scaling.py --ranks 1,2,4          # = dtrain bench scaling --ranks 1,2,4
    /work/venv/bin/python benchmarks/scaling.py --ranks 1,2 --model cnn --compression fp16 --out /tmp/sc

It launches ``mpiexec -n K`` itself for each K (do not start it under mpiexec) and writes scaling.csv,
scaling.json, scaling.md, efficiency.png and breakdown.png to ``--out`` (default
benchmarks/results/scaling). See ``dtrain.bench.scaling`` for what is measured and how.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dtrain, even if not installed

from dtrain.bench.scaling import main

if __name__ == "__main__":
    sys.exit(main())
