"""One process at a time per store, on real daemons in network namespaces (docs/store.md, "One
process at a time").

A ``beatd run`` holds its store's lock for its whole life: a second ``beatd run`` on the same
store (its own metrics port and control socket), a ``beatd replay --store`` and a ``beatd dump``
are refused with exit 2, naming the holder's pid, and write nothing (the store's files compared
byte for byte while the holder is frozen with SIGSTOP, then its counts after it stopped); ``dump
--live`` reads a snapshot beside it. A daemon killed with SIGKILL leaves no lock behind: the next
one starts at once on the same store and continues it."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from beatd.control import request
from beatd.store import Store, lock_holder
from capture_files import write_pcap
from conftest import wait_for
from test_daemon import (NONE, OWN, PEER, ROOT, SLOW_S, beatd, config_text,  # noqa: F401
                         netns_pair, send, shutdown_bound_s, udp_frame)

HASH = "sha3-256"


def _start(d_ns, cfg):
    return subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _status(sock):
    try:
        return request(str(sock))
    except Exception:  # noqa: BLE001 (not up yet)
        return None


def _wait_up(proc, sock):
    wait_for(lambda: proc.poll() is not None or _status(sock) is not None, timeout=SLOW_S,
             what="the daemon's control socket")
    assert proc.poll() is None, proc.stderr.read()
    return _status(sock)


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=shutdown_bound_s() + 20.0)
    return rc, proc.stderr.read()


def _kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def _wait_stopped(pid, timeout=10.0):
    """Until every thread of pid is stopped (state T in /proc): a SIGSTOP is delivered to a
    running thread some time after kill() returns, and a write in progress finishes first."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:   # a thread that just ended
                pass
        if states and all(st in ("T", "t") for st in states):
            return
        assert time.monotonic() < deadline, f"pid {pid} not stopped: thread states {states}"
        time.sleep(0.01)


def _files(path):
    """name -> (size, mtime_ns, sha256) of every file of the store."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        st = os.stat(full)
        with open(full, "rb") as f:
            out[name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def _capture(path):
    """A capture of 40 frames from the peer: what a replay would add to the store."""
    recs = [(1_700_000_000 + i, 0, udp_frame(PEER, OWN, 10_000 + i, tag=9), 0) for i in range(40)]
    return write_pcap(path, [(s, f, d, len(d)) for s, f, d, _ in recs])


def test_a_second_daemon_a_replay_and_a_dump_are_refused_and_write_nothing(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(store, sock, interfaces=[d_if], metrics=""))
    cfg2 = tmp_path / "second.toml"         # the same store, its own socket and metrics port
    cfg2.write_text(config_text(store, tmp_path / "second.sock", interfaces=[d_if],
                                metrics="127.0.0.1:0"))
    pcap = _capture(tmp_path / "demo.pcap")
    proc = _start(d_ns, cfg)
    try:
        pid = _wait_up(proc, sock)["pid"]
        assert pid == proc.pid and lock_holder(store) == pid
        send(p_ns, p_if, 0, 50, 1)
        wait_for(lambda: _status(sock)["totals"]["records"] >= 50 and
                 _status(sock)["last_commit"]["commits"] > 0, timeout=SLOW_S,
                 what="50 records captured")
        # the live store read beside the daemon: one snapshot, nothing refused
        r = beatd("dump", "--config", str(cfg), "--json", "--live")
        assert r.returncode == 0, r.stderr
        live = [json.loads(x) for x in r.stdout.splitlines()]
        assert live[-1]["summary"]["records"] == len(live) - 1 <= 50

        # the holder frozen: whatever changes in the store's files now is the refused ones' doing
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            _wait_stopped(proc.pid)   # kill() returns before every thread has stopped writing
            before = _files(store)
            refused = {
                "run": beatd("run", "--config", str(cfg2), ns=d_ns, timeout=60),
                "replay": beatd("replay", str(pcap), "--store", str(store), "--node-id", "1",
                                timeout=60),
                "dump": beatd("dump", "--config", str(cfg), timeout=60),
            }
            after = _files(store)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        want = f"store {store} in use by pid {pid} (beatd run)"
        for what, r in refused.items():
            assert r.returncode == 2, (what, r.returncode, r.stderr)
            assert want in r.stderr, (what, r.stderr)
            assert "Traceback" not in r.stderr, (what, r.stderr)
        assert "beatd dump --live" in refused["dump"].stderr
        assert after == before, "a refused process wrote to the store"
        assert not (tmp_path / "second.sock").exists()
        # the holder goes on: its socket is its own, it captures and commits
        send(p_ns, p_if, 1000, 30, 2)
        wait_for(lambda: _status(sock)["totals"]["records"] >= 80, timeout=SLOW_S,
                 what="80 records captured")
        assert _status(sock)["failure"] is None and _status(sock)["state"] == "running"
        rc, err = _stop(proc)
    finally:
        _kill(proc)
    assert rc == 0, err
    assert "stopping on a failure" not in err
    assert lock_holder(store) is None
    # the store holds exactly what the daemon captured: no replayed frame, no count twice
    with Store(store, 1, HASH, 16 << 20, map_size=256 << 20) as s:
        assert s.verify() == []
        stats, counters = s.stats(), s.counters()
        records = list(s.iter_records())
    assert stats["frames"] == stats["records"] == len(records) == 80
    assert {k: v[0] for k, v in counters.items()} == {(7, NONE): 80}
    tags = {int.from_bytes(r[8:16], "big") for r in records}
    assert tags == {7}


def test_kill_9_then_a_restart_continues_the_store(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(config_text(store, sock, interfaces=[d_if], metrics=""))
    proc = _start(d_ns, cfg)
    try:
        _wait_up(proc, sock)
        send(p_ns, p_if, 0, 20, 1)
        # committed: a snapshot of the live store holds them all
        wait_for(lambda: json.loads(beatd("dump", "--config", str(cfg), "--json", "--live")
                                    .stdout.splitlines()[-1])["summary"]["records"] == 20,
                 timeout=SLOW_S, what="20 records committed")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        _kill(proc)
    with open(store / "beatd.lock") as f:
        assert f.read().split("\n")[0] == str(proc.pid)   # the dead holder's pid stays...
    assert lock_holder(store) is None                       # ...and names nobody
    if os.path.exists(sock):
        os.unlink(sock)             # a killed daemon leaves its socket file behind
    proc = _start(d_ns, cfg)
    try:
        st = _wait_up(proc, sock)
        assert st["state"] == "running" and lock_holder(store) == proc.pid
        send(p_ns, p_if, 100, 20, 1)
        wait_for(lambda: _status(sock)["totals"]["records"] >= 20, timeout=SLOW_S,
                 what="20 more records")
        rc, err = _stop(proc)
    finally:
        _kill(proc)
    assert rc == 0, err
    with Store(store, 1, HASH, 16 << 20, map_size=256 << 20) as s:
        assert s.verify() == []
        assert s.stats()["records"] == 40 and len(list(s.iter_records())) == 40
