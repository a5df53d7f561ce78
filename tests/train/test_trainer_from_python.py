"""docs/training.md's "The Trainer data-parallel from Python" script runs as written: in one process and
under ``mpiexec -n 2`` (the Trainer with DDPGradientSync and MPICollectives), reaching the same metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.env import thread_env
from dtrain.launch import local_launch_flags, local_mpiexec

REPO = Path(__file__).resolve().parents[2]
HEADING = "## The Trainer data-parallel from Python"


def doc_script() -> str:
    """The first ```python block after the section's heading in docs/training.md."""
    text = (REPO / "docs" / "training.md").read_text()
    assert HEADING in text, f"docs/training.md lost its section {HEADING!r}"
    block = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.S)
    assert block is not None, "no ```python block in the section"
    return block.group(1)


def run_script(tmp_path: Path, ranks: int) -> str:
    script = tmp_path / "ddp_trainer.py"
    script.write_text(doc_script())
    env = {**thread_env(1), "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [sys.executable, str(script)]
    if ranks > 1:
        mpiexec = local_mpiexec()
        if mpiexec is None:
            pytest.skip("no mpiexec found (pip install mpich)")
        cmd = [mpiexec, *local_launch_flags(mpiexec), "-n", str(ranks), *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_the_documented_script_trains_data_parallel(tmp_path):
    one = run_script(tmp_path, 1)
    two = run_script(tmp_path, 2)
    results = {}
    for ranks, out in ((1, one), (2, two)):
        found = re.findall(r"^world (\d+): test accuracy ([0-9.]+), param_checksum ([0-9a-f]{64})$", out, re.M)
        assert len(found) == 1, f"{ranks} rank(s): expected one summary line (rank 0 prints), got:\n{out}"
        world, accuracy, _ = found[0]
        assert int(world) == ranks and float(accuracy) > 0.9, out
        epochs = re.findall(r"^epoch\s+(\d+)\s+step\s+(\d+)\s+train_loss ([0-9.]+)\s+test_loss ([0-9.]+)", out, re.M)
        assert [int(e) for e, *_ in epochs] == [1, 2, 3, 4, 5], out
        results[ranks] = epochs
    # The same global batches and weighting: two ranks train what one process trains, to the digits printed
    # (the gradient sums are added in another order, so not always to the last bit).
    for (e1, s1, tr1, te1), (e2, s2, tr2, te2) in zip(results[1], results[2]):
        assert (e1, s1) == (e2, s2) and abs(float(tr1) - float(tr2)) <= 2e-4 and abs(float(te1) - float(te2)) <= 2e-4
