"""The live daemon (``beatd run``), ``beatd status``, ``beatd dump`` and the metrics.

Without root: the daemon in-process, with a stand-in capture source feeding frames through the
same worker loop; the CLI's start-up errors. As root: ``beatd run`` as a subprocess in a network
namespace of its own with a veth pair, frames sent from the peer namespace through the real
TPACKET_V3 ring.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

import fastpath
from beatd import config as bconfig
from beatd import daemon as bdaemon
from beatd.control import request
from beatd.daemon import Daemon
from beatd.store import Store
from conftest import require_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NONE = fastpath.NONE
PEER = bytes.fromhex("02aa00000007")
OWN = bytes.fromhex("02aa00000001")


def mac_str(mac):
    return ":".join(f"{b:02x}" for b in mac)


def udp_frame(src_mac, dst_mac, i, tag=0):
    payload = struct.pack(">QI", i, tag) + b"beat-daemon"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 77, tag & 0xFF, 1]), bytes([10, 78, 0, 2]))
    udp = struct.pack(">HHHH", 4000 + tag, 53, 8 + len(payload), 0)
    return dst_mac + src_mac + b"\x08\x00" + ip + udp + payload


def config_text(store, sock, node_mac_id=7, interfaces=("stand0",), metrics="127.0.0.1:0",
                extra="", refresh=False):
    return f"""
node_id = 1
own_macs = ["{mac_str(OWN)}"]
interfaces = {json.dumps(list(interfaces))}
{extra}
[[neighbours]]
node_id = {node_mac_id}
mac = "{mac_str(PEER)}"
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
metrics_listen = "{metrics}"
control_socket = "{sock}"
log_format = "text"
neighbour_refresh = {"true" if refresh else "false"}
"""


# -- a stand-in capture source: frames pushed by the test, fed through the daemon's worker loop ----

class StandIn:
    def __init__(self, ifname):
        self.ifname = ifname
        self.batches = []
        self.lock = threading.Lock()
        self.frames = self.bytes = 0
        self.closed = False

    def push(self, frames, slot=0):
        """Frames captured coming in, on the interface of ``slot`` (0: unknown)."""
        buf = b"".join(frames)
        desc, off = [], 0
        t = time.time_ns()
        for i, f in enumerate(frames):
            desc.append(fastpath.pack_desc(t + i * 1000, off, len(f), len(f), 1, 1, 0, slot))
            off += len(f)
        with self.lock:
            self.batches.append((buf, b"".join(desc), len(frames)))

    def read(self, pipeline, timeout_ms=100):
        with self.lock:
            batch = self.batches.pop(0) if self.batches else None
        if batch is None:
            time.sleep(timeout_ms / 1000 / 10)
            return 0
        buf, desc, n = batch
        pipeline.feed(buf, desc)
        self.frames += n
        self.bytes += len(buf)
        return n

    def kernel_stats(self):
        return {"packets": self.frames, "drops": 0, "freeze_q_cnt": 0}

    def counters(self):
        return {"frames": self.frames, "bytes": self.bytes, "blocks": 0, "vlan_tagged": 0,
                "snap_truncated": 0}

    def close(self):
        self.closed = True


# Generous bounds (hang detectors, not speed measures) for a loaded CI machine: a wait returns as
# soon as its condition holds, so only a daemon that never gets there pays for them.
SLOW_S = 30.0


def shutdown_bound_s():
    """An upper bound of ``Daemon.shutdown()``, to detect a hang (not to measure speed): its joins
    are bounded (the worker and the committer 1 s each; the anchor thread, the final submission
    attempt and the anchor thread again FINAL_ANCHOR_TIMEOUT_S each, read at call time; the
    interrogation and the three servers' closers 1 s each), plus a margin for a loaded machine."""
    return 3 * bdaemon.FINAL_ANCHOR_TIMEOUT_S + 15.0


def stand_in_factory(sources):
    """A Daemon source_factory of one StandIn per worker; each made is appended to ``sources``."""
    def factory(interfaces, worker, group, config):
        s = StandIn(interfaces[0])
        sources.append(s)
        return [s]
    return factory


def counters_of(store_path, node_id=1):
    with Store(store_path, node_id=node_id, hash_name="sha3-256", ring_size=16 << 20,
               map_size=256 << 20) as st:
        return st.counters(), list(st.iter_records()), st.verify()


def test_daemon_with_stand_in_source(tmp_path):
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock))
    cfg = bconfig.load(cfg_path)
    sources = []
    d = Daemon(cfg, config_path=str(cfg_path), source_factory=stand_in_factory(sources))
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    try:
        src = sources[0]
        src.push([udp_frame(PEER, OWN, i, 1) for i in range(40)])
        wait_for(lambda: d.pipeline.totals()["frames"] == 40, timeout=SLOW_S,
                 what="40 frames fed")
        st = request(str(sock), timeout=SLOW_S)
        assert st["node_id"] == 1 and st["totals"]["frames"] == 40
        assert st["interfaces"] == ["stand0"] and st["rings"][0]["name"] == "stand0"
        assert st["neighbours"] == {mac_str(PEER): 7}

        text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=SLOW_S).read().decode()
        from beatd.metrics import NAMES
        for name in NAMES:
            assert name in text, name
        assert "beat_frames_total 40.0" in text

        # SIGHUP: the neighbour map from the changed file; frames after it carry the new prev_id
        cfg_path.write_text(config_text(store, sock, node_mac_id=8))
        d.request_reload()
        wait_for(lambda: d.reloads == 1 and request(str(sock))["neighbours"] ==
                 {mac_str(PEER): 8}, timeout=SLOW_S, what="reload")
        src.push([udp_frame(PEER, OWN, 1000 + i, 2) for i in range(25)])
        wait_for(lambda: d.pipeline.totals()["frames"] == 65, timeout=SLOW_S,
                 what="65 frames fed")
        wait_for(lambda: d.commits > 0, timeout=SLOW_S, what="a commit")
    finally:
        d.request_stop()
        main.join(timeout=SLOW_S)
        assert not main.is_alive(), "serve() did not return after request_stop()"
        t0 = time.monotonic()
        d.shutdown()
        took = time.monotonic() - t0
        assert took < shutdown_bound_s(), f"shutdown took {took:.2f} s: hung?"
    assert d.failure is None and sources[0].closed
    assert not os.path.exists(sock)
    counters, records, problems = counters_of(store)
    assert problems == []
    assert counters[(7, NONE)][0] == 40 and counters[(8, NONE)][0] == 25
    assert len(records) == 65


