"""The virtual cluster's life as root: up is idempotent, down is idempotent and finds a cluster whose state
file is lost, faults change the links (tc, ip, nftables), the byte counters count a job's traffic, the
launcher script maps node addresses to namespaces, and each rank sees its node's hostname."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from vcluster import SPARE, leftovers, needs_nft, needs_root, python, rank_env, tc_rate

from dtrain import cli
from dtrain.cluster import ClusterError, VirtualCluster, state_dir

pytestmark = needs_root


@pytest.fixture
def spare():
    """Builds nothing itself: takes cluster ht2 down after the test, whatever the test did with it."""
    yield SPARE
    VirtualCluster.teardown(SPARE)
    assert leftovers(SPARE) == []


def test_up_is_idempotent_and_down_twice_is_fine(spare):
    first = VirtualCluster.up(2, "1gbit", name=spare)
    first.set_rate(0, "100mbit")
    assert tc_rate("dtv-ht2-0") == "100Mbit"
    again = VirtualCluster.up(2, "1gbit", name=spare)  # the same cluster, rates set again
    assert again.subnet == first.subnet
    assert [(n.namespace, n.address, n.veth) for n in again.nodes] == [(n.namespace, n.address, n.veth)
                                                                        for n in first.nodes]
    assert [n.rate_bps for n in again.nodes] == [10**9, 10**9]
    assert tc_rate("dtv-ht2-0") == "1Gbit" and tc_rate("eth0", again.nodes[0].namespace) == "1Gbit"
    with pytest.raises(ClusterError) as err:
        VirtualCluster.up(3, "1gbit", name=spare)
    assert str(err.value) == ("virtual cluster 'ht2' is already up with 2 nodes, not 3: dtrain cluster down "
                              "--name ht2 first")
    assert len(leftovers(spare)) == 5  # 2 namespaces, 2 veths, the bridge: the refused up changed nothing
    again.down()
    assert leftovers(spare) == []
    again.down()
    VirtualCluster.teardown(spare)
    assert leftovers(spare) == []
    assert not (state_dir() / "ht2.json").exists() and not (state_dir() / "ht2-launcher.sh").exists()


def test_down_without_the_state_file_removes_everything_and_kills_the_processes(spare):
    cluster = VirtualCluster.up(2, "1gbit", name=spare)
    sleeper = subprocess.Popen(["ip", "netns", "exec", cluster.nodes[1].namespace, "sleep", "600"])
    (state_dir() / "ht2.json").unlink()
    with pytest.raises(ClusterError, match=r"^no virtual cluster 'ht2' is up \(no "):
        VirtualCluster.attach(spare)
    VirtualCluster.teardown(spare)
    assert sleeper.wait(timeout=10) != 0  # killed: deleting a namespace alone would leave it running
    assert leftovers(spare) == []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "dtrain-ht2-" not in names


def test_faults_change_the_node_and_its_link(cluster):
    node = cluster.fault(0, "rate", "200mbit")
    assert node.rate_bps == 2 * 10**8
    assert tc_rate("dtv-ht-0") == "200Mbit" and tc_rate("eth0", node.namespace) == "200Mbit"
    assert cluster.fault(0, "down").link_state == "down"
    assert "state DOWN" in subprocess.run(["ip", "link", "show", "dev", "dtv-ht-0"], capture_output=True,
                                          text=True).stdout
    assert VirtualCluster.attach("ht").nodes[0].down  # kept in the state file: other commands see it
    assert [row["link"] for row in cluster.status()] == ["down", "up"]
    assert cluster.fault(0, "up").link_state == "up"
    assert "state DOWN" not in subprocess.run(["ip", "link", "show", "dev", "dtv-ht-0"], capture_output=True,
                                              text=True).stdout
    assert cluster.status()[0]["rate"] == "200mbit"
    with pytest.raises(ValueError, match=r"^fault action 'unplug': expected down, drop, up or rate$"):
        cluster.fault(0, "unplug")
    with pytest.raises(ValueError, match=r"^fault 'rate' needs a rate, e.g. 250mbit$"):
        cluster.fault(0, "rate")
    with pytest.raises(ValueError, match=r"^node 2: cluster 'ht' has nodes 0 to 1$"):
        cluster.fault(2, "down")


@needs_nft
def test_drop_fault_is_an_nftables_table_in_the_node(cluster):
    def tables():
        return subprocess.run(["ip", "netns", "exec", cluster.nodes[1].namespace, "nft", "list", "tables"],
                              capture_output=True, text=True, check=True).stdout

    assert cluster.fault(1, "drop").link_state == "drop"
    assert "table inet dtrain_fault" in tables()
    cluster.fault(1, "up")
    assert "dtrain_fault" not in tables()


def test_launcher_maps_each_address_to_its_node_and_refuses_others(cluster):
    for node in cluster.nodes:
        out = subprocess.run([str(cluster.launcher_path), "-x", node.address, "hostname; ip -o -4 addr show eth0"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == node.hostname
        assert f"inet {node.address}/24" in out.stdout
    out = subprocess.run([str(cluster.launcher_path), "198.18.250.250", "hostname"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 255 and out.stdout == ""
    assert out.stderr == "dtrain cluster ht: no node has the address 198.18.250.250\n"


def test_ranks_see_their_node_and_counters_count_the_traffic(cluster, capsys):
    before = cluster.counters()
    done = cluster.run(4, python("allreduce.py", "ring", 4, 1), ppn=2, env=rank_env(), capture=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ranks = sorted(re.findall(r"^rank (\d) host (\S+) node (\d)/(\d) nodes (\d)$", done.stdout, flags=re.M))
    assert ranks == [("0", "ht-node0", "0", "2", "2"), ("1", "ht-node0", "1", "2", "2"),
                     ("2", "ht-node1", "0", "2", "2"), ("3", "ht-node1", "1", "2", "2")]
    after = cluster.counters()
    # The ring (block placement) sends 1.5 x 4 MiB over each of its two inter-node edges: rank 1 -> 2 and 3 -> 0.
    for node, ((to0, from0), (to1, from1)) in enumerate(zip(before, after)):
        assert to1 - to0 >= 6 * 2**20 and from1 - from0 >= 6 * 2**20, (node, before, after)
    assert cli.main(["cluster", "status", "--name", "ht", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["hostname"], r["rate"], r["link"]) for r in rows] == [("ht-node0", "10gbit", "up"),
                                                                      ("ht-node1", "10gbit", "up")]
    assert all(r["bytes_from_node"] >= a[1] for r, a in zip(rows, after))

