"""Neighbours given by their IP follow the kernel's neighbour table, on real daemons in namespaces.

A router namespace with two links (to A and to B, each a namespace of its own), IPv4 with ARP on
and IPv6 as a router has it; A and B are configured by their ``ip`` alone, so the daemon learns
their MACs from the kernel (ARP). Link flaps and ``ip neigh flush`` delete the kernel's entries;
the kernel relearns them when the router speaks to the neighbour again. Every record of frames
from or to A and B must name A (10) or B (11), never "outside" (0).
"""
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

import fastpath
from beatd.control import request
from conftest import require_root, wait_for
from test_daemon import ROOT, SENDER, SLOW_S, mac_str, sh, shutdown_bound_s, udp_frame

NONE = fastpath.NONE
R_A, R_B = bytes.fromhex("02dd00000001"), bytes.fromhex("02dd00000002")    # the router's ports
NB_A, NB_B = bytes.fromhex("02dd0000000a"), bytes.fromhex("02dd0000000b")  # its neighbours
IP_RA, IP_A = "10.71.1.1", "10.71.1.2"
IP_RB, IP_B = "10.71.2.1", "10.71.2.2"


@pytest.fixture
def router():
    """(router ns, its port to A, its port to B, A ns, A ifname, B ns, B ifname), ARP on."""
    require_root()
    tag = uuid.uuid4().hex[:6]
    r_ns, a_ns, b_ns = f"btn-r-{tag}", f"btn-a-{tag}", f"btn-b-{tag}"
    r_a, r_b, a_if, b_if = f"btnra{tag}", f"btnrb{tag}", f"btna{tag}", f"btnb{tag}"
    made = []
    try:
        for ns in (r_ns, a_ns, b_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        for ri, rmac, rip, ns, pi, pmac, pip in ((r_a, R_A, IP_RA, a_ns, a_if, NB_A, IP_A),
                                                 (r_b, R_B, IP_RB, b_ns, b_if, NB_B, IP_B)):
            sh("ip", "link", "add", ri, "netns", r_ns, "address", mac_str(rmac), "type", "veth",
               "peer", "name", pi, "netns", ns, "address", mac_str(pmac))
            sh("ip", "-n", r_ns, "addr", "add", f"{rip}/24", "dev", ri)
            sh("ip", "-n", ns, "addr", "add", f"{pip}/24", "dev", pi)
            sh("ip", "-n", r_ns, "link", "set", ri, "up")
            sh("ip", "-n", ns, "link", "set", pi, "up")
        for ns in made:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield r_ns, r_a, r_b, a_ns, a_if, b_ns, b_if
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


POKE = r"""
import socket, sys
for ip in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"beat-poke", (ip, 9))
    s.close()
"""


def poke(ns, *ips):
    """The router sends a datagram to each IP: the kernel resolves (ARP) the ones it lacks."""
    sh("ip", "netns", "exec", ns, sys.executable, "-c", POKE, *ips)


def kernel_has(ns, ip, mac):
    out = subprocess.run(["ip", "-n", ns, "neigh", "show", ip], capture_output=True,
                         text=True).stdout
    return any(f"lladdr {mac_str(mac)}" in line and
               any(s in line for s in ("REACHABLE", "STALE", "DELAY", "PROBE"))
               for line in out.splitlines())


def send(ns, ifname, src, dst, first, n, tag):
    sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, ifname, src.hex(), dst.hex(),
       str(first), str(n), str(tag))


def ft_of(tag):
    """The FT of the SENDER's frames with this tag (10.77.tag.1 -> 10.78.0.2)."""
    return fastpath.pd_ft(udp_frame(NB_A, R_A, 0, tag), 1)[2].hex()


def config(store, sock, r_a, r_b, extra_daemon=""):
    return f"""
node_id = 1
own_macs = ["{mac_str(R_A)}", "{mac_str(R_B)}"]
interfaces = ["{r_a}", "{r_b}"]
[[neighbours]]
node_id = 10
ip = "{IP_A}"
[[neighbours]]
node_id = 11
ip = "{IP_B}"
[store]
path = "{store}"
ring_size = "16MiB"
map_size = "256MiB"
[capture]
workers = 1
block_size = "256KiB"
block_count = 4
[daemon]
commit_interval_ms = 20
metrics_listen = ""
control_socket = "{sock}"
log_format = "json"
neighbour_refresh = true
{extra_daemon}
[ledger]
backend = "none"
"""


