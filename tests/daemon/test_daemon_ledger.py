"""The daemon's ledger anchoring (``[ledger]``): configuration, the anchor thread on a ``local``
ledger, ``beatd status`` and the metrics, and a node the ledger does not know yet.

No root needed: the daemon runs in-process with the stand-in capture source of test_daemon.py
(the real rings and SIGTERM are covered by tests/lab/test_lab_ledger.py).
"""
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import beatd.daemon
from beatd import config as bconfig
from beatd.control import request
from beatd.daemon import Daemon, DaemonError
from beatd.metrics import ANCHOR_METRICS
from beatd.store import Store
from ledger_client import merkle
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from beatd.store import Outbox
from ledger_client.types import Node

from conftest import wait_for
from test_daemon import (OWN, PEER, ROOT, SLOW_S, config_text, shutdown_bound_s,
                         stand_in_factory, udp_frame)

NODE = 1
HASH = "sha3-256"
# waits on anchoring progress: generous (a ledger call can take seconds on a loaded machine);
# they return as soon as the condition holds
LEDGER_WAIT_S = 60.0
# for the tests that check everything anchored after shutdown: the final submission attempt
# (bounded by beatd.daemon.FINAL_ANCHOR_TIMEOUT_S, 1 s) must have time to finish on a slow machine
PATIENT_FINAL_ANCHOR_S = 30.0


def patient_final_anchor(monkeypatch):
    """Give the shutdown's final anchor attempt PATIENT_FINAL_ANCHOR_S (read at call time)."""
    monkeypatch.setattr(beatd.daemon, "FINAL_ANCHOR_TIMEOUT_S", PATIENT_FINAL_ANCHOR_S)


# -- configuration ---------------------------------------------------------------------------

def _key(tmp_path, name="device.ed25519", mode=0o600):
    k = DeviceKey.generate()
    path = tmp_path / name
    k.save(path)
    os.chmod(path, mode)
    return k, str(path)


def test_ledger_defaults_to_local_beside_the_store(tmp_path):
    c = bconfig.from_dict({"node_id": 1})
    assert c.ledger_backend == "local" and c.ledger_enabled
    assert c.ledger_path == "/var/lib/beatd/ledger.lmdb" and c.ledger_path_default
    assert c.ledger_key == "/var/lib/beatd/device.ed25519" and c.ledger_key_default
    c = bconfig.from_dict({"node_id": 1, "store": {"path": str(tmp_path / "s")}})
    assert c.ledger_path == str(tmp_path / "s" / "ledger.lmdb")
    _, key = _key(tmp_path)
    c = bconfig.from_dict({"node_id": 1, "ledger": {"key": key}})
    assert c.ledger_key == key and not c.ledger_key_default and c.ledger_path_default
    c = bconfig.from_dict({"node_id": 1, "ledger": {"backend": "none"}})
    assert not c.ledger_enabled and c.ledger_path is None
    with pytest.raises(bconfig.ConfigError, match='ledger.path: not set, and store.path "rel" is '
                       'not absolute'):
        bconfig.from_dict({"node_id": 1, "store": {"path": "rel"}})
    assert c.effective_ledger_anchor_period_s == c.anchor_period_s == 10.0
    assert c.ledger_max_leaves == 1 << 16
    c = bconfig.from_dict({"node_id": 1, "governance": {"anchor_period_s": 3}})
    assert c.effective_ledger_anchor_period_s == 3.0


def test_ledger_local_values(tmp_path):
    _, key = _key(tmp_path)
    c = bconfig.from_dict({"node_id": 1, "ledger": {
        "backend": "local", "path": str(tmp_path / "l.mdb"), "key": key, "anchor_period_s": 0.5,
        "max_leaves": 100}})
    assert (c.ledger_backend, c.ledger_path, c.ledger_key) == ("local", str(tmp_path / "l.mdb"),
                                                               key)
    assert c.effective_ledger_anchor_period_s == 0.5 and c.ledger_max_leaves == 100


