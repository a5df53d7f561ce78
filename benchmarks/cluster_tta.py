"""``dtrain bench cluster_tta`` from a checkout (see --help): dtrain/bench/cluster_tta.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dtrain, even if not installed
from dtrain.bench.cli import main

if __name__ == "__main__":
    sys.exit(main("cluster_tta"))