def test_daemon_store_failure_is_named(tmp_path):
    """A worker that fails stops the daemon with the failure set (exit code 1 from `beatd run`)."""
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(tmp_path / "store", "", metrics=""))
    cfg = bconfig.load(cfg_path)

    class Broken(StandIn):
        def read(self, pipeline, timeout_ms=100):
            raise OSError(5, "stand-in: device gone")

    d = Daemon(cfg, source_factory=lambda interfaces, *a: [Broken(interfaces[0])])
    d.start()
    d.serve(tick_s=0.02)            # returns on its own: the worker failed
    d.shutdown()
    assert "capture worker 0" in d.failure and "device gone" in d.failure


OTHER = bytes.fromhex("02aa00000008")


def test_daemon_binds_neighbours_to_their_interfaces(tmp_path, caplog, monkeypatch):
    """Stand-in sources hand over frames with the slot of their interface (as the Ring does, in
    the order of ``interfaces``). The peer is configured on stand0: its MAC on stand1 is from
    outside, counted, and logged at most once per interval (the rest at stop); a neighbour
    without an interface is named at start."""
    import logging
    monkeypatch.setattr(bdaemon, "WRONG_IF_LOG_INTERVAL_S", 3600.0)
    monkeypatch.setattr(logging.getLogger("beatd"), "propagate", True)
    caplog.set_level(logging.INFO, logger="beatd")
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, interfaces=("stand0", "stand1"), metrics="")
                        .replace(f'mac = "{mac_str(PEER)}"',
                                 f'mac = "{mac_str(PEER)}"\ninterface = "stand0"\n'
                                 f'[[neighbours]]\nnode_id = 9\nmac = "{mac_str(OTHER)}"'))
    cfg = bconfig.load(cfg_path)
    sources = []
    d = Daemon(cfg, config_path=str(cfg_path), source_factory=stand_in_factory(sources))
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    try:
        assert d.slots == {"stand0": 1, "stand1": 2}
        src = sources[0]
        src.push([udp_frame(PEER, OWN, i, 1) for i in range(10)], slot=1)
        src.push([udp_frame(PEER, OWN, 100 + i, 2) for i in range(6)], slot=2)
        wait_for(lambda: d.pipeline.totals()["frames"] == 16, timeout=SLOW_S, what="16 frames")
        wait_for(lambda: any("where that neighbour is not" in r.getMessage()
                             for r in caplog.records), timeout=SLOW_S, what="the first message")
        src.push([udp_frame(PEER, OWN, 200 + i, 2) for i in range(4)], slot=2)
        wait_for(lambda: d.pipeline.totals()["frames"] == 20, timeout=SLOW_S, what="20 frames")
        st = request(str(sock), timeout=SLOW_S)
        assert st["totals"]["neighbour_wrong_interface"] == 10
        assert st["neighbour_interfaces"] == {mac_str(PEER): ["stand0"], mac_str(OTHER): None}
    finally:
        d.request_stop()
        main.join(timeout=SLOW_S)
        d.shutdown()
    assert d.failure is None
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    assert [f["node_id"] for f, r in zip(fields, caplog.records)
            if r.getMessage().startswith("neighbour without an interface")] == [9]
    logged = [(f["mac"], f["interface"], f["direction"], f["neighbour"], f["frames"])
              for f, r in zip(fields, caplog.records) if "where that neighbour is not" in
              r.getMessage()]
    assert logged == [(mac_str(PEER), "stand1", "ingress", 7, 6),
                      (mac_str(PEER), "stand1", "ingress", 7, 4)], logged
    counters, records, problems = counters_of(store)
    assert problems == []
    assert counters[(7, NONE)][0] == 10 and counters[(0, NONE)][0] == 10


