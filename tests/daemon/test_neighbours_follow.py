"""The neighbour follower (beatd.neighbours.NeighbourMap) and its netlink reader
(beatd.neigh_netlink): the messages parsed by hand-built bytes; as root, the follower in a
namespace of its own, losing events (a dropped event, an overrun of its socket) and healing."""
import json
import os
import socket
import struct
import subprocess
import sys
import uuid

import pytest

from beatd import neigh_netlink as nl
from conftest import require_root
from test_daemon import ROOT, sh

# -- the messages, by hand ---------------------------------------------------------------------


def rtattr(t, data):
    return struct.pack("=HH", 4 + len(data), t) + data + b"\0" * (-len(data) % 4)


def neigh_msg(mtype, family, ifindex, state, dst=None, lladdr=None, flags=0):
    body = struct.pack("=BxxxiHBB", family, ifindex, state, 0, 1)
    if dst is not None:
        body += rtattr(nl.NDA_DST, socket.inet_pton(family, dst) if isinstance(dst, str)
                       else dst)
    if lladdr is not None:
        body += rtattr(nl.NDA_LLADDR, lladdr)
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, 0, 0) + body


MAC = bytes.fromhex("02aabbccdd01")


def test_parse_neighbour_messages():
    data = (neigh_msg(nl.RTM_NEWNEIGH, socket.AF_INET, 3, nl.NUD_REACHABLE, "10.0.0.2", MAC)
            + neigh_msg(nl.RTM_DELNEIGH, socket.AF_INET6, 4, nl.NUD_STALE, "fe80::1", MAC)
            + neigh_msg(nl.RTM_NEWNEIGH, socket.AF_INET, 3, nl.NUD_INCOMPLETE, "10.0.0.3")
            # a bridge FDB entry: no IP, left out
            + neigh_msg(nl.RTM_NEWNEIGH, socket.AF_BRIDGE, 3, nl.NUD_REACHABLE, None, MAC)
            + struct.pack("=IHHII", 20, nl.NLMSG_DONE, 0, 0, 0) + b"\0" * 4)
    got = nl.parse(data)
    assert got == [(False, "10.0.0.2", 3, nl.NUD_REACHABLE, MAC),
                   (True, "fe80::1", 4, nl.NUD_STALE, MAC),
                   (False, "10.0.0.3", 3, nl.NUD_INCOMPLETE, None), "done"]
    assert got[0].ip == "10.0.0.2" and got[1].deleted and got[2].lladdr is None
    # a dump the table changed under is marked, to be read again
    intr = struct.pack("=IHHII", 20, nl.NLMSG_DONE, nl.NLM_F_DUMP_INTR, 0, 0) + b"\0" * 4
    assert nl.parse(intr) == ["intr"]
    # an overrun and an error
    over = nl.parse(struct.pack("=IHHII", 16, nl.NLMSG_OVERRUN, 0, 0, 0))
    assert len(over) == 1 and isinstance(over[0], nl.Overrun)
    err = nl.parse(struct.pack("=IHHIIi", 20, nl.NLMSG_ERROR, 0, 0, 0, -1))
    assert isinstance(err[0], OSError) and err[0].errno == 1


def test_parse_survives_truncated_and_bogus_messages():
    good = neigh_msg(nl.RTM_NEWNEIGH, socket.AF_INET, 3, nl.NUD_REACHABLE, "10.0.0.2", MAC)
    for cut in range(len(good)):
        assert nl.parse(good[:cut]) == []       # a message cut short is no message
    # a length that runs past the datagram, an attribute of length 0, a 5-byte IPv4 NDA_DST
    assert nl.parse(struct.pack("=IHHII", 999, nl.RTM_NEWNEIGH, 0, 0, 0)) == []
    body = struct.pack("=BxxxiHBB", socket.AF_INET, 3, 2, 0, 1) + struct.pack("=HH", 0, 1)
    assert nl.parse(struct.pack("=IHHII", 16 + len(body), nl.RTM_NEWNEIGH, 0, 0, 0) + body) == []
    bad = neigh_msg(nl.RTM_NEWNEIGH, socket.AF_INET, 3, nl.NUD_REACHABLE, b"\1\2\3\4\5", MAC)
    assert nl.parse(bad) == []
    link = struct.pack("=BxHiII", 0, 1, 7, 0x1003, 0)
    assert nl.parse(struct.pack("=IHHII", 16 + len(link), nl.RTM_DELLINK, 0, 0, 0) + link) == [
        (True, 7, 0x1003)]


