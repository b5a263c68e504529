"""Capture gaps: what a device says it may have missed, written by the daemon into the store's
``capture_gaps`` database (docs/interrogation.md, the coverage; beatd/daemon.py).

Without root: the daemon in-process with the stand-in source of test_daemon.py, whose kernel
drop counter the test moves: each rise becomes a gap over the snapshot interval, on the ring's
interface, with the frames dropped; a restart on the same store writes a "capture stopped" gap
from the previous run's end of capture to this start; ``beatd status`` shows them. As root:
``beatd run`` in a namespace with a tiny capture ring flooded from the peer namespace (the kernel
really drops), then restarted.
"""
import json
import signal
import subprocess
import sys
import threading
import time

from beatd import config as bconfig
from beatd.cli import format_status
from beatd.control import request
from beatd.daemon import Daemon
from beatd.store import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, Store
from conftest import wait_for
from test_daemon import (OWN, PEER, ROOT, SLOW_S, StandIn, config_text, netns_pair,  # noqa: F401
                         send, shutdown_bound_s, udp_frame)


class Dropping(StandIn):
    """A stand-in whose kernel drop counter the test sets."""
    drops = 0

    def kernel_stats(self):
        return {"packets": self.frames + self.drops, "drops": self.drops, "freeze_q_cnt": 0}


def gaps_of(store_path):
    with Store(store_path, node_id=1, hash_name="sha3-256", ring_size=16 << 20,
               map_size=256 << 20) as st:
        return st.capture_gaps(), st.capture_alive_t_ns()


def _run(cfg, sources):
    d = Daemon(cfg, source_factory=lambda interfaces, *a: sources.append(Dropping(interfaces[0]))
               or [sources[-1]])
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    return d, main


def _stop(d, main):
    d.request_stop()
    main.join(timeout=SLOW_S)
    d.shutdown()
    assert d.failure is None


def test_kernel_drops_and_a_restart_become_gaps(tmp_path):
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, metrics=""))
    cfg = bconfig.load(cfg_path)
    sources = []
    d, main = _run(cfg, sources)
    try:
        started = d._capture_started_ns
        st = request(str(sock), timeout=SLOW_S)
        # a fresh store: nothing was captured before this first start
        assert st["capture_gaps"] == {"count": 1, "last": {
            "from_ns": 0, "to_ns": started, "frames_dropped": 0, "reason": "capture stopped",
            "interface": ""}}
        sources[0].push([udp_frame(PEER, OWN, i, 1) for i in range(10)])
        t_before = time.time_ns()
        sources[0].drops = 5                      # the kernel dropped 5 frames
        wait_for(lambda: request(str(sock))["capture_gaps"]["count"] == 2, timeout=SLOW_S,
                 what="the kernel drops' gap in the status")
        sources[0].drops = 12                     # 7 more, a snapshot or more later
        wait_for(lambda: request(str(sock))["capture_gaps"]["last"]["frames_dropped"] in (7, 12),
                 timeout=SLOW_S, what="the second drops in the status")
        st = request(str(sock))
        text = format_status(st)
        assert "capture gaps " in text and "kernel drops on stand0" in text, text
    finally:
        _stop(d, main)
    ended = d._capture_ended_ns
    gaps, alive = gaps_of(store)
    assert alive == ended
    assert gaps[0] == (0, started, 0, GAP_CAPTURE_STOPPED, "")
    gaps = gaps[1:]
    assert sum(g[2] for g in gaps) == 12 and {g[3:] for g in gaps} == {(GAP_KERNEL_DROPS,
                                                                        "stand0")}
    # every gap spans the snapshot interval where its drops were counted: after the start,
    # the first ending after the counter moved, the last before the end of capture
    assert all(started <= g[0] < g[1] <= ended for g in gaps)
    assert gaps[0][1] >= t_before and gaps[0][0] <= t_before + 10**9
    # contiguous drops (one snapshot interval after the other) are one gap
    assert len(gaps) in (1, 2)

    time.sleep(0.3)
    d2, main2 = _run(cfg, sources)
    try:
        restarted = d2._capture_started_ns
        st = request(str(sock), timeout=SLOW_S)
        assert st["capture_gaps"]["count"] == len(gaps) + 2
        assert st["capture_gaps"]["last"] == {"from_ns": ended, "to_ns": restarted,
                                              "frames_dropped": 0, "reason": "capture stopped",
                                              "interface": ""}
        assert "last: capture stopped on every interface" in format_status(st)
    finally:
        _stop(d2, main2)
    gaps2, _ = gaps_of(store)
    assert (ended, restarted, 0, GAP_CAPTURE_STOPPED, "") in gaps2
    assert restarted - ended >= 0.3e9


