"""The virtual cluster's pure parts and its refusals, with no root needed: rates, rank placement, the
mpiexec command line, which launcher it is (MPICH, Open MPI 4 or 5, else a refusal), the non-root refusal,
and `dtrain cluster`'s one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from vcluster import REPO, fake_cluster, fake_mpiexec

from dtrain import cli
from dtrain.cluster import (
    ClusterError,
    VirtualCluster,
    format_rate,
    job_command,
    launcher,
    net,
    parse_rate,
    placement,
)

RATE_UNITS = "bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps"


@pytest.mark.parametrize("text, bits", [("1gbit", 10**9), ("500mbit", 5 * 10**8), ("2.5gbit", 25 * 10**8),
                                        ("100mbps", 8 * 10**8), (" 1GBit ", 10**9), ("100kbit", 10**5),
                                        ("1tbit", 10**12), ("250000000bit", 25 * 10**7)])
def test_parse_rate(text, bits):
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["fast", "", "1", "gbit", "-1gbit", "1 furlong", "1e9bit", "1,5gbit"])
def test_parse_rate_refuses_what_is_not_a_rate(text):
    with pytest.raises(ValueError) as err:
        parse_rate(text)
    assert str(err.value) == f"link rate {text!r}: expected a number and a unit ({RATE_UNITS}), e.g. 1gbit"


@pytest.mark.parametrize("text", ["10bit", "99kbit", "2tbit"])
def test_parse_rate_refuses_rates_out_of_range(text):
    with pytest.raises(ValueError) as err:
        parse_rate(text)
    assert str(err.value) == f"link rate {text!r}: expected between 100kbit and 1tbit"


@pytest.mark.parametrize("bits, text", [(10**9, "1gbit"), (25 * 10**7, "250mbit"), (25 * 10**8, "2.5gbit"),
                                        (1500, "1.5kbit"), (999, "999bit"), (10**5, "100kbit")])
def test_format_rate_is_the_shortest_form_and_parses_back(bits, text):
    assert format_rate(bits) == text
    if bits >= 10**5:
        assert parse_rate(text) == bits


def test_placement_puts_consecutive_ranks_on_each_node():
    c = fake_cluster(3)
    a = [n.address for n in c.nodes]
    assert placement(c, 6) == [(a[0], 2), (a[1], 2), (a[2], 2)]
    assert placement(c, 4) == [(a[0], 2), (a[1], 2)]  # ceil(4 / 3) per node: the last node unused
    assert placement(c, 5, ppn=2) == [(a[0], 2), (a[1], 2), (a[2], 1)]
    assert placement(c, 3, ppn=3) == [(a[0], 3)]
    assert placement(c, 2, ppn=1) == [(a[0], 1), (a[1], 1)]


@pytest.mark.parametrize("n, ppn, message", [
    (5, 2, "-n 5 ranks do not fit on 2 nodes at --ppn 2 (at most 4)"),
    (3, 1, "-n 3 ranks do not fit on 2 nodes at --ppn 1 (at most 2)"),
    (4, 0, "--ppn 0: expected a positive number of ranks per node"),
    (4, -1, "--ppn -1: expected a positive number of ranks per node"),
    (4, 1.5, "--ppn 1.5: expected a positive number of ranks per node"),
    (0, None, "-n 0: expected a positive number of ranks"),
    (True, None, "-n True: expected a positive number of ranks"),
])
def test_placement_errors(n, ppn, message):
    with pytest.raises(ValueError) as err:
        placement(fake_cluster(2), n, ppn)
    assert str(err.value) == message


@pytest.mark.parametrize("order, hosts", [("block", "198.18.7.10:2,198.18.7.11:2"),
                                          ("cyclic", "198.18.7.10:1,198.18.7.11:1")])
def test_job_command_starts_ranks_in_the_nodes_through_the_launcher(tmp_path, monkeypatch, order, hosts):
    monkeypatch.setenv("DTRAIN_CLUSTER_STATE", str(tmp_path / "state"))
    exe = fake_mpiexec(tmp_path, "HYDRA build details:")
    c = fake_cluster(2)
    cmd = job_command(c, 4, ["dtrain", "train", "--epochs", "1"], ppn=2, mpiexec=exe, order=order)
    assert cmd == [exe, "-launcher", "ssh", "-launcher-exec", str(tmp_path / "state" / "ht-launcher.sh"),
                   "-localhost", "198.18.7.1", "-hosts", hosts, "-n", "4", "dtrain", "train", "--epochs", "1"]


def test_job_command_errors(tmp_path):
    exe = fake_mpiexec(tmp_path, "HYDRA build details:")
    c = fake_cluster(2)
    with pytest.raises(ValueError) as err:
        job_command(c, 4, ["true"], mpiexec=exe, order="random")
    assert str(err.value) == "placement 'random': expected one of block, cyclic"
    with pytest.raises(ValueError) as err:
        job_command(c, 4, [], mpiexec=exe)
    assert str(err.value) == "no command to run: give it after --, e.g. -- dtrain train --epochs 1"
    with pytest.raises(ValueError, match=r"^-n 9 ranks do not fit on 2 nodes at --ppn 2 \(at most 4\)$"):
        job_command(c, 9, ["true"], ppn=2, mpiexec=exe)


@pytest.mark.parametrize("version, flavour", [("HYDRA build details:", "mpich"),
                                              ("mpiexec (Open MPI) 5.0.3", "openmpi5"),
                                              ("mpiexec (OpenRTE) 4.1.6", "openmpi4")])
def test_check_mpiexec_tells_the_launchers_apart(tmp_path, version, flavour):
    """MPICH's Hydra and Open MPI 4 (ORTE) and 5 (PRRTE) each get their own command line
    (test_open_mpi.py checks Open MPI's)."""
    exe = fake_mpiexec(tmp_path, version)
    assert launcher.check_mpiexec(exe) == (exe, flavour)


def test_other_launchers_are_refused(tmp_path):
    exe = fake_mpiexec(tmp_path, "mpiexec (FooMPI) 1.0")
    with pytest.raises(ClusterError) as err:
        launcher.check_mpiexec(exe)
    assert str(err.value) == (f"{exe} is neither MPICH's mpiexec (Hydra) nor Open MPI's; `--version` said: "
                              "mpiexec (FooMPI) 1.0\n    Version:   4.2.0")
    with pytest.raises(ClusterError, match=r"^cannot run /nonexistent/mpiexec --version: "):
        launcher.check_mpiexec("/nonexistent/mpiexec")


NOT_ROOT = ("dtrain cluster needs root: network namespaces, veth links and tc shaping need CAP_NET_ADMIN "
            "(running as uid 1000)")


def test_not_root_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert net.support_problem() == NOT_ROOT
    with pytest.raises(ClusterError) as err:
        VirtualCluster.up(2, name="ht")
    assert str(err.value) == NOT_ROOT
    with pytest.raises(ClusterError) as err:
        VirtualCluster.teardown("ht")
    assert str(err.value) == NOT_ROOT
    assert cli.main(["cluster", "up", "--nodes", "2", "--name", "ht"]) == 2
    assert capsys.readouterr().err == f"dtrain cluster up: error: {NOT_ROOT}\n"


@pytest.mark.parametrize("command", [["status"], ["run", "-n", "2", "--", "true"], ["fault", "--node", "0", "--down"]])
def test_commands_on_a_cluster_that_is_not_up(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setenv("DTRAIN_CLUSTER_STATE", str(tmp_path))
    assert cli.main(["cluster", command[0], "--name", "ht", *command[1:]]) == 2  # before run's "-- COMMAND"
    assert capsys.readouterr().err == (f"dtrain cluster {command[0]}: error: no virtual cluster 'ht' is up "
                                       f"(no {tmp_path}/ht.json): dtrain cluster up --nodes K\n")


def test_the_dtrain_command_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "DTRAIN_CLUSTER_STATE": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "dtrain", "cluster", "status", "--name", "ht"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"dtrain cluster status: error: no virtual cluster 'ht' is up (no {tmp_path}/ht.json): "
                          "dtrain cluster up --nodes K\n")


@pytest.mark.parametrize("name", ["BAD", "1ht", "toolong7", "h-t", ""])
def test_bad_name(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setenv("DTRAIN_CLUSTER_STATE", str(tmp_path))
    assert cli.main(["cluster", "status", "--name", name]) == 2
    assert capsys.readouterr().err == (f"dtrain cluster status: error: cluster name {name!r}: expected 1-6 "
                                       "lowercase letters or digits, starting with a letter\n")


def test_bad_link_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys):
    """A bad --link is an argument error, whatever the machine: the check must come before any `ip` command
    (with support_problem() forced to None, a command that ran would fail with another message)."""
    monkeypatch.setenv("DTRAIN_CLUSTER_STATE", str(tmp_path))
    monkeypatch.setattr(net, "support_problem", lambda: None)
    monkeypatch.setattr(net, "run", lambda *a, **k: pytest.fail(f"a command ran: {a}"))
    assert cli.main(["cluster", "up", "--nodes", "2", "--link", "fast", "--name", "ht"]) == 2
    assert capsys.readouterr().err == (f"dtrain cluster up: error: link rate 'fast': expected a number and a unit "
                                       f"({RATE_UNITS}), e.g. 1gbit\n")
    assert cli.main(["cluster", "up", "--nodes", "2", "--link-of", "3=1gbit", "--name", "ht"]) == 2
    assert capsys.readouterr().err == ("dtrain cluster up: error: --link-of 3=1gbit: node 3 does not exist "
                                       "(nodes 0 to 1)\n")


@pytest.mark.parametrize("value, message", [
    ("5", "argument --link-of: expected NODE=RATE (e.g. 3=250mbit), got '5'"),
    ("x=1gbit", "argument --link-of: expected NODE=RATE (e.g. 3=250mbit), got 'x=1gbit'"),
    ("1=zz", f"argument --link-of: link rate 'zz': expected a number and a unit ({RATE_UNITS}), e.g. 1gbit"),
])
def test_bad_link_of(capsys, value, message):
    assert cli.main(["cluster", "up", "--nodes", "2", "--link-of", value, "--name", "ht"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"dtrain cluster up: error: {message}\n"), err
