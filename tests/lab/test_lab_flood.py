"""A spoofed-source flood of an edge router (root: network namespaces of this test's own).

An edge router's ``beatd run`` captures, on a veth pair, 5,000,000 frames from outside that
``tools/beat_send --random-src`` sends with a random IPv4 source each: a new flow per packet, the
attack that made one receipt (~225 bytes of store) per spoofed packet until the LMDB map was full,
the daemon exited and every restart failed again. The store has a 64 MiB map, an 8 MiB proof ring,
a local ledger anchoring every second and a threshold of 2 s, so pruning works during the flood.

Checked: the flood reached the store (>= 1 M records, the ring wrapped), the receipts stayed under
the cap (overflow receipts counted), pruning ran, the store never filled and stays within its map,
the daemon is still running and ``beatd status`` is sane; SIGTERM exits cleanly, a restart on the
store starts and stops cleanly, and ``Store.verify()`` finds the store consistent. The sender is
bounded by a count and a duration; every wait has a timeout: the test ends by itself.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from beatd.cli import format_status
from beatd.control import request
from beatd.store import Store
from conftest import require_root, wait_for
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Node
from test_daemon import OWN, PEER, ROOT, mac_str, sh, shutdown_bound_s

FLOOD = 5_000_000
RING = 8 << 20
MAP = 64 << 20
THRESHOLD_S = 2
CAP = 1024
WAIT_S = 60.0


@pytest.fixture
def edge(tmp_path):
    """An edge router's namespace and a sender's, joined by a veth pair; beat_send built."""
    require_root()
    try:
        import fastpath._native as native
        native.Ring  # noqa: B018
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"fastpath._native.Ring is missing: {exc}")
    tool = tmp_path / "beat_send"
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tool),
                        os.path.join(ROOT, "tools", "beat_send.c")], capture_output=True,
                       text=True)
    assert r.returncode == 0, f"gcc tools/beat_send.c: {r.stderr}"
    tag = uuid.uuid4().hex[:6]
    e_ns, s_ns, e_if, s_if = f"bfl-e-{tag}", f"bfl-s-{tag}", f"bfle{tag}", f"bfls{tag}"
    sh("ip", "netns", "add", e_ns)
    try:
        sh("ip", "netns", "add", s_ns)
        sh("ip", "link", "add", e_if, "netns", e_ns, "address", mac_str(OWN), "type", "veth",
           "peer", "name", s_if, "netns", s_ns, "address", mac_str(PEER))
        for ns, ifn in ((e_ns, e_if), (s_ns, s_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
               f"net.ipv6.conf.{ifn}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", ifn, "arp", "off", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield e_ns, e_if, s_ns, s_if, str(tool)
    finally:
        for ns in (e_ns, s_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def write_config(tmp_path, e_if):
    """The edge router's configuration: the sender's MAC is no neighbour (traffic from outside:
    role-1 receipts), a local ledger the governance made, with the node registered."""
    gov, dev = DeviceKey.generate(), DeviceKey.generate()
    key = tmp_path / "device.ed25519"
    dev.save(key)
    os.chmod(key, 0o600)
    led = tmp_path / "ledger.mdb"
    with LocalLedger(led, hash_name="sha3-256", governance_pubkey=gov) as lg:
        lg.register_node(Node(1, "edge-operator", dev.public, None), signer=gov)
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(f"""
node_id = 1
own_macs = ["{mac_str(OWN)}"]
interfaces = ["{e_if}"]
[store]
path = "{tmp_path / 'store'}"
ring_size = {RING}
map_size = {MAP}
[governance]
threshold_s = {THRESHOLD_S}
anchor_period_s = 1
max_receipts_per_epoch = {CAP}
[capture]
workers = 1
block_size = "1MiB"
block_count = 32
[daemon]
commit_interval_ms = 50
metrics_listen = "127.0.0.1:9477"
control_socket = "{tmp_path / 'control.sock'}"
log_format = "text"
neighbour_refresh = false
[ledger]
backend = "local"
path = "{led}"
key = "{key}"
anchor_period_s = 1
""")
    return cfg


class Beatd:
    def __init__(self, e_ns, cfg, tmp_path, n):
        self.sock = str(tmp_path / "control.sock")
        self.log = open(tmp_path / f"beatd-{n}.log", "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", e_ns, sys.executable, "-m", "beatd",
                                      "run", "--config", str(cfg)], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)
        self.log_path = tmp_path / f"beatd-{n}.log"
        wait_for(lambda: self.proc.poll() is not None or self.status() is not None,
                 timeout=WAIT_S, what="the daemon's control socket")
        assert self.proc.poll() is None, self.log_path.read_text()

    def status(self):
        try:
            return request(self.sock, timeout=5.0)
        except Exception:  # noqa: BLE001 (not up yet, or busy: asked again)
            return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=shutdown_bound_s() + 20.0)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        return rc


def send(s_ns, s_if, tool, count, *extra):
    r = subprocess.run(["ip", "netns", "exec", s_ns, tool, s_if, mac_str(OWN), mac_str(PEER),
                        "--count", str(count), "--duration", "90", "--dst-ip", "10.255.0.1",
                        *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_spoofed_source_flood_keeps_the_store_bounded(tmp_path, edge):
    e_ns, e_if, s_ns, s_if, tool = edge
    cfg = write_config(tmp_path, e_if)
    d = Beatd(e_ns, cfg, tmp_path, 1)
    try:
        # capturing: a first few frames reach the pipeline
        send(s_ns, s_if, tool, 1000, "--random-src", "1")
        wait_for(lambda: (d.status() or {}).get("totals", {}).get("frames", 0) >= 1000,
                 timeout=WAIT_S, what="the first 1000 frames captured")
        t0 = time.time()
        sent = send(s_ns, s_if, tool, FLOOD, "--random-src", "2")
        assert sent["sent"] >= FLOOD and sent["random_src"], sent
        flood_s = time.time() - t0

        def settled():                # the rings drained: the frame count no longer moves
            a = d.status()["totals"]["frames"]
            time.sleep(0.5)
            return d.status()["totals"]["frames"] == a
        wait_for(settled, timeout=WAIT_S, what="the capture rings drained")
        # anchored batches older than the threshold, out of the ring: pruned
        wait_for(lambda: d.status()["store"]["pruned"]["receipts"] > 0, timeout=WAIT_S,
                 what="receipts pruned")
        st = d.status()
        assert d.proc.poll() is None and st["failure"] is None, d.log_path.read_text()[-3000:]
        t = st["totals"]
        # the flood reached the store
        assert t["records"] >= 1_000_000, t
        ring = st["store"]["ring"]
        assert ring["wraps"] > 0 and ring["bytes"] <= RING
        # the receipts stayed under the cap: at most CAP + 1 per epoch (1 s) and role; the
        # others in the overflow receipts
        assert t["receipt_overflow"] > 0
        epochs = flood_s + (time.time() - t0 - flood_s) + 3
        assert t["receipts"] <= (CAP + 1) * epochs, (t["receipts"], epochs)
        # never full, within its map
        store = st["store"]
        assert not store["full"] and store["dropped"] == {"batches": 0, "records": 0,
                                                          "segments": 0, "receipts": 0}, store
        assert store["map_size"] == MAP
        assert os.path.getsize(tmp_path / "store" / "data.mdb") <= MAP
        assert st["anchor"]["last_anchored_batch_seq"] is not None and not st["anchor"]["halted"]
        text = format_status(st)
        assert "overflow receipts" in text and "pruned" in text and "STORE FULL" not in text
        metrics = subprocess.run(
            ["ip", "netns", "exec", e_ns, sys.executable, "-c",
             "import urllib.request;print(urllib.request.urlopen("
             "'http://127.0.0.1:9477/metrics', timeout=30).read().decode())"],
            capture_output=True, text=True, timeout=60).stdout
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["beat_store_full"] == 0 and values["beat_receipt_overflow_total"] > 0
        assert values['beat_store_pruned_total{what="receipts"}'] > 0
        print(f"flood: {sent['sent']} frames in {sent['seconds']:.1f} s ({sent['pps']:.0f} pps); "
              f"daemon: {t['frames']} frames, {t['records']} records, {t['receipts']} receipts, "
              f"{t['receipt_overflow']} packets in overflow receipts, kernel drops "
              f"{st['kernel_drops']}; store {os.path.getsize(tmp_path / 'store' / 'data.mdb')} "
              f"bytes of {MAP}; pruned {store['pruned']}")
    finally:
        rc = d.stop()
    assert rc == 0, d.log_path.read_text()[-3000:]
    # a restart on that store: starts, captures, stops cleanly
    d = Beatd(e_ns, cfg, tmp_path, 2)
    try:
        before = d.status()["totals"]["frames"]
        send(s_ns, s_if, tool, 20_000, "--random-src", "3")
        wait_for(lambda: d.status()["totals"]["frames"] >= before + 10_000, timeout=WAIT_S,
                 what="frames captured after the restart")
        st = d.status()
        assert st["failure"] is None and not st["store"]["full"]
    finally:
        rc = d.stop()
    assert rc == 0, d.log_path.read_text()[-3000:]
    with Store(tmp_path / "store", 1, "sha3-256", RING, map_size=MAP) as s:
        assert s.verify() == []
        assert s.stats()["records"] >= 1_000_000
