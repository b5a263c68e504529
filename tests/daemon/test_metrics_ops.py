"""The metrics an operator expects beside the evidence, scraped from a real ``beatd run`` in a
network namespace (root): ``beat_build_info``, the process metrics, the commit-duration histogram
``beat_store_commit_seconds``, ``beat_last_anchor_timestamp_seconds`` (a local ledger with the
node registered) and the last reload's outcome (a rejected file, then a good one).
Without root: the histogram's buckets, and the process start time where /proc/stat is hidden
(the unit's ProcSubset=pid).
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from beatd import __version__
from beatd.control import request
from beatd.metrics import OPS_METRICS, PROCESS_METRICS, Durations, ProcessMetrics, build_info
from conftest import require_root, wait_for
from test_daemon import (OWN, PEER, ROOT, SLOW_S, config_text, netns_pair, send,  # noqa: F401
                         shutdown_bound_s)
from test_daemon_ledger import _ledger

METRICS_PORT = 9479
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse(text):
    """``{(name, labels): value}`` of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not an exposition line: {line!r}"
        out[(m.group(1), norm(m.group(2) or ""))] = float(m.group(3))
    return out


def norm(labels):
    """Labels in one order (the exposition's order is the library's choice)."""
    pairs = re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', labels)
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs)) + "}" if pairs else ""


def scrape(ns):
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                        "import urllib.request;print(urllib.request.urlopen("
                        f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=30).read().decode())"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def one(values, name, labels=""):
    labels = norm(labels)
    assert (name, labels) in values, f"{name}{labels} not in the metrics"
    return values[(name, labels)]


def test_durations_buckets_are_cumulative():
    d = Durations(buckets=(0.001, 0.01, 0.1))
    for s in (0.0005, 0.001, 0.002, 0.05, 0.05, 3.0):
        d.observe(s)
    buckets, total = d.snapshot()
    assert buckets == [("0.001", 2), ("0.01", 3), ("0.1", 5), ("+Inf", 6)]
    assert total == pytest.approx(3.1035)


def test_process_start_time_without_proc_stat(monkeypatch):
    """Where /proc/stat is hidden (ProcSubset=pid) the start time comes from CLOCK_BOOTTIME and
    agrees with /proc/stat's btime."""
    def metrics(c):
        return {m.name: m.samples[0].value for m in c.collect()}
    real = metrics(ProcessMetrics())
    from prometheus_client.process_collector import ProcessCollector

    def hidden(self):
        raise OSError(2, "No such file or directory", "/proc/stat")
    monkeypatch.setattr(ProcessCollector, "_boot_time", hidden)
    got = metrics(ProcessMetrics())
    assert set(got) == set(real) and "process_start_time_seconds" in got
    assert abs(got["process_start_time_seconds"] - real["process_start_time_seconds"]) < 1.5
    assert got["process_open_fds"] >= 3 and got["process_resident_memory_bytes"] > 1 << 20


def test_operator_metrics_of_a_running_daemon(tmp_path, netns_pair):
    require_root()
    d_ns, d_if, p_ns, p_if = netns_pair
    led, _, key = _ledger(tmp_path)
    store, sock = tmp_path / "store", tmp_path / "control.sock"
    cfg = tmp_path / "beatd.toml"

    def write(extra=""):
        text = config_text(store, sock, interfaces=[d_if], metrics=f"127.0.0.1:{METRICS_PORT}")
        text = text.replace("[store]", "[governance]\nreceipt_epoch_ms = 100\n"
                                       "anchor_period_s = 0.3\n[store]")
        cfg.write_text(extra + text + f'[ledger]\nbackend = "local"\npath = "{led}"\n'
                                      f'key = "{key}"\nanchor_period_s = 0.3\n')
    write()
    t0 = time.time()
    proc = subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or request(str(sock)) is not None,
                 timeout=SLOW_S, what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        t_up = time.time()
        pid = request(str(sock))["pid"]
        v = parse(scrape(d_ns))
        anchored = (request(str(sock))["anchor"] or {}).get("last_anchored_batch_seq")
        # before any anchor: 0. The start's capture-stopped gap record is a leaf, so the first
        # anchor may land before this scrape (period 0.3 s): then its time, since the start.
        # The status is read after the scrape: nothing anchored then means nothing before.
        last = one(v, "beat_last_anchor_timestamp_seconds")
        if anchored is None:
            assert last == 0
        else:
            assert last == 0 or t0 - 1 <= last <= time.time() + 1
        # before any SIGHUP: the start's load is the last one, and it succeeded
        assert one(v, "beat_config_last_reload_success") == 1
        assert t0 - 1 <= one(v, "beat_config_last_reload_timestamp_seconds") <= t_up + 1

        send(p_ns, p_if, 0, 60, 1)
        wait_for(lambda: (request(str(sock))["anchor"] or {}).get("last_anchored_batch_seq")
                 is not None, timeout=SLOW_S, what="an anchor on the ledger")
        t_anchor = time.time()
        text = scrape(d_ns)
        v = parse(text)
        for name in OPS_METRICS + PROCESS_METRICS:
            assert f"\n{name}" in "\n" + text, name

        info = build_info()
        labels = '{version="%s",python="%s",simd="%s"}' % (__version__, info["python"],
                                                          info["simd"])
        assert one(v, "beat_build_info", labels) == 1
        assert info["python"] == ".".join(map(str, sys.version_info[:3]))
        import fastpath
        if fastpath.IMPL == "c":
            from fastpath._native import simd
            assert info["simd"] == simd() and info["simd"] != "pure-python"

        # the process: this daemon's own numbers, read independently from /proc/PID
        assert t0 - 2 <= one(v, "process_start_time_seconds") <= t_up + 1
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        assert abs(one(v, "process_open_fds") - fds) <= 4
        with open(f"/proc/{pid}/status") as f:
            rss = int(next(x for x in f if x.startswith("VmRSS")).split()[1]) * 1024
        assert 0.5 * rss <= one(v, "process_resident_memory_bytes") <= 2 * rss
        assert one(v, "process_cpu_seconds_total") > 0

        # the commit histogram: cumulative buckets, +Inf = count, as many as the commits
        buckets = sorted(((float(k[1].split('"')[1]), val) for k, val in v.items()
                          if k[0] == "beat_store_commit_seconds_bucket"), key=lambda x: x[0])
        counts = [c for _, c in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf")
        count = one(v, "beat_store_commit_seconds_count")
        assert counts[-1] == count >= 1 and one(v, "beat_store_commit_seconds_sum") > 0
        assert abs(count - one(v, "beat_batches_written_total")) <= 2

        last = one(v, "beat_last_anchor_timestamp_seconds")
        assert t_up - 1 <= last <= t_anchor + 1

        # a reload that is rejected: success 0, its time; then a good one: success 1
        t_hup = time.time()
        write(extra='bogus_key = 1\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: request(str(sock))["reloads"] == 1, timeout=SLOW_S, what="the reload")
        v = parse(scrape(d_ns))
        assert one(v, "beat_config_last_reload_success") == 0
        assert t_hup - 1 <= one(v, "beat_config_last_reload_timestamp_seconds") <= time.time() + 1
        write()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: request(str(sock))["reloads"] == 2, timeout=SLOW_S, what="the reload")
        v = parse(scrape(d_ns))
        assert one(v, "beat_config_last_reload_success") == 1

        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=shutdown_bound_s() + 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read()
