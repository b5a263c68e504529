"""Contradictions in the neighbour configuration: refused at load (so at start and on a reload),
the message naming the entries; what is legitimate (one neighbour with two links) accepted."""
import subprocess
import sys

import pytest

from beatd import config as bconfig
from beatd.daemon import Daemon
from test_daemon import ROOT, config_text, stand_in_factory

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def load(neighbours, **top):
    return bconfig.from_dict({"node_id": 1, "interfaces": ["eth0", "eth1", "eth2"],
                              "own_macs": ["02:00:00:00:00:01"], **top,
                              "neighbours": neighbours})


@pytest.mark.parametrize("neighbours,msg", [
    # two neighbours, one MAC
    ([{"node_id": 2, "mac": A}, {"node_id": 3, "mac": A}],
     'neighbours[1].mac: "02:00:00:00:00:0a" is already neighbours[0].mac'),
    ([{"node_id": 2, "mac": A}, {"node_id": 3, "mac": A.upper().replace(":", "-")}],
     'neighbours[1].mac: "02-00-00-00-00-0A" is already neighbours[0].mac'),
    # MACs that are no single device's
    ([{"node_id": 2, "mac": "00:00:00:00:00:00"}],
     "neighbours[0].mac: 00:00:00:00:00:00 is the all-zero MAC"),
    ([{"node_id": 2, "mac": "ff:ff:ff:ff:ff:ff"}],
     "neighbours[0].mac: ff:ff:ff:ff:ff:ff is the broadcast MAC"),
    ([{"node_id": 2, "mac": A}, {"node_id": 3, "mac": "01:00:5e:00:00:01"}],
     "neighbours[1].mac: 01:00:5e:00:00:01 is a multicast (group) MAC"),
    ([{"node_id": 2, "mac": "33:33:00:00:00:01"}],
     "neighbours[0].mac: 33:33:00:00:00:01 is a multicast (group) MAC"),
    # IPs that are no single neighbour's
    ([{"node_id": 2, "ip": "224.0.0.5"}], 'neighbours[0].ip: "224.0.0.5" is a multicast address'),
    ([{"node_id": 2, "ip": "ff02::1"}], 'neighbours[0].ip: "ff02::1" is a multicast address'),
    ([{"node_id": 2, "ip": "0.0.0.0"}], 'neighbours[0].ip: "0.0.0.0" is an unspecified address'),
    ([{"node_id": 2, "ip": "::"}], 'neighbours[0].ip: "::" is an unspecified address'),
    ([{"node_id": 2, "ip": "127.0.0.1"}], 'neighbours[0].ip: "127.0.0.1" is a loopback address'),
    ([{"node_id": 2, "ip": "255.255.255.255"}],
     'neighbours[0].ip: "255.255.255.255" is the broadcast address'),
    # one node_id, two MACs, where the links would overlap
    ([{"node_id": 2, "mac": A}, {"node_id": 2, "mac": B}],
     "neighbours[1].node_id: 2 is already neighbours[0].node_id, and neighbours[0] has no "
     "interface"),
    ([{"node_id": 2, "mac": A, "interface": "eth0"}, {"node_id": 2, "mac": B}],
     "neighbours[1].node_id: 2 is already neighbours[0].node_id, and neighbours[1] has no "
     "interface"),
    ([{"node_id": 2, "mac": A, "interface": "eth0"},
      {"node_id": 3, "mac": C, "interface": "eth0"},
      {"node_id": 2, "mac": B, "interface": "eth0"}],
     'neighbours[2].node_id: 2 is already neighbours[0].node_id on the same interface "eth0"'),
    ([{"node_id": 2, "ip": "10.0.0.2", "interface": "eth1"},
      {"node_id": 2, "ip": "10.0.0.3", "interface": "eth1"}],
     'neighbours[1].node_id: 2 is already neighbours[0].node_id on the same interface "eth1"'),
    # the device itself
    ([{"node_id": 1, "mac": A}], "neighbours[0].node_id: 1 is this device's own node_id"),
    ([{"node_id": 2, "mac": "02:00:00:00:00:01"}],
     "neighbours[0].mac: 02:00:00:00:00:01 is one of own_macs"),
    # an interface that is not captured
    ([{"node_id": 2, "mac": A, "interface": "eth9"}],
     'neighbours[0].interface: "eth9" is not one of interfaces (eth0, eth1, eth2)'),
])
def test_contradictions_are_refused_naming_the_entries(neighbours, msg):
    with pytest.raises(bconfig.ConfigError) as e:
        load(neighbours)
    assert msg in str(e.value)