@pytest.mark.parametrize("state,deleted,mac,usable", [
    (nl.NUD_REACHABLE, False, MAC, True),
    (nl.NUD_STALE, False, MAC, True),
    (nl.NUD_DELAY, False, MAC, True),
    (nl.NUD_PROBE, False, MAC, True),
    (nl.NUD_PERMANENT, False, MAC, True),
    (nl.NUD_REACHABLE, True, MAC, False),           # deleted
    (nl.NUD_FAILED, False, MAC, False),
    (nl.NUD_INCOMPLETE, False, MAC, False),
    (nl.NUD_NOARP, False, MAC, False),              # the kernel's own lladdr (own MAC)
    (nl.NUD_PERMANENT | nl.NUD_NOARP, False, MAC, False),
    (0, False, MAC, False),                         # NUD_NONE
    (nl.NUD_REACHABLE, False, None, False),
    (nl.NUD_REACHABLE, False, bytes(6), False),     # zero
    (nl.NUD_REACHABLE, False, bytes.fromhex("333300000001"), False),   # multicast
    (nl.NUD_REACHABLE, False, b"\xff" * 6, False),  # broadcast
    (nl.NUD_REACHABLE, False, MAC[:4], False),      # not Ethernet
])
def test_usable_mac(state, deleted, mac, usable):
    e = nl.NeighEntry(deleted, "10.0.0.2", 3, state, mac)
    assert nl.usable_mac(e) == (mac if usable else None)


def test_state_names():
    assert nl.state_name(nl.NUD_REACHABLE) == "reachable"
    assert nl.state_name(0) == "none"
    assert nl.state_name(nl.NUD_PERMANENT | nl.NUD_NOARP) == "noarp|permanent"


# -- root: the follower in a namespace, losing events -------------------------------------------

@pytest.fixture
def netns():
    """A namespace with a dummy-free veth pair (its end: ifname), no ARP (entries by hand)."""
    require_root()
    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"btf-{tag}", f"btfa{tag}", f"btfb{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
        for i in (a, b):
            sh("ip", "-n", ns, "link", "set", i, "up")
        sh("ip", "-n", ns, "addr", "add", "10.250.0.1/16", "dev", a)
        yield ns, a
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_in(ns, script, *args, timeout=60):
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


LOST_EVENT = r"""
import json, subprocess, sys, time
from beatd.config import Neighbour
from beatd.neighbours import NeighbourMap
ifname = sys.argv[1]

class Losing(NeighbourMap):
    # loses the netlink events while `losing` is set: as if the kernel never sent them
    losing = False
    def _on_events(self, msgs):
        if not self.losing:
            super()._on_events(msgs)

def wait(pred, s=10.0):
    end = time.monotonic() + s
    while time.monotonic() < end and not pred():
        time.sleep(0.01)
    return pred()

m = Losing([Neighbour(9, None, "10.250.0.9")], True, resync_s=1.0)
m.start()
out = {"start": {k.hex(): v for k, v in m.current().items()}}
assert wait(lambda: m.resyncs >= 1)         # the next re-sync is about 1 s away
m.losing = True
subprocess.run(["ip", "neigh", "add", "10.250.0.9", "lladdr", "02:11:22:33:44:55", "dev",
                ifname, "nud", "permanent"], check=True)
time.sleep(0.2)
out["event_lost"] = {k.hex(): v for k, v in m.current().items()}
out["resyncs_then"] = m.resyncs
out["healed"] = wait(lambda: m.current() != {})
out["after"] = {k.hex(): v for k, v in m.current().items()}
out["resyncs"], out["repairs"] = m.resyncs, m.resync_repairs
m.stop()
print(json.dumps(out))
"""


