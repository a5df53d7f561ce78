"""``dtrain bench gpu_allreduce`` from a checkout (see --help): dtrain/bench/gpu_allreduce.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dtrain, even if not installed
from dtrain.bench.cli import main

if __name__ == "__main__":
    sys.exit(main("gpu_allreduce"))
