"""Run under mpiexec by tests/distributed/test_zero_training.py: ``dtrain train --zero`` built as the CLI builds it
(make_sync + build_job), with non-finite gradients on ONE rank at one step.

    mpiexec -n N python tests/distributed/ranks/mpi_zero_train.py ring|shm skip|raise STEP

Rank 1's last bias gets an infinite gradient at step STEP (its loss stays finite). Under --zero each rank holds
only its own gradients until the optimizer averages them, so it is the seam's vote that must make every rank
decide alike: with "skip" every rank skips that step (and only it) and the ranks end with the same parameters;
with "raise" every rank raises the same FloatingPointError. Each rank prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi_harness import run_or_abort

from dtrain.train import param_checksum
from dtrain.train.config import resolve_config
from dtrain.train.job import build_job, make_sync, model_defaults


def main() -> None:
    algorithm, policy, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = resolve_config({"zero": True, "allreduce": algorithm, "nonfinite": policy, "epochs": 1, "max_steps": 12,
                          "hidden": "16", "progress": False, "monitor": False}, None, model_defaults)
    sync, collectives = make_sync(cfg)
    trainer = build_job(cfg, sync, collectives)
    if collectives.rank == 1:
        bias = list(trainer.model.parameters())[-1]
        bias.register_hook(lambda g: np.full_like(g, np.inf) if trainer.state.step + 1 == at else None)
    error = None
    try:
        trainer.fit()
    except FloatingPointError as exc:
        error = str(exc)
    print(json.dumps({"rank": collectives.rank, "sync": type(sync).__name__, "steps": trainer.state.step,
                      "skipped": trainer.state.skipped_steps, "error": error,
                      "checksum": param_checksum(trainer.model)}), flush=True)


if __name__ == "__main__":
    run_or_abort(main)