def test_a_periodic_resync_heals_a_lost_event(netns):
    """A neighbour's entry appears while the follower loses the kernel's event: the map lacks it
    until the next re-sync (1 s here) reads the table and repairs it, counted as a repair."""
    ns, ifname = netns
    out = run_in(ns, LOST_EVENT, ifname)
    assert out["start"] == {}
    assert out["event_lost"] == {} and out["resyncs_then"] == 1, out
    assert out["healed"] and out["after"] == {"021122334455": 9}, out
    assert out["resyncs"] == 2 and out["repairs"] == 1, out


OVERRUN = r"""
import json, subprocess, sys, time
from beatd.config import Neighbour
from beatd.neighbours import NeighbourMap
ifname, n = sys.argv[1], int(sys.argv[2])

def wait(pred, s=20.0):
    end = time.monotonic() + s
    while time.monotonic() < end and not pred():
        time.sleep(0.01)
    return pred()

# no periodic re-sync within the test: only the overrun's own re-read can heal
m = NeighbourMap([Neighbour(9, None, "10.250.0.9")], True, resync_s=3600)
m.start()
batch = "".join(f"neigh add 10.250.{1 + i // 250}.{1 + i % 250} lladdr 02:00:00:00:{i >> 8:02x}:"
                f"{i & 255:02x} dev {ifname} nud permanent\n" for i in range(n))
batch += f"neigh add 10.250.0.9 lladdr 02:11:22:33:44:55 dev {ifname} nud permanent\n"
with m._lock:       # the follower blocks on its first event: the kernel's queue fills up
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
healed = wait(lambda: m.current() != {})
print(json.dumps({"healed": healed, "map": {k.hex(): v for k, v in m.current().items()},
                  "overruns": m.overruns, "errors": m.event_errors, "resyncs": m.resyncs}))
m.stop()
"""


def test_an_overrun_of_the_event_socket_reads_the_table_again(netns):
    """Thousands of neighbour events while the follower is busy: the kernel drops events for its
    socket (ENOBUFS), the neighbour's own among them (it comes last); the follower counts the
    overrun and reads the table again, and the map has the neighbour."""
    ns, ifname = netns
    out = run_in(ns, OVERRUN, ifname, "6000", timeout=120)
    assert out["overruns"] >= 1 and out["errors"] >= out["overruns"], out
    assert out["healed"] and out["map"] == {"021122334455": 9}, out
    assert out["resyncs"] == 0, out


# -- what each kernel entry teaches (the map's rules, without a kernel) -------------------------

IFX = 90001                     # an ifindex no interface has here: named "#90001"
MAC2 = bytes.fromhex("02aabbccdd02")
OWN_MAC = bytes.fromhex("02aabbccdd99")


def follower(neighbours, caplog=None, monkeypatch=None):
    from beatd.neighbours import NeighbourMap
    if caplog is not None:
        import logging
        monkeypatch.setattr(logging.getLogger("beatd"), "propagate", True)
        caplog.set_level(logging.INFO, logger="beatd")
    maps = []
    m = NeighbourMap(neighbours, refresh=False, on_change=maps.append, own_macs=(OWN_MAC,))
    m.start()               # no kernel: the configuration's map, published
    return m, maps


def entry(state, mac=MAC, deleted=False, ip="10.0.0.2", ifindex=IFX):
    return nl.NeighEntry(deleted, ip, ifindex, state, mac)