def test_the_alive_time_moves_while_nothing_is_captured(tmp_path):
    """A quiet link: capture_alive_t_ns is written about once a second all the same, so that a
    crash (no stop) leaves a "capture stopped" gap that starts at most about a second early."""
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg_path = tmp_path / "beatd.toml"
    cfg_path.write_text(config_text(store, sock, metrics=""))
    cfg = bconfig.load(cfg_path)
    d, main = _run(cfg, [])
    try:
        t0 = d.store.capture_alive_t_ns()
        wait_for(lambda: d.store.capture_alive_t_ns() > t0 + 10**9, timeout=SLOW_S,
                 what="capture_alive_t_ns moving on")
    finally:
        _stop(d, main)


# -- root: the kernel really drops ----------------------------------------------------------------

def _status(sock):
    try:
        return request(str(sock))
    except Exception:  # noqa: BLE001
        return None


def _beatd_run(d_ns, cfg):
    return subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _term(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=shutdown_bound_s() + 20.0) == 0, proc.stderr.read()


def test_a_flooded_small_ring_drops_and_says_so(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"
    text = config_text(store, sock, interfaces=[d_if], metrics="")
    text = text.replace('block_size = "256KiB"', 'block_size = "4KiB"').replace(
        "block_count = 4", "block_count = 2")             # 4 frames of room: a burst overflows it
    cfg.write_text(text)
    proc = _beatd_run(d_ns, cfg)
    try:
        wait_for(lambda: proc.poll() is not None or _status(sock) is not None, timeout=SLOW_S,
                 what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        t_start = time.time_ns()
        for burst in range(10):
            send(p_ns, p_if, burst * 5000, 5000, 1)
            st = _status(sock)
            if st and st["kernel_drops"] > 0 and st["capture_gaps"]["count"] > 0:
                break
        wait_for(lambda: _status(sock)["kernel_drops"] > 0, timeout=SLOW_S,
                 what="kernel drops on the tiny ring")
        # the new store's "capture stopped" gap (before its first start) is there from the start:
        # wait for the drops' own gap, committed after the drops are counted
        wait_for(lambda: (_status(sock)["capture_gaps"]["last"] or {}).get("reason")
                 == "kernel drops", timeout=SLOW_S, what="a kernel-drops gap in the status")
        st = _status(sock)
        seen_drops = st["kernel_drops"]
        last = st["capture_gaps"]["last"]
        assert last["reason"] == "kernel drops" and last["frames_dropped"] > 0
        assert last["interface"] in ("any", d_if)
        r = subprocess.run([sys.executable, "-m", "beatd", "status", "--socket", str(sock)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 0 and "capture gaps " in r.stdout, r.stdout + r.stderr
        _term(proc)
        t_stop = time.time_ns()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gaps, alive = gaps_of(store)
    drops = [g for g in gaps if g[3] == GAP_KERNEL_DROPS]
    assert drops and sum(g[2] for g in drops) >= seen_drops > 0
    assert all(t_start - 30 * 10**9 < g[0] < g[1] <= alive <= t_stop for g in drops)
    # the only "capture stopped" gap is the new store's: before its first start
    first = [g for g in gaps if g[3] == GAP_CAPTURE_STOPPED]
    assert len(first) == 1 and first[0][0] == 0 and first[0][1] <= t_start

    # a restart: the time the daemon was not running is a gap too
    time.sleep(0.5)
    proc = _beatd_run(d_ns, cfg)
    try:
        wait_for(lambda: proc.poll() is not None or _status(sock) is not None, timeout=SLOW_S,
                 what="the control socket, again")
        assert proc.poll() is None, proc.stderr.read()
        st = _status(sock)
        assert st["capture_gaps"]["last"]["reason"] == "capture stopped"
        assert st["capture_gaps"]["last"]["from_ns"] == alive
        _term(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gaps2, _ = gaps_of(store)
    stopped = [g for g in gaps2 if g[3] == GAP_CAPTURE_STOPPED and g[0] > 0]
    assert len(stopped) == 1 and stopped[0][0] == alive and stopped[0][1] - alive >= 0.5e9
    assert [g for g in gaps2 if g[3] == GAP_KERNEL_DROPS] == drops or \
        sum(g[2] for g in gaps2 if g[3] == GAP_KERNEL_DROPS) >= sum(g[2] for g in drops)
    print(json.dumps({"gaps": len(gaps2), "dropped": sum(g[2] for g in drops)}))
