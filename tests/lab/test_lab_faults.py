"""Faults on a live router in the lab (root): malformed frames on a link are counted by reason and
change nothing else; SIGKILL and restart under traffic leave every store consistent."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, require_root
from test_lab import _arrived, _stats
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-f{os.getpid()}-"

# Frames injected from r1 onto its link to r2, each with the drop reason it must be counted under.
# (A frame shorter than the Ethernet header cannot be sent on a packet socket: the kernel refuses
# it, so the runt here is a VLAN tag cut short.)
BAD = [
    ("runt", lambda s, d: d + s + b"\x81\x00"),
    ("truncated", lambda s, d: d + s + b"\x08\x00" + bytes.fromhex("4500003c0001000040110000")),
    ("bad_ihl", lambda s, d: d + s + b"\x08\x00" + b"\x43" + bytes(45)),
    ("bad_length", lambda s, d: d + s + b"\x08\x00" + b"\x45\x00\x00\x0a" + bytes(42)),
    ("bad_version", lambda s, d: d + s + b"\x86\xdd" + b"\x45" + bytes(59)),
    ("vlan_depth", lambda s, d: d + s + b"\x81\x00\x00\x01" * 3 + b"\x08\x00" + bytes(46)),
    ("non_ip", lambda s, d: d + s + b"\x88\xb5" + bytes(46)),   # local experimental ethertype
]

_INJECT = r"""
import socket, sys
ifname = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
for line in sys.stdin.read().split():
    s.send(bytes.fromhex(line))