class Daemon:
    """``beatd run`` in the router namespace."""

    def __init__(self, ns, cfg, sock):
        self.sock = str(sock)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "beatd",
                                      "run", "--config", str(cfg)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: self.proc.poll() is not None or self.status() is not None,
                 timeout=SLOW_S, what="the daemon's control socket")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def status(self):
        try:
            return request(self.sock)
        except Exception:  # noqa: BLE001
            return None

    def frames(self):
        return self.status()["totals"]["frames"]

    def stop(self):
        """SIGTERM; the exit code and the JSON log lines."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=shutdown_bound_s() + 20.0)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        return rc, err, [json.loads(x) for x in err.splitlines() if x.startswith("{")]


def dump_rows(cfg):
    r = subprocess.run([sys.executable, "-m", "beatd", "dump", "--config", str(cfg), "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()][:-1]


def test_ip_neighbours_stay_right_through_link_flaps_and_flushes(tmp_path, router):
    """A link flap (down/up) and `ip neigh flush` with neighbours given by their IP: the kernel
    relearns them (ARP) and the daemon follows; frames sent right after a flush, before the
    kernel relearns, still name the neighbour (its last known MAC is kept). Every tagged flow's
    records name the right neighbour, and no record is from outside."""
    r_ns, r_a, r_b, a_ns, a_if, b_ns, b_if = router
    poke(r_ns, IP_A, IP_B)
    wait_for(lambda: kernel_has(r_ns, IP_A, NB_A) and kernel_has(r_ns, IP_B, NB_B),
             timeout=SLOW_S, what="the kernel's ARP entries for A and B")
    store, sock, cfg = tmp_path / "store", tmp_path / "control.sock", tmp_path / "beatd.toml"
    cfg.write_text(config(store, sock, r_a, r_b))
    d = Daemon(r_ns, cfg, sock)
    want = {mac_str(NB_A): 10, mac_str(NB_B): 11}
    expect = {}                 # tag -> the (prev_id, next_id) of its records
    sent = 0

    def traffic(tags):
        nonlocal sent
        for tag, (ns, ifname, src, dst, ids) in tags.items():
            send(ns, ifname, src, dst, tag * 100, 5, tag)
            expect[tag] = ids
            sent += 5
        wait_for(lambda: d.frames() >= sent, timeout=SLOW_S, what=f"{sent} frames captured")

    def relearned():
        poke(r_ns, IP_A, IP_B)
        wait_for(lambda: kernel_has(r_ns, IP_A, NB_A) and kernel_has(r_ns, IP_B, NB_B),
                 timeout=SLOW_S, what="the kernel relearning A and B")
        wait_for(lambda: d.status()["neighbours"] == want, timeout=10.0,
                 what=lambda: f"the daemon's map after the kernel relearned A and B: "
                              f"{d.status()['neighbours']} (kernel: "
                              f"{d.status().get('neighbour_kernel')})")

    try:
        wait_for(lambda: d.status()["neighbours"] == want, timeout=SLOW_S,
                 what="A and B in the map at start")
        a_in, b_in = (a_ns, a_if, NB_A, R_A, (10, NONE)), (b_ns, b_if, NB_B, R_B, (11, NONE))
        a_out, b_out = (r_ns, r_a, R_A, NB_A, (NONE, 10)), (r_ns, r_b, R_B, NB_B, (NONE, 11))
        traffic({1: a_in, 2: b_in, 3: a_out, 4: b_out})

        # the link to A flaps: the kernel deletes its entries there, relearns them after
        sh("ip", "-n", r_ns, "link", "set", r_a, "down")
        sh("ip", "-n", r_ns, "link", "set", r_a, "up")
        relearned()
        traffic({5: a_in, 6: a_out, 7: b_in})

        # the whole table flushed: frames right after it, before any relearning
        sh("ip", "-n", r_ns, "neigh", "flush", "all")
        assert not kernel_has(r_ns, IP_A, NB_A)
        traffic({8: a_in, 9: b_out})
        relearned()
        traffic({10: a_in, 11: b_in, 12: a_out, 13: b_out})

        # both links flap at once, and a flush on top
        for ifname in (r_a, r_b):
            sh("ip", "-n", r_ns, "link", "set", ifname, "down")
        for ifname in (r_a, r_b):
            sh("ip", "-n", r_ns, "link", "set", ifname, "up")
        sh("ip", "-n", r_ns, "neigh", "flush", "all")
        relearned()
        traffic({14: a_in, 15: b_in, 16: a_out, 17: b_out})
        st = d.status()
        nk = st["neighbour_kernel"]
        assert {(x["node_id"], x["ip"], x["interface"], x["mac"]) for x in nk["learned"]} == {
            (10, IP_A, r_a, mac_str(NB_A)), (11, IP_B, r_b, mac_str(NB_B))}, nk
        assert nk["missing"] == [] and nk["mac_changes"] == 0 and nk["event_errors"] == 0, nk
    finally:
        rc, err, logs = d.stop()
    assert rc == 0, err
    learned = [x for x in logs if x["msg"].startswith("neighbour's MAC learned")]
    assert sorted((x["node_id"], x["mac"]) for x in learned) == [(10, mac_str(NB_A)),
                                                                 (11, mac_str(NB_B))]
    assert not [x for x in logs if "MAC changed" in x["msg"]]
    rows = dump_rows(cfg)
    got = {tag: sorted({(x["prev_id"], x["next_id"]) for x in rows if x["ft"] == ft_of(tag)})
           for tag in expect}
    assert got == {tag: [ids] for tag, ids in expect.items()}, got
    counts = {tag: sum(1 for x in rows if x["ft"] == ft_of(tag)) for tag in expect}
    assert counts == dict.fromkeys(expect, 5), counts
    # every frame into the router came from A or B (IPv4, ARP, IPv6 ND): none from outside
    outside = [x for x in rows if x["prev_id"] == 0]
    assert outside == [], outside[:5]
