"""The collective watchdog (deadline, stall warning naming late ranks) and the divergence guard, under a real
mpiexec. The kill-a-rank trials are in test_faults.py."""

from __future__ import annotations

from pathlib import Path

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_watchdog.py")


def test_stall_warning_names_the_late_rank_and_the_collective(run_mpi):
    res = run_mpi(SCRIPT, 3, "stall", timeout=120)
    for r in range(3):
        assert f"stall OK rank {r}" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if "dtrain: warning:" in line]
    assert warnings, res.stderr
    for line in warnings:
        assert "collective 'allreduce ring' (step 7)" in line, line
        assert "late: rank 2 is not in a collective; it last finished 'allreduce ring' (step 7)" in line, line
        assert "the job is aborted at 30 s (--timeout)" in line, line
    assert not any("[rank 2]" in line for line in warnings)


def test_a_hung_rank_gets_the_job_aborted_past_the_deadline(run_mpi):
    res = run_mpi(SCRIPT, 3, "hang", timeout=60, check=False)
    assert res.returncode != 0
    assert "completed without rank 1" not in res.stdout
    errors = [line for line in res.stderr.splitlines() if "dtrain: error:" in line]
    assert errors, res.stderr
    assert any("collective 'allreduce ring' (step 3) timed out after" in e and "(--timeout 2)" in e
               for e in errors), errors
    assert any("late: rank 1 is not in a collective; it last finished 'allreduce ring' (step 3)" in e
               for e in errors), errors
    assert any("aborting the job (MPI_Abort, exit status 3)" in e for e in errors), errors


def test_divergence_guard_names_the_ranks_and_the_first_differing_parameter(run_mpi):
    res = run_mpi(SCRIPT, 3, "divergence", timeout=120)
    for r in range(3):
        assert f"divergence OK rank {r}" in res.stdout


def test_missing_and_late_ranks_are_placed_on_their_hosts_when_the_job_spans_several():
    from dtrain.distributed.watchdog import _on_hosts

    hosts = ("n0", "n0", "n1", "n1")
    assert _on_hosts(hosts, [2, 3]) == " (every rank on host n1)"  # a dead node or its link
    assert _on_hosts(hosts, [3]) == " (rank 3 of host n1)"
    assert _on_hosts(hosts, [1, 2, 3]) == " (rank 1 of host n0; every rank on host n1)"
    assert _on_hosts(("n0",) * 4, [3]) == ""  # one host: nothing to add
    assert _on_hosts(None, [3]) == ""  # hosts unknown