def test_one_neighbour_with_two_links_is_legitimate():
    """One node_id on two interfaces (a MAC per link, or an IP per link): the neighbour has two
    links to this device; each MAC names it on its own link only."""
    c = load([{"node_id": 2, "mac": A, "interface": "eth0"},
              {"node_id": 2, "mac": B, "interface": "eth1"},
              {"node_id": 2, "ip": "10.0.2.2", "interface": "eth2"},
              {"node_id": 3, "mac": C}])
    assert [(n.node_id, n.interface) for n in c.neighbours] == [
        (2, "eth0"), (2, "eth1"), (2, "eth2"), (3, None)]
    from beatd.neighbours import compute_map
    m = compute_map(c.neighbours, {"10.0.2.2": {"eth2": bytes.fromhex("02000000000d")}})
    assert m == {bytes.fromhex("02000000000a"): (2, ("eth0",)),
                 bytes.fromhex("02000000000b"): (2, ("eth1",)),
                 bytes.fromhex("02000000000d"): (2, ("eth2",)),
                 bytes.fromhex("02000000000c"): (3, None)}


def test_beatd_run_refuses_a_contradiction_at_start(tmp_path):
    """`beatd run` exits 2 naming the entries, before it opens anything."""
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(store, sock, metrics="") +
                   f'[[neighbours]]\nnode_id = 7\nmac = "{B}"\n')
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "neighbours[1].node_id: 7 is already neighbours[0].node_id" in r.stderr, r.stderr
    assert not store.exists()


def test_a_reload_refuses_a_contradiction_and_keeps_the_neighbours(tmp_path):
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, metrics=""))
    d = Daemon(bconfig.load(cfg_path), config_path=str(cfg_path),
               source_factory=stand_in_factory([]))
    d.start()
    try:
        before = d.neighbours.current()
        for extra, msg in ((f'[[neighbours]]\nnode_id = 8\nmac = "ff:ff:ff:ff:ff:ff"\n',
                            "neighbours[1].mac: ff:ff:ff:ff:ff:ff is the broadcast MAC"),
                           ('[[neighbours]]\nnode_id = 7\nmac = "02:00:00:00:00:0b"\n',
                            "neighbours[1].node_id: 7 is already neighbours[0].node_id")):
            cfg_path.write_text(config_text(store, sock, metrics="") + extra)
            result = d.reload()
            assert result["applied"] == [] and msg in result["error"], result
            assert d.neighbours.current() == before
    finally:
        d.shutdown()


def test_the_resync_interval():
    assert bconfig.from_dict({}).neighbour_resync_s == 30.0
    assert bconfig.from_dict({"daemon": {"neighbour_resync_s": 5}}).neighbour_resync_s == 5.0
    for bad, msg in ((0, "daemon.neighbour_resync_s: 0 must be more than 0"),
                     (0.01, "daemon.neighbour_resync_s: 0.01 is not in 0.1..86400 seconds"),
                     (10 ** 6, "daemon.neighbour_resync_s: 1000000 is not in 0.1..86400"),
                     ("30s", 'daemon.neighbour_resync_s: "30s" is not a number')):
        with pytest.raises(bconfig.ConfigError) as e:
            bconfig.from_dict({"daemon": {"neighbour_resync_s": bad}})
        assert msg in str(e.value)
    # a change needs a restart (the follower's interval is set at start)
    plan = bconfig.reload_plan(bconfig.from_dict({}),
                               bconfig.from_dict({"daemon": {"neighbour_resync_s": 5}}))
    assert plan.restart == ("daemon.neighbour_resync_s",) and plan.apply == ()
