"""A full store degrades instead of stopping the daemon (docs/store.md, "A full store").

A store with a tiny map_size: the batch that does not fit is dropped (its transaction aborted), the
pipeline rewound to the store's state, and the next batch follows the store exactly; the daemon
keeps capturing, counting what it could not record, serving evidence and anchoring, says so in
``beatd status``, the metrics and the log (once, then rate-limited, with the path and the map
size); it stops cleanly, restarts on the full store, and records again when there is room (a
larger map, or pruning). No root: the stand-in capture source of test_daemon.py."""
import logging
import struct
import threading
import time
import urllib.request

import pytest

import fastpath
from beatd import config as bconfig
from beatd.cli import format_status
from beatd.control import request
from beatd.daemon import Daemon
from beatd.store import Store, StoreDiskFullError, StoreFullError
from conftest import wait_for
from governance.client import InterrogationClient
from ledger_client.keys import DeviceKey
from test_daemon import OWN, PEER, SLOW_S, config_text, stand_in_factory
from test_daemon_interrogation import _section, pki  # noqa: F401 (the pki fixture)
from test_daemon_ledger import _ledger

HASH = "sha3-256"
HOST = bytes.fromhex("02bb00000009")       # not a neighbour: ingress from outside, receipts
MAP = "512KiB"


def flood(start, n):
    """``n`` frames from outside, each of its own flow (source address): a receipt each."""
    out = []
    for i in range(start, start + n):
        payload = struct.pack(">Q", i) + b"flood"
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17,
                         0, struct.pack(">I", (11 << 24) + i), bytes([10, 78, 0, 2]))
        out.append(OWN + HOST + b"\x08\x00" + ip + struct.pack(">HHHH", 7, 9, 8 + len(payload),
                                                              0) + payload)
    return out


def write_config(tmp_path, pki, map_size=MAP, threshold_s=3600, ring="4KiB", ledger=None):
    path = tmp_path / "beatd.toml"
    text = config_text(tmp_path / "store", tmp_path / "c.sock", metrics="127.0.0.1:0")
    text = text.replace('ring_size = "16MiB"\nmap_size = "256MiB"',
                        f'ring_size = "{ring}"\nmap_size = "{map_size}"')
    text = text.replace("[store]", f"[governance]\nreceipt_epoch_ms = 100\nanchor_period_s = 0.3\n"
                                   f"segment_records = 16\nthreshold_s = {threshold_s}\n[store]")
    led, _, dev = ledger or _ledger(tmp_path)
    text += (f'[ledger]\nbackend = "local"\npath = "{led}"\nkey = "{dev}"\n'
             f"anchor_period_s = 0.3\n")
    path.write_text(text + _section(pki))
    return path, bconfig.load(path), (led, None, dev)


class Running:
    def __init__(self, path, cfg):
        self.sources = []
        self.d = Daemon(cfg, config_path=str(path), source_factory=stand_in_factory(self.sources))
        self.d.start()
        self.main = threading.Thread(target=self.d.serve, kwargs={"tick_s": 0.02})
        self.main.start()
        self.sock = cfg.control_socket
        self.fed = 0

    def push(self, frames):
        n = self.d.pipeline.totals()["frames"] + len(frames)
        self.sources[0].push(frames)
        wait_for(lambda: self.d.pipeline.totals()["frames"] >= n, timeout=SLOW_S,
                 what=f"{n} frames fed")

    def flood_until(self, pred, what, per=400, rounds=60):
        for _ in range(rounds):
            if pred():
                return
            self.push(flood(self.fed, per))
            self.fed += per
            time.sleep(0.1)
        wait_for(pred, timeout=SLOW_S, what=what)

    def status(self):
        return request(self.sock)

    def metrics(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.d.metrics.port}/metrics",
                                      timeout=5).read().decode()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
                if line.startswith("beat_")}

    def client(self, key):
        port = self.d.interrogation.stats()["port"]
        return InterrogationClient(f"127.0.0.1:{port}", self.pki["ca"], self.pki["gov_cert"],
                                   self.pki["gov_key"], HASH, 1, key.public)

    def stop(self):
        self.d.request_stop()
        self.main.join(timeout=SLOW_S)
        self.d.shutdown()
        assert self.d.failure is None, self.d.failure


def full_events(caplog, level=None):
    return [r for r in caplog.records if r.name == "beatd.daemon" and r.getMessage()
            .startswith("store full") and (level is None or r.levelno == level)]