def test_daemon_refuses_a_source_numbering_interfaces_otherwise(tmp_path):
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(tmp_path / "store", "", interfaces=("stand0", "stand1"),
                                    metrics=""))
    cfg = bconfig.load(cfg_path)

    def factory(interfaces, worker, group, config):
        s = StandIn("any")
        s.slots = {"stand0": 2, "stand1": 1}
        return [s]

    d = Daemon(cfg, source_factory=factory)
    with pytest.raises(bdaemon.DaemonError, match="ring any gives interface stand0 slot 2, the "
                       "daemon expects 1"):
        d.start()


def test_daemon_refuses_a_neighbour_on_an_interface_it_does_not_capture(tmp_path):
    from beatd.config import Neighbour
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(tmp_path / "store", "", metrics=""))
    d = Daemon(bconfig.load(cfg_path), source_factory=stand_in_factory([]))
    d.interfaces, d.slots = ("stand0",), {"stand0": 1}
    with pytest.raises(bdaemon.DaemonError, match=r'neighbours\[1\].interface: "eth9" is not a '
                       r"captured interface \(interfaces: stand0\)"):
        d._check_neighbour_interfaces([Neighbour(2, PEER, None, "stand0"),
                                       Neighbour(3, OTHER, None, "eth9")])


def beatd(*args, timeout=20, ns=None, **kw):
    cmd = [sys.executable, "-m", "beatd", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def test_broken_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config_text(tmp_path / "s", tmp_path / "c.sock").replace(
        "block_count = 4", "block_count = -4"))
    r = beatd("run", "--config", str(cfg))
    assert r.returncode == 2
    assert "capture.block_count: -4 must be more than 0" in r.stderr
    cfg.write_text(config_text(tmp_path / "s", tmp_path / "c.sock").replace(
        'log_format = "text"', 'log_format = "xml"'))
    r = beatd("run", "--config", str(cfg))
    assert r.returncode == 2 and 'daemon.log_format: "xml"' in r.stderr


def test_missing_interface_is_named(tmp_path):
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(tmp_path / "s", tmp_path / "c.sock", interfaces=["nosuch-if0"]))
    r = beatd("run", "--config", str(cfg))
    assert r.returncode == 2
    assert 'interfaces[0]: "nosuch-if0": no such network interface' in r.stderr


