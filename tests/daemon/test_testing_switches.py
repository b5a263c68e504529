"""The test-only switch of beatd (`beatd run --testing-allow-inject`): off by default; when on, the
control socket's `test-inject PATH` feeds a capture's frames into the proofs as if captured (the
lab's fabrication scenario uses it). No root needed: the stand-in capture source of test_daemon."""
import struct
import subprocess
import sys
import threading
import time

from beatd import config as bconfig
from beatd.control import request
from beatd.daemon import Daemon
from beatd.store import Store

from capture_files import write_pcap
from conftest import wait_for
from test_daemon import OWN, PEER, ROOT, config_text, stand_in_factory, udp_frame

OTHER = bytes.fromhex("02aa00000009")      # a second neighbour: where the fabricated copy "went"


def _daemon(tmp_path, allow):
    path = tmp_path / "beatd.toml"
    extra = ""
    text = config_text(tmp_path / "store", tmp_path / "c.sock", metrics="", extra=extra)
    text += '[ledger]\nbackend = "none"\n'
    text = text.replace("[store]", "[[neighbours]]\nnode_id = 9\nmac = \"02:aa:00:00:00:09\"\n"
                                   "[store]")
    path.write_text(text)
    cfg = bconfig.load(path)
    d = Daemon(cfg, config_path=str(path), source_factory=stand_in_factory([]),
               testing_allow_inject=allow)
    d.start()
    t = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    t.start()
    return d, t, cfg


def _stop(d, t):
    d.request_stop()
    t.join(timeout=2)
    d.shutdown()


def _fabricated(tmp_path, n, t0_s):
    """n packets 'received from' PEER (node 7) and 'sent to' OTHER (node 9), 100 us apart."""
    recs = []
    for i in range(n):
        sec, usec = t0_s, i * 1000
        recs.append((sec, usec, udp_frame(PEER, OWN, i, 5), 0))
        recs.append((sec, usec + 100, udp_frame(OWN, OTHER, i, 5), 0))
    recs = [(s, u, d, len(d)) for s, u, d, _ in recs]
    return write_pcap(tmp_path / "fab.pcap", recs)


def test_inject_is_refused_without_the_switch(tmp_path):
    d, t, cfg = _daemon(tmp_path, allow=False)
    try:
        p = _fabricated(tmp_path, 5, int(time.time()))
        r = request(str(tmp_path / "c.sock"), f"test-inject {p}")
        assert "error" in r and "unknown request" in r["error"]
    finally:
        _stop(d, t)
    with Store(tmp_path / "store", node_id=1, hash_name="sha3-256", ring_size=16 << 20,
               map_size=256 << 20) as st:
        assert list(st.iter_records()) == []


def test_inject_feeds_frames_as_captured_records(tmp_path):
    d, t, cfg = _daemon(tmp_path, allow=True)
    t0 = int(time.time())
    try:
        p = _fabricated(tmp_path, 20, t0)
        r = request(str(tmp_path / "c.sock"), f"test-inject {p}", timeout=10)
        assert r == {"frames": 40}
        r = request(str(tmp_path / "c.sock"), f"test-inject {tmp_path / 'nothing.pcap'}")
        assert "error" in r and "nothing.pcap" in r["error"]
        wait_for(lambda: d.pipeline.totals()["frames"] == 40, what="40 frames fed")
    finally:
        _stop(d, t)
    with Store(tmp_path / "store", node_id=1, hash_name="sha3-256", ring_size=16 << 20,
               map_size=256 << 20) as st:
        recs = [struct.unpack(">QQQ16s8s", r) for r in st.iter_records()]
    # every injected packet: one joined record, from node 7 to node 9, at the file's time
    joined = [r for r in recs if r[1] == 7 and r[2] == 9]
    assert len(joined) == 20, recs[:3]
    assert min(r[0] for r in joined) == t0 * 1_000_000_000


def test_the_switch_is_hidden_from_help():
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--help"], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0 and "inject" not in r.stdout