def test_a_full_map_degrades_and_a_restart_works(tmp_path, pki, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="beatd")
    path, cfg, ledger = write_config(tmp_path, pki)
    r = Running(path, cfg)
    r.pki = pki
    key = DeviceKey.load(ledger[2])
    try:
        r.flood_until(lambda: r.d.store_status()["full"], "the store full")
        # capture goes on, and what it cannot record is counted
        before = dict(r.d.store_dropped)
        r.push(flood(r.fed, 2000))
        r.fed += 2000
        wait_for(lambda: r.d.store_dropped["records"] > before["records"] + 1000, timeout=SLOW_S,
                 what="more records counted as dropped")
        assert r.d.failure is None and r.main.is_alive()
        assert r.d.store_dropped["batches"] >= 2 and r.d.store_dropped["receipts"] > 0
        # beatd status says it (a store at the edge of full may fit a small batch between two
        # that do not: ask until a status finds it full)
        st = {}

        def status_full():
            nonlocal st
            r.push(flood(r.fed, 200))
            r.fed += 200
            st = r.status()
            return st["store"]["full"]

        wait_for(status_full, timeout=SLOW_S, what="beatd status saying the store is full")
        assert st["store"]["map_size"] == 512 << 10
        assert st["store"]["dropped"]["records"] > 0 and "map is full" in st["store"]["full_error"]
        text = format_status(st)
        assert "STORE FULL" in text and "dropped      for a full store" in text, text
        assert st["state"] == "degraded: store full" and "map is full" in st["state_reason"]
        assert "  state        degraded: store full (" in text, text
        # the metrics too
        m = {}

        def metrics_full():
            nonlocal m
            r.push(flood(r.fed, 200))
            r.fed += 200
            m = r.metrics()
            return m["beat_store_full"] == 1

        wait_for(metrics_full, timeout=SLOW_S, what="the metrics saying the store is full")
        assert 0 < m['beat_store_dropped_total{what="records"}'] <= r.d.store_dropped["records"]
        assert m['beat_store_dropped_total{what="batches"}'] >= 2
        # the log: once as an error naming the path and the map size, not once per batch
        errors = full_events(caplog, logging.ERROR)
        assert len(errors) == 1 and r.d.store_dropped["batches"] > 1
        assert errors[0].fields["path"] == str(tmp_path / "store")
        assert errors[0].fields["map_size"] == 512 << 10
        # evidence is still served, and the batches built are anchored
        with r.client(key) as c:
            assert c.node_info().node_id == 1
            assert sum(x.packets for x in c.counter_report()) > 0
        wait_for(lambda: (r.d.anchor_status() or {}).get("pending_anchors") == 0 and
                 (r.d.anchor_status() or {}).get("last_anchored_batch_seq") is not None,
                 timeout=SLOW_S, what="the batches built anchored")
    finally:
        r.stop()
    committed = _verify(tmp_path, 512 << 10)
    # a restart on the full store: it starts, serves, and reports the store full
    r = Running(path, cfg)
    r.pki = pki
    try:
        with r.client(key) as c:
            assert c.node_info().node_id == 1
        r.flood_until(lambda: r.d.store_status()["full"], "the full store reported again")
        assert r.d.store_dropped["records"] > 0 and r.d.failure is None
    finally:
        r.stop()
    assert _verify(tmp_path, 512 << 10) >= committed       # nothing committed was lost
    # room again (a larger map): recording resumes where the store stands
    path, cfg, _ = write_config(tmp_path, pki, map_size="64MiB", ledger=ledger)
    r = Running(path, cfg)
    try:
        commits = r.d.commits
        r.push(flood(10**6, 300))
        wait_for(lambda: r.d.commits > commits and r.d.store.stats()["records"] > committed,
                 timeout=SLOW_S, what="batches committed again")
        assert not r.d.store_status()["full"]
    finally:
        r.stop()
    assert _verify(tmp_path, 64 << 20) > committed


def _verify(tmp_path, map_size):
    with Store(tmp_path / "store", 1, HASH, 4096, map_size=map_size) as s:
        assert s.verify() == []
        return s.stats()["records"]


def test_pruning_makes_room_and_recording_resumes(tmp_path, pki, caplog,  # noqa: F811
                                                  monkeypatch):
    """With a threshold of one second, the anchored batches older than that go, their room is
    used again, and the daemon leaves the full state by itself (and says so)."""
    import beatd.daemon
    monkeypatch.setattr(beatd.daemon, "FULL_LOG_INTERVAL_S", 0.5)     # the log's rate limit
    caplog.set_level(logging.INFO, logger="beatd")
    path, cfg, _ = write_config(tmp_path, pki, threshold_s=1)
    r = Running(path, cfg)
    try:
        # fill it at a pace that lets batches be built and anchored meanwhile (a store filled
        # within one anchor period holds only unbatched leaves: nothing to anchor or prune)
        r.push(flood(r.fed, 100))
        r.fed += 100
        wait_for(lambda: (r.d.anchor_status() or {}).get("last_anchored_batch_seq") is not None,
                 timeout=SLOW_S, what="a batch anchored")
        r.flood_until(lambda: r.d.store_status()["full"], "the store full", per=150,
                      rounds=200)
        assert r.d.store_dropped["batches"] > 0
        # no more flood: anchoring goes on, pruning frees room, and a small batch fits again
        wait_for(lambda: r.d.store.prune_status()["batches"] > 0, timeout=SLOW_S,
                 what="batches pruned")
        i = 0

        def recorded():
            nonlocal i
            r.push(flood(5 * 10**6 + i, 5))
            i += 5
            time.sleep(0.1)
            return not r.d.store_status()["full"]

        wait_for(recorded, timeout=SLOW_S, what="recording resumed")
        wait_for(lambda: any(x.getMessage().startswith("store has room again")
                             for x in caplog.records), timeout=SLOW_S, what="the log saying so")
        st = r.status()["store"]
        assert not st["full"] and st["full_episodes"] >= 1 and st["pruned"]["receipts"] > 0
    finally:
        r.stop()
    _verify(tmp_path, 512 << 10)


