"""Run ``dtrain train ARGS`` on one rank after writing its PID to ``DIR/pid.RANK`` (fault-injection tests).

    mpiexec -n 4 python tests/distributed/ranks/fault_driver.py DIR [--split-output] [--unseen-death] -- ARGS

``--split-output``: the rank's stdout and stderr go to ``DIR/rank.RANK.out`` / ``.err`` (as a cluster
job's per-rank output files would), so a test can read every rank's last words even when the job is
torn down.

``--unseen-death``: the launcher does not learn that the rank died. The driver runs the rank as a
child process (inheriting the launcher's PMI connection); when the child is killed, the driver stays
alive and silent until the job is torn down. This is the situation of a node that vanishes or a rank
that hangs: the launcher's own clean-up does not fire, and only dtrain's collective deadline can end
the job. (MPICH's Hydra otherwise tears the job down by itself, within a
fraction of a second, as soon as it sees a rank killed by a signal.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dtrain.env import world_rank


def main() -> int:
    folder, rest = sys.argv[1], sys.argv[2:]
    options = rest[: rest.index("--")] if "--" in rest else []
    args = rest[rest.index("--") + 1:] if "--" in rest else rest
    if "--unseen-death" in options:
        child = [sys.executable, __file__, folder, *(o for o in options if o != "--unseen-death"), "--", *args]
        status = subprocess.run(child, close_fds=False).returncode  # keeps the PMI file descriptor
        if status < 0:  # killed: stay silent, like a vanished node, until the job is torn down
            while True:
                time.sleep(3600)
        return status
    rank = str(world_rank())
    if "--split-output" in options:
        for fd, suffix in ((1, "out"), (2, "err")):
            f = os.open(os.path.join(folder, f"rank.{rank}.{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
    tmp = os.path.join(folder, f".pid.{rank}")
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, os.path.join(folder, f"pid.{rank}"))
    from dtrain.cli import main as dtrain_main

    return dtrain_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