print("sent")
"""


@pytest.fixture
def lab(tmp_path):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path / "state"))
    ok, why = lb.daemon_available()
    assert ok, f"`beatd run` is not available: {why}"
    yield lb
    lb.down()


def _mac(lab, node, ifname):
    out = lab.net.run(node, ["cat", f"/sys/class/net/{ifname}/address"]).stdout
    return bytes.fromhex(out.strip().replace(":", ""))


def _store(lab, router):
    from beatd.config import load
    from beatd.store import Store

    cfg = load(lab.config_path(router))
    return Store(cfg.store_path, **{k: v for k, v in cfg.store_kwargs().items() if k != "path"})


def _records_by_pair(lab, router):
    return lab.pair_counts(lab.dump(router)["records"])


def test_malformed_frames_on_a_link_are_counted_and_change_nothing(lab):
    from beat_lab import traffic

    lab.up()
    r1_if, r2_if = lab.net.ifname("r1", "r2"), lab.net.ifname("r2", "r1")
    src, dst = _mac(lab, "r1", r1_if), _mac(lab, "r2", r2_if)
    frames = [make(src, dst) for _, make in BAD]
    argv = lab.net.exec_argv("r1", [sys.executable, "-c", _INJECT, r1_if])
    p = subprocess.run(argv, input="\n".join(f.hex() for f in frames), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    t = lab.topo
    n = 20
    known = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n)
    s0 = _stats(lab)
    assert traffic.send_packets(lab.net, "h1", known, gap_s=0.002) == n
    _arrived(lab, s0, n)
    assert all(v == 0 for v in lab.stop_daemons().values())

    stats = {}
    for router in ("r1", "r2"):
        with _store(lab, router) as store:
            stats[router] = store.stats()
            assert store.verify() == []
    for reason, _ in BAD:
        # r1 captures every injected frame as it leaves; r2 every one that its kernel delivers:
        # a VLAN header cut short is dropped by the receiving kernel while untagging, before any
        # packet socket sees it.
        assert stats["r1"].get(reason, 0) >= 1, f"r1 did not count the {reason} frame: {stats}"
        if reason != "runt":
            assert stats["r2"].get(reason, 0) >= 1, f"r2 did not count the {reason} frame"
    assert stats["r2"]["frames"] == stats["r2"]["ip"] + len(BAD) - 1
    # nothing else changed: every router holds exactly the known packets, with the right pairs
    want = {"r1": {(0, 2): n}, "r2": {(1, 3): n}, "r3": {(2, 0): n}, "r4": {}}
    for router, pairs in want.items():
        assert _records_by_pair(lab, router) == pairs, router


def test_sigkill_and_restart_under_traffic_leave_stores_consistent(lab):
    from beat_lab import traffic

    lab.up()
    rng = random.Random(os.getpid())
    load = traffic.send_load(lab.net, "h1", "h2", flows=200, count=10**6, seconds=8.0,
                             rate=20000.0, wait=False)
    kills = 0
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.2))
            proc = lab._procs["r2"]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            with _store(lab, "r2") as store:        # readable and consistent after every kill
                assert store.verify() == []
                made = store.stats().get("records", 0)
            lab.start_daemon("r2")
            lab.wait_capturing("r2")
    finally:
        sent = traffic.finish_load(load)
    assert kills == 3 and sent["sent"] > 1000
    # known packets after the last restart (the load may be over by then on a slow machine)
    t = lab.topo
    after = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), 20, sport=45000,
                                  tag=b"after-restarts")
    s_after = _stats(lab)
    assert traffic.send_packets(lab.net, "h1", after) == 20
    _arrived(lab, s_after, 20)
    assert all(v == 0 for v in lab.stop_daemons().values())
    for router in ("r1", "r2", "r3"):
        with _store(lab, router) as store:
            assert store.verify() == [], router
            counters = store.counters()
            total = sum(v[0] for v in counters.values())
            assert total == store.stats()["records"] > 0, router
    with _store(lab, "r2") as store:
        assert store.stats()["records"] > made   # the restarted daemon went on recording
    pds = {traffic.expected_pd(p).hex() for p in after}
    assert len({r["pd"] for r in lab.dump("r2")["records"] if r["pd"] in pds}) == 20


def test_a_ten_router_chain_from_the_same_file_format(tmp_path):
    """Other topologies come from the same file format, up to 10 routers: a chain h1 - r1 ... r10
    - h2, each router with its own beatd; every router records each known packet once, with its
    neighbours' node ids (0 at the edges) and t_ns increasing along the chain."""
    require_root()
    from beat_lab import traffic
    from beat_lab.lab import Lab

    n_routers = 10
    lines = ['[lab]', 'name = "chain"', 'subnet = "10.78.0.0/16"', 'site_base = 210',
             '[[hosts]]', 'name = "h1"', '[[hosts]]', 'name = "h2"']
    for i in range(1, n_routers + 1):
        lines += ['[[routers]]', f'name = "r{i}"', f'node_id = {100 + i}']
    chain = ["h1"] + [f"r{i}" for i in range(1, n_routers + 1)] + ["h2"]
    for a, b in zip(chain, chain[1:]):
        lines += ['[[links]]', f'a = "{a}"', f'b = "{b}"']
    lines += ['[path]', 'src = "h1"', 'dst = "h2"',
              'agreed = [' + ", ".join(f'"{r}"' for r in chain[1:-1]) + ']']
    topo = tmp_path / "chain.toml"
    topo.write_text("\n".join(lines) + "\n")
    lab = Lab(str(topo), prefix=f"beat-c{os.getpid()}-", state_root=str(tmp_path / "state"))
    try:
        lab.up(timeout=120)
        t = lab.topo
        n = 10
        known = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n)
        s0 = _stats(lab)
        assert traffic.send_packets(lab.net, "h1", known, gap_s=0.005) == n
        _arrived(lab, s0, n, ifname=lab.net.ifname("h2", f"r{n_routers}"))
        assert all(v == 0 for v in lab.stop_daemons().values())
        pds = {traffic.expected_pd(p).hex() for p in known}
        times = {}
        for i in range(1, n_routers + 1):
            prev = 0 if i == 1 else 100 + i - 1
            nxt = 0 if i == n_routers else 100 + i + 1
            recs = [r for r in lab.dump(f"r{i}")["records"] if r["pd"] in pds]
            assert lab.pair_counts(recs) == {(prev, nxt): n}, f"r{i}"
            times[i] = {r["pd"]: r["t_ns"] for r in recs}
        for pd in pds:
            ts = [times[i][pd] for i in range(1, n_routers + 1)]
            assert ts == sorted(ts) and len(set(ts)) == n_routers, ts
    finally:
        lab.down()