def test_ledger_config_errors_name_the_key(tmp_path):
    _, key = _key(tmp_path)
    _, open_key = _key(tmp_path, "open.ed25519", 0o644)
    led = str(tmp_path / "l.mdb")
    cases = [
        ({"backend": "chain"}, 'ledger.backend: "chain" is not one of none, local, ethereum'),
        ({"backend": "local", "path": "rel.mdb", "key": key},
         'ledger.path: "rel.mdb" is not an absolute path'),
        ({"backend": "local", "path": led, "key": str(tmp_path / "nokey")},
         f'ledger.key: "{tmp_path / "nokey"}": cannot use the key file: No such file'),
        ({"backend": "local", "path": led, "key": open_key},
         f'ledger.key: "{open_key}": mode 0644 lets group/others'),
        ({"backend": "local", "path": led, "key": str(tmp_path)}, "is not a regular file"),
        ({"backend": "local", "path": led, "key": key, "anchor_period_s": 0},
         "ledger.anchor_period_s: 0 must be more than 0"),
        ({"backend": "local", "path": led, "key": key, "max_leaves": "many"},
         'ledger.max_leaves: "many" is not an integer'),
        ({"backend": "local", "path": 3, "key": key}, "ledger.path: 3 is not a non-empty string"),
        ({"backend": "ethereum", "key": key, "contract": "00" * 20}, "ledger.url: missing"),
        ({"backend": "ethereum", "key": key, "url": "http://127.0.0.1:8545"},
         "ledger.contract: missing"),
        ({"backend": "ethereum", "key": key, "url": "http://x:1", "contract": "0x12"},
         'ledger.contract: "0x12" is not a contract address'),
        ({"colour": "red"}, "ledger.colour: unknown key"),
    ]
    for raw, message in cases:
        with pytest.raises(bconfig.ConfigError) as e:
            bconfig.from_dict({"node_id": 1, "ledger": raw})
        assert message in str(e.value), (raw, str(e.value))


def test_run_names_a_bad_ledger_key_and_exits_2(tmp_path):
    cfg = tmp_path / "beatd.toml"
    missing = tmp_path / "keys" / "device.ed25519"
    cfg.write_text(config_text(tmp_path / "s", tmp_path / "c.sock", extra="") +
                   f'[ledger]\nbackend = "local"\npath = "{tmp_path / "l.mdb"}"\n'
                   f'key = "{missing}"\n')
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert f'ledger.key: "{missing}": cannot use the key file' in r.stderr


def _cfg(tmp_path, ledger_lines, metrics="127.0.0.1:0"):
    path = tmp_path / "beatd.toml"
    text = config_text(tmp_path / "store", tmp_path / "control.sock", metrics=metrics)
    # short periods: receipts every 100 ms, segments closed every 0.5 s, a batch every 0.3 s
    text = text.replace("[store]", "[governance]\nreceipt_epoch_ms = 100\nanchor_period_s = 0.5\n"
                                   "[store]")
    path.write_text(text + "[ledger]\n" + ledger_lines)
    return path, bconfig.load(path)


def test_ethereum_not_available_is_named(tmp_path, monkeypatch):
    _, key = _key(tmp_path)
    _, cfg = _cfg(tmp_path, f'backend = "ethereum"\nurl = "http://127.0.0.1:1"\n'
                            f'contract = "{"ab" * 20}"\nkey = "{key}"\n', metrics="")
    import ledger_client
    monkeypatch.setitem(sys.modules, "ledger_client.ethereum", None)   # import fails
    monkeypatch.delattr(ledger_client, "ethereum", raising=False)
    d = Daemon(cfg, source_factory=stand_in_factory([]))
    with pytest.raises(DaemonError) as e:
        d.start()
    assert 'ledger.backend: "ethereum" is not installed' in str(e.value)
    assert "pip install 'beat[ethereum]'" in str(e.value)
    assert d.store is None       # everything opened was closed again


def test_missing_local_ledger_is_named(tmp_path):
    _, key = _key(tmp_path)
    led = tmp_path / "none.mdb"
    _, cfg = _cfg(tmp_path, f'backend = "local"\npath = "{led}"\nkey = "{key}"\n', metrics="")
    d = Daemon(cfg, source_factory=stand_in_factory([]))
    with pytest.raises(DaemonError) as e:
        d.start()
    assert f'ledger.path: "{led}": no such ledger' in str(e.value)
    assert not led.exists()


