"""dtrain.env: the launcher's variables, DTRAIN_* variables, BLAS thread variables, usable cores, CPU model."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain import env
from dtrain.env import LaunchInfo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("environ, expected", [
    ({}, LaunchInfo(None, 0, 1, 0, 1)),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_RANK": "3"}, LaunchInfo("openmpi", 3, 4, 1, 2)),
    ({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "1"},
     LaunchInfo("hydra", 2, 3, 0, 1)),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, LaunchInfo("hydra", 1, 2, 0, None)),
    ({"HYDI_CONTROL_FD": "7"}, LaunchInfo("hydra", 0, None, 0, None)),
    ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
      "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}, LaunchInfo("slurm", 5, 8, 1, 4)),
    ({"SLURM_PROCID": "6", "SLURM_STEP_NUM_TASKS": "7", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
      "SLURM_STEP_TASKS_PER_NODE": "3(x2),1"}, LaunchInfo("slurm", 6, 7, 0, 1)),
    # A batch script (sbatch) exports SLURM_PROCID but is one process: no step, no launch.
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, LaunchInfo(None, 0, 1, 0, 1)),
    # srun --mpi=pmix: PMIx gives the rank, Slurm the sizes; Slurm is read first.
    ({"PMIX_RANK": "1", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1"},
     LaunchInfo("slurm", 1, 2, 1, None)),
    ({"PMIX_RANK": "2"}, LaunchInfo("pmix", 2, None, 0, None)),
])
def test_launch_info(environ, expected):
    assert env.launch_info(environ) == expected
    assert env.launched_by_mpi(environ) is (expected.launcher is not None)
    assert env.launcher_rank(environ) == (None if expected.launcher is None else expected.rank)
    assert env.world_rank(environ) == expected.rank and env.local_rank(environ) == expected.local_rank


def test_launch_info_reads_os_environ(monkeypatch):
    for var in env.LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert env.launch_info() == LaunchInfo(None, 0, 1, 0, 1) and env.world_size() == 1
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert env.launch_info() == LaunchInfo("hydra", 1, 2, 0, None) and env.world_size() == 2


@pytest.mark.parametrize("environ, message", [
    ({"PMI_RANK": "x", "PMI_SIZE": "2"}, "environment variable PMI_RANK must be a non-negative integer, got 'x'"),
    ({"PMI_RANK": "0", "PMI_SIZE": "0"}, "environment variable PMI_SIZE must be an integer >= 1, got '0'"),
    ({"OMPI_COMM_WORLD_RANK": "4", "OMPI_COMM_WORLD_SIZE": "4"},
     "environment variable OMPI_COMM_WORLD_RANK=4 is outside the world of 4 (OMPI_COMM_WORLD_SIZE)"),
])
def test_launch_info_errors(environ, message):
    with pytest.raises(ValueError) as info:
        env.launch_info(environ)
    assert str(info.value) == message


def test_world_size_unknown_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^the pmix launcher does not announce the world size in the environment; "
                                         r"give it explicitly \(e.g. num_replicas=\)$"):
        env.world_size({"PMIX_RANK": "0"})


def test_launcher_variables_cover_every_launcher():
    for var in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID",
                "MPI_LOCALRANKID", "HYDI_CONTROL_FD"):
        assert var in env.LAUNCHER_VARIABLES
    assert len(set(env.LAUNCHER_VARIABLES)) == len(env.LAUNCHER_VARIABLES)


@pytest.mark.parametrize("text, expected", [("", None), ("  ", None), ("2", 2), (" 4 ", 4)])
def test_ranks_per_node_override(text, expected):
    assert env.ranks_per_node_override({"DTRAIN_RANKS_PER_NODE": text}) == expected
    assert env.ranks_per_node_override({}) is None


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_ranks_per_node_override_errors(text):
    with pytest.raises(ValueError) as info:
        env.ranks_per_node_override({"DTRAIN_RANKS_PER_NODE": text})
    assert str(info.value) == f"environment variable DTRAIN_RANKS_PER_NODE must be a positive integer, got {text!r}"


def test_timeout_from_env():
    assert env.timeout_from_env(300.0, {}) == 300.0
    assert env.timeout_from_env(300.0, {"DTRAIN_TIMEOUT": " "}) == 300.0
    assert env.timeout_from_env(300.0, {"DTRAIN_TIMEOUT": "12.5"}) == 12.5
    assert env.timeout_from_env(300.0, {"DTRAIN_TIMEOUT": "0"}) == 0.0
    with pytest.raises(ValueError, match=r"^environment variable DTRAIN_TIMEOUT must be a number of seconds, "
                                         r"got 'soon'$"):
        env.timeout_from_env(300.0, {"DTRAIN_TIMEOUT": "soon"})
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match=rf"^environment variable DTRAIN_TIMEOUT must be >= 0 seconds, "
                                             rf"got '{bad}'$"):
            env.timeout_from_env(300.0, {"DTRAIN_TIMEOUT": bad})


def test_thread_env():
    assert env.THREAD_VARIABLES == ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
    assert env.thread_env(2, {"PATH": "/bin", "OMP_NUM_THREADS": "8"}) == {
        "PATH": "/bin", **dict.fromkeys(env.THREAD_VARIABLES, "2")}
    full = env.thread_env()
    assert all(full[v] == "1" for v in env.THREAD_VARIABLES) and full.get("PATH") == os.environ.get("PATH")
    for bad in (0, True, 1.0, "1"):
        with pytest.raises(ValueError, match=rf"^threads must be a positive integer, got {re.escape(repr(bad))}$"):
            env.thread_env(bad)


def test_set_thread_env(monkeypatch):
    for var in env.THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    env.set_thread_env(1)
    assert {v: os.environ[v] for v in env.THREAD_VARIABLES} == {**dict.fromkeys(env.THREAD_VARIABLES, "1"),
                                                                 "MKL_NUM_THREADS": "4"}
    env.set_thread_env(3, override=True)
    assert all(os.environ[v] == "3" for v in env.THREAD_VARIABLES)


def test_usable_cores_is_the_affinity_mask_without_a_quota(tmp_path):
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert env.usable_cores(tmp_path) == expected >= 1


@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1),
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one rank
    ({"cpu.max": "100000000 100000\n"}, None),  # 1000 CPUs: the affinity mask is smaller
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
])
def test_usable_cores_respects_the_cgroup_quota(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    mask = env.usable_cores(tmp_path / "nothing-here")
    assert env.usable_cores(tmp_path) == (mask if limit is None else min(mask, limit))


def test_cpu_model():
    model = env.cpu_model()
    assert isinstance(model, str) and model and model == model.strip()


def test_dockerfiles_set_every_thread_variable():
    """The images set the one list (k8s MPIJobs rely on the image for it)."""
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text()
        for var in env.THREAD_VARIABLES:
            assert re.search(rf"\b{var}=1\b", text), f"docker/{name} does not set {var}=1"


def test_env_imports_nothing_from_dtrain():
    """env and spec sit at the bottom of the dependency graph: stdlib only."""
    for module in ("env.py", "spec.py"):
        text = (REPO / "dtrain" / module).read_text()
        imports = re.findall(r"^(?:from|import) (\S+)", text, flags=re.MULTILINE)
        assert not [m for m in imports if m.startswith((".", "dtrain", "numpy"))], (module, imports)


def _allocator_after_import(extra_env: dict) -> dict:
    code = "import json, dtrain; print(json.dumps(dtrain.env.allocator_settings()))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "DTRAIN_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", code], env={**environ, **extra_env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings apply to glibc only")
def test_importing_dtrain_makes_glibc_keep_freed_memory_unless_told_not_to():
    assert _allocator_after_import({}) == {"M_MMAP_THRESHOLD": 64 << 20, "M_TRIM_THRESHOLD": 256 << 20}
    assert _allocator_after_import({"DTRAIN_MALLOC": "system"}) == {}
    assert _allocator_after_import({"MALLOC_TRIM_THRESHOLD_": "1000000"}) == {}  # the user's own setting wins
