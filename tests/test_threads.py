"""dtrain.threads: how many BLAS/OpenMP threads a process of a job computes with, and how it is applied.

The decision (choose_threads) is tested with explicit environments and core counts; applying it
(configure_threads) is tested in this process, undone after each test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dtrain import env
from dtrain.threads import ThreadChoice, choose_threads, configure_threads, library_threads, reset_threads
from dtrain.train.config import ConfigError, resolve_config

HINT = "OMP_NUM_THREADS or --threads to override"
HYDRA_4 = {"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"}
OPENMPI_8_ON_2_NODES = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                        "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}


@pytest.fixture
def clean_process(monkeypatch):
    """No thread or launcher variables in os.environ, and whatever configure_threads applied undone after."""
    reset_threads()  # first: an earlier in-process run may have applied (and saved) the suite's variables
    for var in env.THREAD_VARIABLES + env.LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    yield
    reset_threads()


# --- the decision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("environ, cores, expected, reason", [
    (HYDRA_4, 8, 2, "8 usable cores / 4 ranks on this node"),
    (HYDRA_4, 2, 1, "2 usable cores / 4 ranks on this node"),  # at least 1
    (HYDRA_4, 11, 2, "11 usable cores / 4 ranks on this node"),  # rounded down
    (OPENMPI_8_ON_2_NODES, 16, 4, "16 usable cores / 4 ranks on this node"),  # the node's ranks, not the world's
    ({**HYDRA_4, "MPI_LOCALNRANKS": "1"}, 1, 1, "1 usable core / 1 rank on this node"),
])
def test_under_a_launcher_the_cores_are_divided_by_the_ranks_on_this_node(environ, cores, expected, reason):
    assert choose_threads(environ=environ, cores=cores) == ThreadChoice(
        expected, expected, True, f"{reason}; set by dtrain; {HINT}", "dtrain")


def test_launcher_without_a_local_size_counts_the_whole_world():
    # srun inside a step without SLURM_STEP_TASKS_PER_NODE: 3 ranks, maybe all here; never more threads than cores.
    choice = choose_threads(environ={"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "3"}, cores=8)
    assert choice == ThreadChoice(2, 2, True, "8 usable cores / 3 ranks in the world (the slurm launcher does not "
                                  f"say how many share this node, so all are counted); set by dtrain; {HINT}", "dtrain")
    assert choice.message == ("BLAS threads: 2 per rank (8 usable cores / 3 ranks in the world (the slurm launcher "
                              "does not say how many share this node, so all are counted); set by dtrain; "
                              f"{HINT})")


def test_launcher_that_says_neither_local_nor_world_size_gets_one_thread():
    assert choose_threads(environ={"PMIX_RANK": "2"}, cores=64) == ThreadChoice(
        1, 1, True, "the pmix launcher says neither how many ranks share this node nor the world size; set by "
        f"dtrain; {HINT}", "dtrain")


def test_the_message_names_the_count_the_cores_and_the_ranks():
    assert choose_threads(environ=HYDRA_4, cores=2).message == (
        "BLAS threads: 1 per rank (2 usable cores / 4 ranks on this node; set by dtrain; OMP_NUM_THREADS or "
        "--threads to override)")


def test_threads_option_wins_over_the_environment_and_the_launcher():
    environ = {**HYDRA_4, "OMP_NUM_THREADS": "1"}
    assert choose_threads(3, environ=environ, cores=8) == ThreadChoice(3, 3, True, "set by --threads 3", "--threads")
    assert choose_threads(3, environ={}, cores=1).message == "BLAS threads: 3 (set by --threads 3)"


def test_threads_zero_leaves_the_libraries_alone():
    assert choose_threads(0, environ=HYDRA_4, cores=2, library_threads=2) == ThreadChoice(
        None, 2, True, "--threads 0: dtrain leaves the libraries' thread pools as they are", "--threads")


def test_a_thread_variable_wins_over_the_division():
    choice = choose_threads(environ={**HYDRA_4, "OMP_NUM_THREADS": "2"}, cores=64)
    assert choice == ThreadChoice(2, 2, True, "OMP_NUM_THREADS=2 set by the launcher or the user; --threads to "
                                  "override", "environment")
    # dtrain launch sets all six
    launched = choose_threads(environ={**HYDRA_4, **env.thread_env(1, {})}, cores=64)
    assert launched.message == ("BLAS threads: 1 per rank (OMP_NUM_THREADS=1 and 5 more thread variables set by the "
                                "launcher or the user; --threads to override)")
    # MKL_NUM_THREADS=1 alone does not reach OpenBLAS: dtrain applies the one count the user gave to every pool
    assert choose_threads(environ={"MKL_NUM_THREADS": "1"}, cores=8).limit == 1


def test_different_counts_per_library_are_left_as_set():
    choice = choose_threads(environ={"OPENBLAS_NUM_THREADS": "4", "OMP_NUM_THREADS": "2"}, cores=8)
    assert choice == ThreadChoice(None, None, False, "OMP_NUM_THREADS=2, OPENBLAS_NUM_THREADS=4 set by the launcher "
                                  "or the user; dtrain leaves them; --threads to override", "environment")
    assert choice.message.startswith("BLAS threads: as set per library (OMP_NUM_THREADS=2, ")


def test_one_process_keeps_the_library_default_unless_it_is_wider_than_the_cores():
    assert choose_threads(environ={}, cores=4, library_threads=4) == ThreadChoice(
        None, 4, False, f"one process, not launched by MPI: the library's own default, 4 usable cores; {HINT}",
        "library")
    # a container with a 2-CPU quota on a 64-core host: OpenBLAS sees 64
    assert choose_threads(environ={}, cores=2, library_threads=64) == ThreadChoice(
        2, 2, False, f"the library default of 64 is more than the 2 usable cores; set by dtrain; {HINT}", "dtrain")
    assert choose_threads(environ={}, cores=2).message == (
        f"BLAS threads: the library default (one process, not launched by MPI: the library's own default, 2 usable "
        f"cores; {HINT})")


@pytest.mark.parametrize("requested", [-1, 1.5, True, "2"])
def test_bad_threads_option(requested):
    with pytest.raises(ValueError) as info:
        choose_threads(requested, environ={}, cores=2)
    assert str(info.value) == ("--threads must be a non-negative integer (0: leave the libraries' defaults), "
                               f"got {requested!r}")


@pytest.mark.parametrize("value", ["0", "abc", "-2", "2.5", "4,x"])
def test_bad_thread_variable(value):
    with pytest.raises(ValueError) as info:
        choose_threads(environ={"OPENBLAS_NUM_THREADS": value}, cores=2)
    assert str(info.value) == ("environment variable OPENBLAS_NUM_THREADS must be a positive integer (or an OpenMP "
                               f"list such as 4,2), got {value!r}")


def test_thread_settings_reads_every_variable_in_order():
    environ = {"MKL_NUM_THREADS": " 3 ", "OMP_NUM_THREADS": "4,2", "BLIS_NUM_THREADS": "", "PATH": "/bin"}
    assert env.thread_settings(environ) == {"OMP_NUM_THREADS": 4, "MKL_NUM_THREADS": 3}
    assert list(env.thread_settings(environ)) == ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]
    assert env.thread_settings({}) == {}


# --- applying it --------------------------------------------------------------------------------------


def test_configure_threads_limits_the_loaded_pools_and_sets_the_variables(clean_process):
    original = library_threads()
    if original is None:
        pytest.skip("no BLAS/OpenMP pool that threadpoolctl can see")
    target = 2 if original == 1 else 1
    choice = configure_threads(target)
    assert choice == ThreadChoice(target, target, False, f"set by --threads {target}", "--threads")
    assert library_threads() == target
    assert {v: os.environ[v] for v in env.THREAD_VARIABLES} == dict.fromkeys(env.THREAD_VARIABLES, str(target))
    assert configure_threads(target) is choice  # once per process: its own variables do not change the story
    reset_threads()
    assert library_threads() == original
    assert not [v for v in env.THREAD_VARIABLES if v in os.environ]


def test_configure_threads_with_another_request_undoes_the_first(clean_process):
    if library_threads() is None:
        pytest.skip("no BLAS/OpenMP pool that threadpoolctl can see")
    configure_threads(1)
    second = configure_threads(0)  # leave the libraries alone: back to their own default
    assert second.limit is None and second.by == "--threads"
    assert not [v for v in env.THREAD_VARIABLES if v in os.environ]


def test_user_variables_are_kept_when_applied(clean_process, monkeypatch):
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    choice = configure_threads(None)
    assert choice.limit == 1 and choice.by == "environment"
    assert os.environ["MKL_NUM_THREADS"] == "1" and os.environ["OMP_NUM_THREADS"] == "1"  # the unset ones follow
    reset_threads()
    assert os.environ["MKL_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in os.environ


def test_without_threadpoolctl_only_the_variables_are_set_and_the_message_says_so(clean_process, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # `import threadpoolctl` raises ImportError
    choice = configure_threads(3)
    assert choice.note == ("threadpoolctl is not installed: the thread variables are set to 3 for libraries loaded "
                           "from now on, but NumPy's BLAS was already loaded with its default; pip install "
                           "threadpoolctl, or set OMP_NUM_THREADS=3 before starting")
    assert choice.message == f"BLAS threads: 3 (set by --threads 3); {choice.note}"
    assert all(os.environ[v] == "3" for v in env.THREAD_VARIABLES)
    assert library_threads() is None


# --- the option, the log and dtrain info ----------------------------------------------------------------


def test_threads_option_from_toml_and_flag(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text("threads = 2\n")
    assert resolve_config({}, str(toml))["threads"] == 2
    assert resolve_config({"threads": 1}, str(toml))["threads"] == 1
    assert resolve_config({})["threads"] is None
    with pytest.raises(ConfigError) as info:
        resolve_config({"threads": -1})
    assert str(info.value) == "--threads must be >= 0, got -1"


def test_first_log_line_of_train_reports_the_threads(clean_process, capsys):
    from dtrain.cli import main

    assert main(["train", "--epochs", "1", "--threads", "1", "--no-progress", "--no-monitor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "BLAS threads: 1 (set by --threads 1)"
    assert lines[1].startswith("dtrain: mlp ")


def test_info_reports_what_train_would_choose():
    environ = env.thread_env(3)
    res = subprocess.run([sys.executable, "-m", "dtrain", "info"], capture_output=True, text=True, timeout=120,
                         env=environ)
    assert res.returncode == 0, res.stderr
    assert ("BLAS threads: 3 (OMP_NUM_THREADS=3 and 5 more thread variables set by the launcher or the user; "
            "--threads to override) [as dtrain train would choose]") in res.stdout.splitlines()
    assert any(line.startswith("thread pools (threadpoolctl ") for line in res.stdout.splitlines())
