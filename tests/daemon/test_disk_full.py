"""A full disk under a real daemon in a network namespace (docs/store.md, "The disk").

The store on a 4 MiB tmpfs of its own (mounted in a private directory, unmounted at teardown), a
file filling most of it, then traffic until a commit does not fit: the daemon says "no space
left on the device of store.path (P): N bytes free" in its log and status, its state is
``degraded: store full`` (not ``running``), it counts what it cannot record, and keeps answering
``beatd status``, the metrics and the Interrogation service; stopped and started again on the
still-full disk it starts, serves and says it is degraded (no crash loop); once the file is
removed it records again by itself; nothing committed is lost."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from beatd.store import Store
from conftest import wait_for
from test_daemon import ROOT, SLOW_S, config_text, netns_pair, send  # noqa: F401
from test_daemon_interrogation import _section, pki  # noqa: F401 (the pki fixture)
from test_daemon_ledger import _ledger
from test_store_exclusive import _kill, _start, _status, _stop, _wait_up

HASH = "sha3-256"
DISK = 4 << 20

CLIENT = r"""
import json, sys
from governance.client import InterrogationClient
from ledger_client.keys import DeviceKey
port, ca, cert, key, dev = sys.argv[1:6]
with InterrogationClient(f"127.0.0.1:{port}", ca, cert, key, "sha3-256", 1,
                         DeviceKey.load(dev).public) as c:
    print(json.dumps({"node_id": c.node_info().node_id,
                      "packets": sum(x.packets for x in c.counter_report())}))
"""

METRICS = ("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', "
           "timeout=30).read().decode())")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs on a private directory, unmounted at teardown."""
    from conftest import require_root
    require_root()
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path, leave):
    """A file taking all but about ``leave`` bytes of the filesystem of ``path``."""
    st = os.statvfs(path.parent)
    size = st.f_bavail * st.f_frsize - leave
    with open(path, "wb") as f:
        while size > 0:
            n = min(size, 1 << 20)
            f.write(b"\xff" * n)
            size -= n


def _ask(d_ns, st, pki, dev):
    port = st["interrogation"]["port"]
    r = subprocess.run(["ip", "netns", "exec", d_ns, sys.executable, "-c", CLIENT, str(port),
                        pki["ca"], pki["gov_cert"], pki["gov_key"], dev], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _metrics(d_ns):
    out = subprocess.run(["ip", "netns", "exec", d_ns, sys.executable, "-c", METRICS],
                         capture_output=True, text=True, timeout=60).stdout
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in out.splitlines()
            if line.startswith("beat_")}


def test_a_full_disk_degrades_serves_restarts_and_recovers(tmp_path, small_disk, netns_pair,
                                                            pki):  # noqa: F811
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = small_disk / "store", tmp_path / "control.sock"
    led, _, dev = _ledger(tmp_path)
    text = config_text(store, sock, interfaces=[d_if], metrics="127.0.0.1:9477")
    text = text.replace("[store]", "[governance]\nreceipt_epoch_ms = 100\nanchor_period_s = 0.3\n"
                                   "segment_records = 64\n[store]")
    text += (f'[ledger]\nbackend = "local"\npath = "{led}"\nkey = "{dev}"\n'
             "anchor_period_s = 0.3\n") + _section(pki)
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(text)
    filler = small_disk / "filler"
    want = f"no space left on the device of store.path ({store}): "

    proc = _start(d_ns, cfg)
    try:
        st = _wait_up(proc, sock)
        assert st["state"] == "running"
        send(p_ns, p_if, 0, 200, 1)
        wait_for(lambda: _status(sock)["last_commit"]["commits"] > 0 and
                 (_status(sock)["anchor"] or {}).get("last_anchored_batch_seq") is not None,
                 timeout=SLOW_S, what="records committed and anchored")
        _fill(filler, 192 << 10)
        sent = 200

        def full():
            nonlocal sent
            st = _status(sock)
            if st["state"] == "degraded: store full":
                return True
            send(p_ns, p_if, sent, 1500, 1)
            sent += 1500
            return False

        wait_for(full, timeout=SLOW_S * 2, what="the store full under traffic")
        st = _status(sock)
        assert want in st["state_reason"] and re.search(r"\d+ bytes free", st["state_reason"])
        assert st["store"]["full"] and want in st["store"]["full_error"]
        assert st["failure"] is None and proc.poll() is None
        from beatd.cli import format_status
        text = format_status(st)
        assert f"  state        degraded: store full ({want}" in text, text
        assert re.search(r"  disk         store \d+ bytes, \d+ bytes free", text), text
        # what it cannot record is counted
        dropped = st["store"]["dropped"]["records"]
        send(p_ns, p_if, sent, 1000, 1)
        sent += 1000
        wait_for(lambda: _status(sock)["store"]["dropped"]["records"] > dropped,
                 timeout=SLOW_S, what="records counted as dropped")
        # it serves: the Interrogation service, the metrics, the anchors already built
        got = _ask(d_ns, _status(sock), pki, dev)
        assert got["node_id"] == 1 and got["packets"] >= 200
        m = _metrics(d_ns)
        # (a store at the edge of full may fit a small batch between two that do not: the
        # gauge beat_store_full may be 0 at a scrape; the disk and the count say it)
        assert 0 <= m["beat_store_free_bytes"] < 1 << 20
        assert m['beat_store_dropped_total{what="records"}'] > 0
        assert m["beat_store_bytes"] > 0
        wait_for(lambda: (_status(sock)["anchor"] or {}).get("pending_anchors") == 0,
                 timeout=SLOW_S, what="the batches built anchored")
        rc, err = _stop(proc)
    finally:
        _kill(proc)
    assert rc == 0, err
    assert want in err                                   # the log says it, in those words
    assert "map_size" in err and "the disk will fill before the map" in err  # warned at start
    with Store(store, 1, HASH, 16 << 20, map_size=256 << 20, lock=False, readonly=True) as s:
        assert s.verify() == []
        committed = s.stats()["records"]
    assert committed >= 200

    # a restart on the still-full disk: it starts, serves, says degraded, does not stop
    proc = _start(d_ns, cfg)
    try:
        st = _wait_up(proc, sock)
        assert st["state"].startswith("degraded"), st["state"]
        assert want in st["state_reason"]
        send(p_ns, p_if, sent, 1000, 1)
        sent += 1000
        wait_for(lambda: _status(sock)["store"]["dropped"]["records"] > 0, timeout=SLOW_S,
                 what="records counted as dropped after the restart")
        time.sleep(2.0)
        assert proc.poll() is None
        st = _status(sock)
        assert st["state"].startswith("degraded") and st["failure"] is None
        assert _ask(d_ns, st, pki, dev)["packets"] >= 200
        # room again: it records by itself
        os.unlink(filler)
        commits = st["last_commit"]["commits"]
        records = st["totals"]["records"]

        def recording():
            nonlocal sent
            send(p_ns, p_if, sent, 50, 1)
            sent += 50
            s = _status(sock)
            # (a commit alone may hold only gap records: wait for records too)
            return (s["state"] == "running" and s["last_commit"]["commits"] > commits
                    and s["totals"]["records"] > records)

        wait_for(recording, timeout=SLOW_S, what="recording again once there is room")
        rc, err = _stop(proc)
    finally:
        _kill(proc)
    assert rc == 0, err
    # (the "store has room again" line is rate-limited: status said it above)
    assert f"running, degraded: store full node_id=1 reason={want}" in err, err
    with Store(store, 1, HASH, 16 << 20, map_size=256 << 20) as s:
        assert s.verify() == []
        assert s.stats()["records"] > committed        # nothing committed lost, and more since