def test_store_errors_for_no_room(tmp_path):
    """A full map and a full disk are both StoreFullError (the daemon treats them alike)."""
    assert issubclass(StoreDiskFullError, StoreFullError)
    with Store(tmp_path / "s", 1, HASH, 4096, map_size=64 << 10) as s:
        p = fastpath.Pipeline(1, segment_records=16)
        p.resume(**s.resume_state())
        frames = flood(0, 4000)
        buf, desc = b"", b""
        for k, f in enumerate(frames):
            desc += fastpath.pack_desc(10**18 + k * 10**6, len(buf), len(f), len(f), 1, 1)
            buf += f
        p.feed(buf, desc)
        p.flush()
        with pytest.raises(StoreFullError) as e:
            s.commit(p.take())
        assert str(tmp_path / "s") in str(e.value) and str(64 << 10) in str(e.value)


ENOSPC_SCRIPT = r"""
import os, subprocess, sys
import fastpath
from beatd.store import Store, StoreDiskFullError, StoreFullError
from test_store_full import flood
d = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", d], check=True)
s = Store(os.path.join(d, "s"), 1, "sha3-256", 4096, map_size=64 << 20)
p = fastpath.Pipeline(1, segment_records=16)
p.resume(**s.resume_state())
committed, err = 0, None
for k in range(200):
    buf, desc = b"", b""
    for i, f in enumerate(flood(k * 200, 200)):
        desc += fastpath.pack_desc(10**18 + (k * 200 + i) * 10**6, len(buf), len(f), len(f), 1, 1)
        buf += f
    p.feed(buf, desc)
    try:
        s.commit(p.take())
        committed = s.stats()["records"]
    except StoreFullError as exc:
        err = exc
        p.rewind(**s.resume_state())
        break
assert isinstance(err, StoreDiskFullError), repr(err)
assert "no space left on the device of store.path" in str(err) and d in str(err), str(err)
assert s.verify() == [] and s.stats()["records"] == committed > 0
s.close()
s = Store(os.path.join(d, "s"), 1, "sha3-256", 4096, map_size=64 << 20)
assert s.verify() == [] and s.stats()["records"] == committed
print("ok", committed)
"""


def test_a_full_disk_is_a_full_store(tmp_path):
    """ENOSPC (a 256 KiB tmpfs in a mount namespace of its own): StoreDiskFullError, which is a
    StoreFullError, the message naming the path; what was committed stays whole and reopens."""
    from conftest import REPO, require_root
    require_root()
    import os
    import subprocess
    import sys
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        ENOSPC_SCRIPT, str(mnt)], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [REPO, os.path.join(REPO, "tests"),
                            os.path.join(REPO, "tests", "daemon")])})
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


def test_a_full_store_still_builds_a_smaller_batch(tmp_path):
    """A store filled within one anchor period holds only unbatched leaves: the tree levels of
    them all do not fit, so the anchor thread builds a batch of fewer (else nothing would ever be
    anchored, hence pruned, again)."""
    import lmdb

    from ledger_client.batcher import Batcher
    from test_batcher import MemLedger
    path, cfg, _ = write_config(tmp_path, _fake_pki(tmp_path))
    store = Store(cfg.store_path, 1, HASH, 4096, map_size=cfg.effective_map_size)
    b = Batcher(store, MemLedger(HASH), 1, HASH, "device-key", 1.0)   # its databases exist
    p = fastpath.Pipeline(1, segment_records=16)
    p.resume(**store.resume_state())
    try:
        for k in range(1000):
            frames = flood(k * 100, 100)
            buf, desc = b"", b""
            for i, f in enumerate(frames):
                desc += fastpath.pack_desc(10**18 + (k * 100 + i) * 10**6, len(buf), len(f),
                                           len(f), 1, 1)
                buf += f
            p.feed(buf, desc)
            store.commit(p.take())
    except StoreFullError:
        pass
    waiting = b.stats()["leaves_waiting"]
    assert waiting > 1000
    with pytest.raises(lmdb.MapFullError):
        b.build()
    from beatd.anchoring import build_smaller
    rec = build_smaller(b, cfg.store_path)
    assert rec is not None and 1 <= rec.tree_size < waiting and rec.first_leaf_seq == 0
    assert b.max_leaves == cfg.ledger_max_leaves and b.stats()["leaves_waiting"] == \
        waiting - rec.tree_size
    store.close()


def _fake_pki(tmp_path):
    """The TLS files the configuration wants to exist (never used: the daemon is not started)."""
    out = {}
    for name in ("ca", "cert", "key"):
        f = tmp_path / f"{name}.pem"
        f.write_text("unused")
        f.chmod(0o600)
        out[name] = str(f)
    return out