def test_default_ledger_waits_for_the_governance_then_anchors(tmp_path, monkeypatch):
    """No [ledger] section: the daemon makes its key beside the store (0600), keeps capturing
    while no ledger exists (the batches wait, the error names the path), and anchors everything
    once the governance creates the ledger and registers the node."""
    patient_final_anchor(monkeypatch)
    cfg_path = tmp_path / "beatd.toml"
    text = config_text(tmp_path / "store", tmp_path / "control.sock", metrics="")
    text = text.replace("[store]", "[governance]\nreceipt_epoch_ms = 100\nanchor_period_s = 0.3\n"
                                   "[store]")
    cfg_path.write_text(text)
    cfg = bconfig.load(cfg_path)
    assert cfg.ledger_backend == "local" and cfg.ledger_key_default
    key_path = tmp_path / "store" / "device.ed25519"
    led_path = tmp_path / "store" / "ledger.lmdb"
    sources = []
    d, main = _run(cfg, cfg_path, sources)
    try:
        assert key_path.exists() and (os.stat(key_path).st_mode & 0o777) == 0o600
        dev = DeviceKey.load(key_path)
        _push_rounds(d, sources[0], 3)
        wait_for(lambda: (d.anchor_status() or {}).get("pending_anchors", 0) >= 1,
                 timeout=LEDGER_WAIT_S, what="a batch waiting for the ledger")
        wait_for(lambda: (d.anchor_status() or {}).get("last_error"), timeout=LEDGER_WAIT_S,
                 what="the submission error")
        st = d.anchor_status()
        assert str(led_path) in st["last_error"] and "no ledger here yet" in st["last_error"]
        assert st["last_anchored_batch_seq"] is None and not st["halted"]
        gov = DeviceKey.generate()
        with LocalLedger(led_path, hash_name=HASH, governance_pubkey=gov) as lg:
            lg.register_node(Node(NODE, "test", dev.public, None), signer=gov)
        d.batcher.resume()        # what SIGHUP does; without it the backoff (<= 30 s) decides
        _push_rounds(d, sources[0], 2, start=1000)
        wait_for(lambda: (d.anchor_status() or {}).get("pending_anchors") == 0 and
                 (d.anchor_status() or {}).get("last_anchored_batch_seq") is not None,
                 timeout=LEDGER_WAIT_S, what="the waiting batches anchored")
    finally:
        _stop(d, main)
    anchors, kinds = _check_everything_anchored(tmp_path, str(led_path))
    assert len(anchors) >= 2


# -- the anchor thread on a local ledger -----------------------------------------------------

def _ledger(tmp_path, register=True):
    """A local ledger (governance key saved for beatctl) and the device key; the node registered
    when ``register``."""
    gov = DeviceKey.generate()
    gov_path = tmp_path / "gov.ed25519"
    gov.save(gov_path)
    dev, dev_path = _key(tmp_path)
    with open(dev_path + ".pub", "w") as f:
        f.write(dev.public_hex + "\n")
    led = tmp_path / "ledger.mdb"
    with LocalLedger(led, hash_name=HASH, governance_pubkey=gov) as lg:
        # another node, so that the ledger is not empty either way
        lg.register_node(Node(99, "other", DeviceKey.generate().public, None), signer=gov)
        if register:
            lg.register_node(Node(NODE, "test", dev.public, None), signer=gov)
    return str(led), str(gov_path), dev_path


def _run(cfg, cfg_path, sources):
    d = Daemon(cfg, config_path=str(cfg_path), source_factory=stand_in_factory(sources))
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    return d, main


def _stop(d, main):
    """Stop the daemon; its shutdown must end within its bound (FINAL_ANCHOR_TIMEOUT_S as the test
    set it, plus the other joins and a margin): a hang detector, not a speed measure."""
    d.request_stop()
    main.join(timeout=SLOW_S)
    assert not main.is_alive(), "serve() did not return after request_stop()"
    bound = shutdown_bound_s()
    t0 = time.monotonic()
    d.shutdown()
    took = time.monotonic() - t0
    assert took < bound, f"shutdown took {took:.2f} s (bound {bound:g} s): hung?"
    assert d.failure is None


def _push_rounds(d, src, rounds, per_round=30, gap=0.25, start=0):
    n = d.pipeline.totals()["frames"]
    for k in range(rounds):
        src.push([udp_frame(PEER, OWN, start + k * per_round + i, 1) for i in range(per_round)])
        n += per_round
        wait_for(lambda: d.pipeline.totals()["frames"] == n, timeout=SLOW_S,
                 what=f"{n} frames fed")
        time.sleep(gap)


def _check_everything_anchored(tmp_path, led_path):
    """Every leaf of the store's outbox is in an anchored batch, its stored proof verifies against
    the root ON THE LEDGER (with the ledger's tree_size); batch_seq 0..k without a gap."""
    with LocalLedger(led_path, hash_name=None) as lg:
        anchors = lg.anchors(NODE)
        assert lg.verify_chain() == []
        assert lg.anchors(99) == []
    assert anchors, "no anchors on the ledger"
    assert [a.batch_seq for a in anchors] == list(range(len(anchors)))
    by_seq = {a.batch_seq: a for a in anchors}
    with Store(tmp_path / "store", node_id=NODE, hash_name=HASH, ring_size=16 << 20,
               map_size=256 << 20) as st:
        leaves = st.outbox()
        ob = Outbox(st)
        batches = ob.batches()
        assert [b.batch_seq for b in batches] == list(range(len(anchors)))
        assert all(b.status == 1 for b in batches), "a batch is still pending in the store"
        assert leaves and [seq for seq, _, _ in leaves] == list(range(len(leaves)))
        assert sum(a.tree_size for a in anchors) == len(leaves)
        for seq, kind, value in leaves:
            p = ob.proof(seq)
            assert p is not None, f"leaf {seq} is in no batch"
            batch_seq, index, proof = p
            a = by_seq[batch_seq]
            assert batches[batch_seq].root == a.root
            assert merkle.verify_inclusion(HASH, bytes([kind]) + value, index, a.tree_size,
                                           proof, a.root), f"leaf {seq}: proof does not verify"
        kinds = {kind for _, kind, _ in leaves}
    return anchors, kinds