def test_status_without_daemon(tmp_path):
    r = beatd("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "none.sock" in r.stderr and "running" in r.stderr


# -- root: the real ring, in namespaces ------------------------------------------------------------

SENDER = r"""
import socket, struct, sys
ifname, src, dst, first, n, tag = sys.argv[1:7]
src, dst = bytes.fromhex(src), bytes.fromhex(dst)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
for i in range(int(first), int(first) + int(n)):
    payload = struct.pack(">QI", i, int(tag)) + b"beat-daemon"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 77, int(tag), 1]), bytes([10, 78, 0, 2]))
    udp = struct.pack(">HHHH", 4000, 53, 8 + len(payload), 0)
    s.send(dst + src + b"\x08\x00" + ip + udp + payload)
"""


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def netns_pair():
    """Two namespaces joined by a veth pair: (daemon ns, its ifname, peer ns, peer ifname)."""
    require_root()
    try:
        import fastpath._native as native
        native.Ring  # noqa: B018
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"fastpath._native.Ring is missing: {exc}")
    tag = uuid.uuid4().hex[:6]
    d_ns, p_ns, d_if, p_if = f"btd-d-{tag}", f"btd-p-{tag}", f"btdd{tag}", f"btdp{tag}"
    sh("ip", "netns", "add", d_ns)
    try:
        sh("ip", "netns", "add", p_ns)
        sh("ip", "link", "add", d_if, "netns", d_ns, "address", mac_str(OWN), "type", "veth",
           "peer", "name", p_if, "netns", p_ns, "address", mac_str(PEER))
        for ns, ifn in ((d_ns, d_if), (p_ns, p_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
               f"net.ipv6.conf.{ifn}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", ifn, "arp", "off", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield d_ns, d_if, p_ns, p_if
    finally:
        for ns in (d_ns, p_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def send(p_ns, p_if, first, n, tag):
    sh("ip", "netns", "exec", p_ns, sys.executable, "-c", SENDER, p_if, PEER.hex(), OWN.hex(),
       str(first), str(n), str(tag))


def test_run_in_namespace(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(store, sock, interfaces=[d_if], metrics="127.0.0.1:9477",
                               refresh=True))
    proc = subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def status():
            try:
                return request(str(sock))
            except Exception:  # noqa: BLE001
                return None
        wait_for(lambda: proc.poll() is not None or status() is not None, timeout=SLOW_S,
                 what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        send(p_ns, p_if, 0, 50, 1)
        wait_for(lambda: status()["totals"]["frames"] >= 50, timeout=SLOW_S,
                 what="50 frames captured")
        # the rings' counters in the status are the capture thread's snapshot (taken every
        # RING_STATS_INTERVAL_S): they follow the pipeline's totals a little later
        wait_for(lambda: all(r["frames"] >= 50 for r in status()["rings"]), timeout=SLOW_S,
                 what="the rings' snapshot of 50 frames")

        r = beatd("status", "--socket", str(sock), "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["interfaces"] == [d_if]
        ring = st["rings"][0]["name"]                # "any", or d_if with a per-interface Ring
        assert ring in ("any", d_if) and st["rings"][0]["frames"] >= 50
        assert st["neighbours"] == {mac_str(PEER): 7}
        r = beatd("status", "--socket", str(sock))
        assert r.returncode == 0 and "node 1" in r.stdout

        metrics = subprocess.run(
            ["ip", "netns", "exec", d_ns, sys.executable, "-c",
             "import urllib.request;print(urllib.request.urlopen("
             "'http://127.0.0.1:9477/metrics', timeout=30).read().decode())"],
            capture_output=True, text=True, timeout=60).stdout
        from beatd.metrics import NAMES
        for name in NAMES:
            assert name in metrics, name
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["beat_frames_total"] == 50
        assert values["beat_bytes_total"] > 50 * 60
        assert values[f'beat_kernel_packets_total{{interface="{ring}"}}'] >= 50
        assert values[f'beat_kernel_drops_total{{interface="{ring}"}}'] == 0
        assert values["beat_ring_short"] == 0

        # SIGHUP: the changed neighbour map applies to the frames after it
        cfg.write_text(config_text(store, sock, node_mac_id=8, interfaces=[d_if],
                                   metrics="127.0.0.1:9477", refresh=True))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: status()["reloads"] == 1 and status()["neighbours"] ==
                 {mac_str(PEER): 8}, timeout=SLOW_S, what="the reload")
        send(p_ns, p_if, 1000, 30, 2)
        wait_for(lambda: status()["totals"]["frames"] >= 80, timeout=SLOW_S,
                 what="80 frames captured")

        # SIGTERM: the daemon exits promptly (its shutdown is bounded; generous for a slow
        # machine: this detects a hang, not slowness)
        term_bound = shutdown_bound_s() + 10.0      # + the interpreter's start of exit
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=term_bound + 10.0)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert rc == 0, err
    assert took < term_bound, f"SIGTERM to exit took {took:.2f} s: hung?"
    assert not os.path.exists(sock)

    r = beatd("dump", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert len(rows) == 80 == summary["records"]
    assert [x["prev_id"] for x in rows] == [7] * 50 + [8] * 30
    assert all(x["next_id"] == NONE for x in rows)
    got = {(c["prev_id"], c["next_id"]): c["packets"] for c in summary["counters"]}
    assert got == {(7, NONE): 50, (8, NONE): 30}
    assert summary["stats"]["frames"] == 80
    r = beatd("dump", "--config", str(cfg))
    assert r.returncode == 0 and "80 records" in r.stdout


def test_run_restart_resumes(tmp_path, netns_pair):
    """A second run on the same store continues it (segments follow, counters add up)."""
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(store, sock, interfaces=[d_if], metrics=""))
    for run in range(2):
        proc = subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd",
                                 "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: proc.poll() is not None or os.path.exists(sock), timeout=SLOW_S,
                     what="the control socket")
            assert proc.poll() is None, proc.stderr.read()
            send(p_ns, p_if, run * 100, 20, 1)
            wait_for(lambda: request(str(sock))["totals"]["frames"] >= 20, timeout=SLOW_S,
                     what="20 frames")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=shutdown_bound_s() + 20.0) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    counters, records, problems = counters_of(store)
    assert problems == []
    assert counters == {(7, NONE): (40,) + counters[(7, NONE)][1:]}
    assert len(records) == 40


NEIGH_SCRIPT = r"""
import json, subprocess, sys, time
from beatd.neighbours import NeighbourMap
from beatd.config import Neighbour
ifname = sys.argv[1]
sh = lambda *c: subprocess.run(c, check=True)
def neigh(verb, mac=None):
    sh("ip", "neigh", verb, "10.250.0.9", *(["lladdr", mac] if mac else []), "dev", ifname,
       *(["nud", "permanent"] if mac else []))
neigh("add", "02:11:22:33:44:55")
got = []
m = NeighbourMap([Neighbour(9, None, "10.250.0.9"), Neighbour(3, bytes.fromhex("021122334466"))],
                 True, on_change=lambda x: got.append({k.hex(): list(v) if v[1] is None else
                                                       [v[0], list(v[1])] for k, v in x.items()}))
m.start()
def settle(want):
    end = time.monotonic() + 3
    while time.monotonic() < end and got[-1] != want:
        time.sleep(0.02)
    return got[-1]
CFG, KER = [3, None], [9, [ifname]]     # a configured MAC: every interface; learned: the kernel's
out = [settle({"021122334466": CFG, "021122334455": KER})]
neigh("replace", "02:11:22:33:44:66")       # the MAC of neighbour 3 in the config: config wins
out.append(settle({"021122334466": CFG}))
neigh("replace", "02:11:22:33:44:77")
out.append(settle({"021122334466": CFG, "021122334477": KER}))
neigh("del")       # the entry gone (a flush, a link down): the last known MAC is kept
time.sleep(0.5)
out.append({k.hex(): list(v) if v[1] is None else [v[0], list(v[1])]
            for k, v in m.bindings().items()})
neigh("add", "02:11:22:33:44:88")        # the kernel learns another MAC: it replaces the kept one
out.append(settle({"021122334466": CFG, "021122334488": KER}))
m.stop()
print(json.dumps(out))
"""


def test_neighbours_follow_the_kernel_table(netns_pair):
    """Configured IPs take the kernel's MAC on the kernel entry's interface, follow
    RTM_NEWNEIGH/DELNEIGH; config MACs win (on every interface: no interface configured). A
    deleted entry keeps its last known MAC (docs/daemon.md, "Neighbours given by their IP") until
    the kernel gives the IP another."""
    d_ns, d_if, _, _ = netns_pair
    r = subprocess.run(["ip", "netns", "exec", d_ns, sys.executable, "-c", NEIGH_SCRIPT, d_if],
                       capture_output=True, text=True, timeout=20, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    cfg, ker = [3, None], [9, [d_if]]
    assert json.loads(r.stdout.splitlines()[-1]) == [
        {"021122334466": cfg, "021122334455": ker}, {"021122334466": cfg},
        {"021122334466": cfg, "021122334477": ker}, {"021122334466": cfg, "021122334477": ker},
        {"021122334466": cfg, "021122334488": ker}]


# -- root: a neighbour's MAC names it only on its own link ------------------------------------------

R_A, R_B = bytes.fromhex("02bb00000001"), bytes.fromhex("02bb00000002")    # the router's ports
NB_A, NB_B = bytes.fromhex("02bb0000000a"), bytes.fromhex("02bb0000000b")  # its neighbours
NB_C = bytes.fromhex("02bb0000000c")      # a neighbour configured without an interface
NB_B_IP = "10.99.0.11"


@pytest.fixture
def netns_router():
    """A router namespace with two veth links, to neighbour namespaces A and B:
    (router ns, its interface to A, its interface to B, A ns, A ifname, B ns, B ifname)."""
    require_root()
    try:
        import fastpath._native as native
        native.Ring  # noqa: B018
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"fastpath._native.Ring is missing: {exc}")
    tag = uuid.uuid4().hex[:6]
    r_ns, a_ns, b_ns = f"btw-r-{tag}", f"btw-a-{tag}", f"btw-b-{tag}"
    r_a, r_b, a_if, b_if = f"btwra{tag}", f"btwrb{tag}", f"btwa{tag}", f"btwb{tag}"
    made = []
    try:
        for ns in (r_ns, a_ns, b_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        for ri, rmac, ns, pi, pmac in ((r_a, R_A, a_ns, a_if, NB_A), (r_b, R_B, b_ns, b_if, NB_B)):
            sh("ip", "link", "add", ri, "netns", r_ns, "address", mac_str(rmac), "type", "veth",
               "peer", "name", pi, "netns", ns, "address", mac_str(pmac))
            for n, i in ((r_ns, ri), (ns, pi)):
                sh("ip", "netns", "exec", n, "sysctl", "-q", "-w",
                   f"net.ipv6.conf.{i}.disable_ipv6=1")
                sh("ip", "-n", n, "link", "set", i, "arp", "off", "up")
        for ns in made:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield r_ns, r_a, r_b, a_ns, a_if, b_ns, b_if
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def send_frames(ns, ifname, src, dst, first, n, tag):
    sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, ifname, src.hex(), dst.hex(),
       str(first), str(n), str(tag))


def flow_tag(tag):
    """The FT of the SENDER's frames with this tag (10.77.tag.1 -> 10.78.0.2)."""
    return fastpath.pd_ft(udp_frame(NB_A, R_A, 0, tag), 1)[2].hex()


def test_run_a_neighbours_mac_on_another_link_is_from_outside(tmp_path, netns_router):
    """A real beatd on a router with a link to A (neighbour 10, configured with its interface) and
    a link to B (neighbour 11, given by its IP: its MAC and interface from the kernel's neighbour
    table). A sends frames with its own MAC (from 10), frames carrying B's MAC (not from B: B is not
    on that link; from outside, 0, counted), and frames carrying the MAC of C (neighbour 12, given
    without an interface: named on every interface, as beatd says at start); B sends with its own
    MAC (from 11); the router sends frames to B's MAC out of its link to A (to outside, 0,
    counted). Status, metrics and the log (MAC and interface) show the count."""
    r_ns, r_a, r_b, a_ns, a_if, b_ns, b_if = netns_router
    sh("ip", "-n", r_ns, "neigh", "add", NB_B_IP, "lladdr", mac_str(NB_B), "dev", r_b,
       "nud", "permanent")
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(f"""
node_id = 1
own_macs = ["{mac_str(R_A)}", "{mac_str(R_B)}"]
interfaces = ["{r_a}", "{r_b}"]
[[neighbours]]
node_id = 10
mac = "{mac_str(NB_A)}"
interface = "{r_a}"
[[neighbours]]
node_id = 11
ip = "{NB_B_IP}"
[[neighbours]]
node_id = 12
mac = "{mac_str(NB_C)}"
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
metrics_listen = "127.0.0.1:9479"
control_socket = "{sock}"
log_format = "json"
neighbour_refresh = true
[ledger]
backend = "none"
""")
    proc = subprocess.Popen(["ip", "netns", "exec", r_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def status():
            try:
                return request(str(sock))
            except Exception:  # noqa: BLE001
                return None
        wait_for(lambda: proc.poll() is not None or status() is not None, timeout=SLOW_S,
                 what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        st = status()
        assert st["neighbours"] == {mac_str(NB_A): 10, mac_str(NB_B): 11, mac_str(NB_C): 12}
        assert st["neighbour_interfaces"] == {mac_str(NB_A): [r_a], mac_str(NB_B): [r_b],
                                              mac_str(NB_C): None}
        send_frames(a_ns, a_if, NB_A, R_A, 0, 20, 1)         # A, itself
        send_frames(a_ns, a_if, NB_B, R_A, 100, 15, 2)       # A, with B's MAC
        send_frames(a_ns, a_if, NB_C, R_A, 200, 5, 3)        # A, with C's (unbound) MAC
        send_frames(b_ns, b_if, NB_B, R_B, 300, 10, 4)       # B, itself
        send_frames(r_ns, r_a, R_A, NB_B, 400, 7, 5)         # the router, to B's MAC, on A's link
        wait_for(lambda: status()["totals"]["frames"] >= 57, timeout=SLOW_S,
                 what="57 frames captured")
        st = status()
        assert st["totals"]["neighbour_wrong_interface"] == 22 == st["neighbour_wrong_interface"]
        assert st["totals"]["unknown_mac"] == 0
        r = beatd("status", "--socket", str(sock))
        assert r.returncode == 0 and "22 neighbour MACs on a wrong interface" in r.stdout, r.stdout
        assert f"{mac_str(NB_C)} -> 12 on any interface" in r.stdout
        metrics = subprocess.run(
            ["ip", "netns", "exec", r_ns, sys.executable, "-c",
             "import urllib.request;print(urllib.request.urlopen("
             "'http://127.0.0.1:9479/metrics', timeout=30).read().decode())"],
            capture_output=True, text=True, timeout=60).stdout
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["beat_neighbour_wrong_interface_total"] == 22
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=shutdown_bound_s() + 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert rc == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    unbound = [x for x in logs if x["msg"].startswith("neighbour without an interface")]
    assert [(x["node_id"], x["mac"]) for x in unbound] == [(12, mac_str(NB_C))]
    wrong = {}
    for x in logs:
        if "on an interface where that neighbour is not" in x["msg"]:
            key = (x["mac"], x["interface"], x["direction"], x["neighbour"])
            wrong[key] = wrong.get(key, 0) + x["frames"]
    assert wrong == {(mac_str(NB_B), r_a, "ingress", 11): 15,
                     (mac_str(NB_B), r_a, "egress", 11): 7}, wrong

    r = beatd("dump", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()][:-1]
    by_tag = {}
    for tag in range(1, 6):
        by_tag[tag] = sorted({(x["prev_id"], x["next_id"]) for x in rows
                              if x["ft"] == flow_tag(tag)})
    assert by_tag == {1: [(10, NONE)], 2: [(0, NONE)], 3: [(12, NONE)], 4: [(11, NONE)],
                      5: [(NONE, 0)]}, by_tag
    assert len(rows) == 57
