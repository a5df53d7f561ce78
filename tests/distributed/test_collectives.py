"""dtrain.distributed.comm and dtrain.distributed.collectives: multi-rank checks under mpiexec (mpi_collectives.py holds
the rank-side assertions, the same at every world size) and in-process checks on a world of 1."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrain.distributed import collectives as C
from dtrain.distributed import comm as dcomm
from dtrain.distributed.algorithms import ALGORITHMS

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_collectives.py")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_collectives_under_mpiexec(run_mpi, n):
    res = run_mpi(SCRIPT, n, timeout=120)
    assert f"collectives OK on {n} ranks" in res.stdout


def test_a_failing_rank_aborts_the_job_instead_of_hanging(run_mpi, tmp_path):
    script = tmp_path / "fail.py"
    report = tmp_path / "rank1.txt"
    # The failing rank writes its message to a file before aborting: a line printed just before
    # MPI_Abort can be lost when the launcher tears the job's output forwarding down first.
    script.write_text(
        "import numpy as np\n"
        "from mpi4py import MPI\n"
        "import dtrain.distributed.collectives as C, dtrain.distributed.comm as D\n"
        "w = D.init()\n"
        "try:\n"
        "    C.allreduce(np.ones(3), op='prod' if w.rank == 1 else 'sum')\n"  # rank 1 fails before sending
        "except ValueError as exc:\n"
        f"    open({str(report)!r}, 'w').write(f'rank {{w.rank}} error: {{exc}}')\n"
        "    MPI.COMM_WORLD.Abort(3)\n"
    )
    res = run_mpi(script, 3, timeout=60, check=False)
    assert res.returncode != 0
    assert "rank 1 error: allreduce (rank 1): unknown op 'prod'" in report.read_text()


# ----------------------------------------------------------------------------------------------
# chunk_bounds
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 10, 1000, 2**20 + 3])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5, 8])
def test_chunk_bounds_partition(count, parts):
    bounds = C.chunk_bounds(count, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous
    lengths = [hi - lo for lo, hi in bounds]
    base, extra = divmod(count, parts)
    assert lengths == [base + 1] * extra + [base] * (parts - extra)


def test_chunk_bounds_examples_and_errors():
    assert C.chunk_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert C.chunk_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    for count, parts in ((-1, 2), (3, 0), (2.5, 2), (3, True)):
        with pytest.raises(ValueError, match="chunk_bounds"):
            C.chunk_bounds(count, parts)


# ----------------------------------------------------------------------------------------------
# In-process: a world of 1 (MPI starts as a singleton without mpiexec)
# ----------------------------------------------------------------------------------------------


def test_init_is_idempotent_and_a_world_of_one():
    from mpi4py import MPI

    world = dcomm.init()
    assert dcomm.is_initialized() and dcomm.init() is world and dcomm.get_world() is world
    assert dcomm.init(MPI.COMM_WORLD) is world and dcomm.init(world) is world
    assert (world.rank, world.size, world.local_rank, world.local_size, world.node_count) == (0, 1, 0, 1, 1)
    assert (dcomm.get_rank(), dcomm.get_world_size(), dcomm.get_local_rank(), dcomm.get_node_count()) == (0, 1, 0, 1)
    assert world.thread_level in ("single", "funneled", "serialized", "multiple")
    assert world.supports_async == (world.thread_level == "multiple")  # MPICH and Open MPI give "multiple"
    dcomm.barrier()
    with pytest.raises(RuntimeError, match="already initialised on another communicator"):
        dcomm.init(MPI.COMM_SELF)
    with pytest.raises(TypeError, match="Intracomm"):
        dcomm.init("world")


def test_collectives_on_a_world_of_one_are_identities():
    world = dcomm.init()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for op in C.OPS:
        for algorithm in ALGORITHMS:
            if algorithm == "nccl":  # device arrays only
                with pytest.raises(ValueError, match="algorithm 'nccl' needs a CuPy \\(device\\) array"):
                    C.allreduce(x, op=op, algorithm=algorithm)
                continue
            assert C.allreduce(x, op=op, algorithm=algorithm) is x
            assert np.array_equal(x, np.arange(6).reshape(2, 3))
    h = C.allreduce(x, op="mean", async_op=True)
    assert h.done() and h.wait() is x
    rs = C.reduce_scatter(x)
    assert np.array_equal(rs, np.arange(6)) and rs.base is not x
    assert np.array_equal(C.allgather(x), np.arange(6)) and C.broadcast(x, root=0, comm=world) is x
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\), got 1"):
        C.broadcast(x, root=1)
    with pytest.raises(TypeError, match="Communicator"):
        C.allreduce(x, comm="world")


def test_buffers_grow_and_are_reused():
    world = dcomm.init()
    a = world.buffer("test.key", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32
    b = world.buffer("test.key", 10, np.float64)
    assert np.shares_memory(a, b)  # 80 bytes fit in the 80-byte backing: reused
    c = world.buffer("test.key", 1000, np.float64)
    assert c.shape == (1000,) and not np.shares_memory(a, c)
    d = world.buffer("test.key", 3, np.int16)
    assert np.shares_memory(c, d)  # never shrunk
    assert not np.shares_memory(world.buffer("test.other", 3, np.int16), d)


def test_handle_reraises_with_the_operation_named():
    world = dcomm.init()
    dup = world.dup()
    try:
        def fail(_comm):
            raise KeyError("bucket 3")

        h = dup.submit("allreduce(bucket 3)", fail)
        assert h.done()
        with pytest.raises(KeyError, match=r"async allreduce\(bucket 3\) failed on rank 0: KeyError"):
            h.wait()
        assert dup.submit("ok", lambda comm: comm.size).wait() == 1
    finally:
        dup.close()
    with pytest.raises(RuntimeError, match="closed"):
        dup.submit("late", lambda comm: None)


def test_import_does_not_load_mpi_and_missing_mpi4py_is_explained():
    code = (
        "import sys\n"
        "import dtrain.distributed.comm as D, dtrain.distributed.collectives\n"
        "assert 'mpi4py.MPI' not in sys.modules, 'importing dtrain.distributed loaded MPI'\n"
        "sys.modules['mpi4py'] = None\n"  # as if mpi4py were not installed
        "try:\n"
        "    D.init()\n"
        "except RuntimeError as exc:\n"
        "    assert 'pip install mpi4py mpich' in str(exc), exc\n"
        "    print('hint ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "hint ok" in res.stdout, res.stdout + res.stderr


def test_allreduce_benchmark_runs_under_mpiexec(run_mpi, tmp_path):
    """benchmarks/allreduce.py in a 2-rank world, tiny sizes: the table and CSV get written (no timing checks)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "allreduce.py"
    run_mpi(script, 2, "--sizes", "4096,65536", "--repeats", "2", "--warmup", "1", "--no-diagnostics",
            "--out", tmp_path, timeout=120)
    md = (tmp_path / "allreduce.md").read_text()
    assert "### 2 ranks" in md and "| 64 KB | 16,384 |" in md and "ring/mpi busbw" in md
    rows = (tmp_path / "allreduce.csv").read_text().splitlines()
    assert rows[0].startswith("world_size,size_bytes") and len(rows) == 1 + 2 * 2