def test_daemon_anchors_on_local_ledger(tmp_path, monkeypatch):
    patient_final_anchor(monkeypatch)
    led, _, key = _ledger(tmp_path)
    cfg_path, cfg = _cfg(tmp_path, f'backend = "local"\npath = "{led}"\nkey = "{key}"\n'
                                   "anchor_period_s = 0.3\n")
    sources = []
    d, main = _run(cfg, cfg_path, sources)
    try:
        _push_rounds(d, sources[0], 6)
        wait_for(lambda: (request(str(tmp_path / "control.sock"))["anchor"] or {})
                 .get("last_anchored_batch_seq") is not None, timeout=LEDGER_WAIT_S,
                 what="an anchor")
        st = request(str(tmp_path / "control.sock"), timeout=SLOW_S)
        a = st["anchor"]
        for k in ("leaves_waiting", "pending_anchors", "last_anchored_batch_seq", "retries",
                  "last_error", "halted", "backend", "ledger"):
            assert k in a, k
        assert a["backend"] == "local" and a["ledger"] == led and a["last_error"] is None
        assert a["anchors_submitted"] >= 1 and not a["halted"]

        # beatd status --json (the CLI) shows the same state
        r = subprocess.run([sys.executable, "-m", "beatd", "status", "--socket",
                            str(tmp_path / "control.sock"), "--json"],
                           capture_output=True, text=True, timeout=20, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)["anchor"]
        assert got["backend"] == "local" and got["last_anchored_batch_seq"] >= 0

        text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=SLOW_S).read().decode()
        for name in ANCHOR_METRICS:
            assert name in text, name
        assert "beat_anchor_retries_total 0.0" in text
        _push_rounds(d, sources[0], 2, start=1000, gap=0.05)
    finally:
        _stop(d, main)
    anchors, kinds = _check_everything_anchored(tmp_path, led)
    assert len(anchors) >= 2
    assert 2 in kinds, "segment commitments are anchored"   # (receipts need joined pairs)


def test_unregistered_node_is_refused_then_catches_up(tmp_path, caplog, monkeypatch):
    patient_final_anchor(monkeypatch)
    led, gov, key = _ledger(tmp_path, register=False)
    cfg_path, cfg = _cfg(tmp_path, f'backend = "local"\npath = "{led}"\nkey = "{key}"\n'
                                   "anchor_period_s = 0.3\n", metrics="")
    sock = str(tmp_path / "control.sock")
    sources = []
    caplog.set_level(logging.INFO)
    d, main = _run(cfg, cfg_path, sources)
    try:
        _push_rounds(d, sources[0], 4)
        wait_for(lambda: (request(sock)["anchor"] or {}).get("halted"), timeout=LEDGER_WAIT_S,
                 what="submission halted")
        a = request(sock, timeout=SLOW_S)["anchor"]
        assert "PermissionDenied" in a["last_error"]
        assert a["last_anchored_batch_seq"] is None and a["pending_anchors"] >= 1
    finally:
        _stop(d, main)
    logged = "\n".join(r.getMessage() + " " + json.dumps(getattr(r, "fields", {}), default=str)
                       for r in caplog.records)
    assert "not registered" in logged and "PermissionDenied" in logged
    with LocalLedger(led, hash_name=None) as lg:
        assert lg.anchors(NODE) == []
    with Store(tmp_path / "store", node_id=NODE, hash_name=HASH, ring_size=16 << 20,
               map_size=256 << 20) as st:
        waiting = len(st.outbox())
        pending = [b for b in Outbox(st).batches() if b.status == 0]
    assert waiting and pending, "the refused batches are kept in the store"

    # the governance registers the node (beatctl), the daemon restarts: everything is anchored
    r = subprocess.run([sys.executable, "-m", "governance.cli", "--ledger", f"local:{led}",
                        "--key", gov, "register-node", "--node-id", str(NODE), "--owner", "test",
                        "--pubkey-file", key + ".pub"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sources = []
    d, main = _run(cfg, cfg_path, sources)
    try:
        wait_for(lambda: (request(sock)["anchor"] or {}).get("pending_anchors") == 0,
                 timeout=LEDGER_WAIT_S, what="the pending anchors submitted")
        assert request(sock, timeout=SLOW_S)["anchor"]["last_error"] is None
        _push_rounds(d, sources[0], 1, start=5000, gap=0.05)
    finally:
        _stop(d, main)
    anchors, _ = _check_everything_anchored(tmp_path, led)
    assert sum(a.tree_size for a in anchors) >= waiting