def test_a_learned_mac_is_kept_through_deletion_failure_and_incomplete():
    from beatd.config import Neighbour
    m, maps = follower([Neighbour(9, None, "10.0.0.2")])
    here = (9, (f"#{IFX}",))
    m._apply([entry(nl.NUD_REACHABLE)], "test")
    assert m.bindings() == {MAC: here}
    for e in (entry(nl.NUD_STALE, deleted=True), entry(nl.NUD_FAILED, None),
              entry(nl.NUD_INCOMPLETE, None), entry(0, MAC), entry(nl.NUD_NOARP, OWN_MAC)):
        assert not m._apply([e], "test")
        assert m.bindings() == {MAC: here}
    st = m.status()
    assert st["learned"] == [{"node_id": 9, "ip": "10.0.0.2", "interface": f"#{IFX}",
                              "mac": mac_str(MAC), "kernel": "gone: last known MAC kept",
                              "since": st["learned"][0]["since"]}]
    # a full table read without the entry: still kept
    assert not m._apply([], "test", full=True) and m.bindings() == {MAC: here}
    # the kernel learns another MAC for the IP: it replaces the kept one, counted
    assert m._apply([entry(nl.NUD_STALE, MAC2)], "test")
    assert m.bindings() == {MAC2: here} and m.mac_changes == 1
    assert m.status()["learned"][0]["kernel"] == "stale"
    assert [list(x) for x in maps] == [[], [MAC], [MAC2]]


def mac_str(mac):
    return ":".join(f"{b:02x}" for b in mac)


@pytest.mark.parametrize("e", [
    entry(nl.NUD_NOARP, OWN_MAC),                   # an interface without ARP: the own MAC
    entry(nl.NUD_NOARP, MAC),
    entry(nl.NUD_PERMANENT, OWN_MAC),               # one of own_macs, whatever the state
    entry(nl.NUD_REACHABLE, bytes.fromhex("01005e000001")),
    entry(nl.NUD_FAILED, MAC),
    entry(nl.NUD_INCOMPLETE, None),
    entry(nl.NUD_REACHABLE, MAC, ip="10.0.0.3"),    # another IP
])
def test_entries_that_teach_nothing(e):
    from beatd.config import Neighbour
    m, maps = follower([Neighbour(9, None, "10.0.0.2")])
    assert not m._apply([e], "test")
    assert m.bindings() == {} and m.status()["missing"] == [{"node_id": 9, "ip": "10.0.0.2"}]


def test_a_mac_change_is_logged_with_both_macs(caplog, monkeypatch):
    from beatd.config import Neighbour
    m, _ = follower([Neighbour(9, None, "10.0.0.2")], caplog, monkeypatch)
    m._apply([entry(nl.NUD_REACHABLE)], "test")
    m._apply([entry(nl.NUD_REACHABLE, MAC2)], "test")
    changed = [r for r in caplog.records if "MAC changed" in r.getMessage()]
    assert len(changed) == 1 and changed[0].fields["old_mac"] == mac_str(MAC) and \
        changed[0].fields["mac"] == mac_str(MAC2) and changed[0].fields["node_id"] == 9


def test_a_configured_mac_the_kernel_contradicts_is_logged_once_and_wins(caplog, monkeypatch):
    from beatd.config import Neighbour
    m, _ = follower([Neighbour(9, MAC, "10.0.0.2")], caplog, monkeypatch)
    for _ in range(3):
        m._apply([entry(nl.NUD_REACHABLE, MAC2)], "test")
    m._apply([entry(nl.NUD_REACHABLE, MAC)], "test")        # agrees: nothing to say
    said = [r for r in caplog.records if "contradicts" in r.getMessage()]
    assert len(said) == 1 and said[0].fields["kernel_mac"] == mac_str(MAC2) and \
        said[0].fields["neighbour"] == "neighbours[0]"
    assert m.bindings() == {MAC: (9, None)}


def test_a_deleted_interface_and_a_changed_entry_forget_the_learned_mac():
    from beatd.config import Neighbour
    n = Neighbour(9, None, "10.0.0.2")
    m, _ = follower([n, Neighbour(8, None, "10.0.0.8")])
    m._apply([entry(nl.NUD_REACHABLE), entry(nl.NUD_REACHABLE, MAC2, ip="10.0.0.8",
                                             ifindex=IFX + 1)], "test")
    assert set(m.current()) == {MAC, MAC2}
    m._forget_link(IFX + 1)
    assert m.current() == {MAC: 9}
    # the same entry again keeps it; a changed one (another node_id for that IP) forgets it
    m.set_config([n])
    assert m.current() == {MAC: 9}
    m.set_config([Neighbour(7, None, "10.0.0.2")])
    assert m.current() == {}
