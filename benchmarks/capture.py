"""`python -m benchmarks.capture`: live capture on a veth pair between two namespaces (root only).

tools/beat_send offers minimum-size frames (1,000 flows, to a foreign MAC) at 100 kpps and at full
speed; the beatd-like reader (Ring + Pipeline, a committer thread writing beatd.store.Store every
50 ms, as docs/daemon.md) and the bare C TPACKET_V3 loop (tools/bare_ring) capture them in turn,
in the same run. Reported per row: captured/offered, kernel drops, reader CPU seconds per million
packets, RssAnon of the reader process. Targets: no drop at 100 kpps; at full speed >= 95% of what
the bare loop captures; RssAnon <= 64 MiB. On veth the receive work runs on the sender's CPU: the
sender is pinned to CPU 0 and the reader to CPU 1. Results: benchmarks/results/capture-latest.json.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.results_file import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SRC_MAC, CAP_MAC, FOREIGN_MAC = "02:be:a7:b0:00:01", "02:be:a7:b0:00:02", "02:be:a7:b0:00:99"
TOOLS = ("beat_send", "bare_ring")


def build_tools(outdir):
    """gcc -O2 tools/<name>.c into outdir; returns {name: path}."""
    paths = {}
    for name in TOOLS:
        out = os.path.join(outdir, name)
        r = subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(REPO, "tools", name + ".c")],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"gcc tools/{name}.c failed:\n{r.stderr}")
        paths[name] = out
    return paths


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


class VethPair:
    """Two namespaces joined by a veth pair, removed on exit (even after an error)."""

    def __init__(self):
        tag = os.getpid()
        self.send_ns, self.cap_ns = f"beat-bench{tag}-s", f"beat-bench{tag}-c"
        self.send_if, self.cap_if = f"bb{tag % 100000}s", f"bb{tag % 100000}c"

    def __enter__(self):
        for ns in (self.send_ns, self.cap_ns):
            _ip("netns", "add", ns)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        _ip("link", "add", self.send_if, "netns", self.send_ns, "address", SRC_MAC, "type", "veth",
            "peer", "name", self.cap_if, "netns", self.cap_ns, "address", CAP_MAC)
        _ip("-n", self.send_ns, "link", "set", self.send_if, "up")
        _ip("-n", self.cap_ns, "link", "set", self.cap_if, "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.send_ns, self.cap_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def rss_anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def beatd_reader(ifname, duration, geometry, store_dir):
    """The beatd-like reader, inside the capture namespace: one worker thread reading the ring
    into the pipeline, one committer thread taking every 50 ms into the store. Returns a dict."""
    import fastpath._native as native
    from beatd.store import Store

    pipe = native.Pipeline(1, neighbours={bytes.fromhex(SRC_MAC.replace(":", "")): 11})
    ring = native.Ring(ifname, **geometry)
    store = Store(store_dir, node_id=1, hash_name="sha3-256", ring_size=256 << 20)
    stop = threading.Event()
    res = {"records": 0, "commits": 0, "commit_s": 0.0, "reader_cpu_s": 0.0, "errors": []}

    def worker():
        t0 = time.thread_time()
        try:
            while not stop.is_set():
                ring.read(pipe, 100)
        except Exception as exc:  # reported, not hidden
            res["errors"].append(repr(exc))
        res["reader_cpu_s"] = time.thread_time() - t0

    def committer():
        while True:
            last = stop.wait(0.05)
            t = time.perf_counter()
            if last:
                pipe.flush()
            out = pipe.take()
            store.commit(out)
            res["commit_s"] += time.perf_counter() - t
            res["records"] += len(out.records) // 48
            res["commits"] += 1
            if last:
                return

    rss_max = rss_anon_kib()
    print("ready", file=sys.stderr, flush=True)
    threads = [threading.Thread(target=worker), threading.Thread(target=committer)]
    for t in threads:
        t.start()
    end = time.monotonic() + duration
    while time.monotonic() < end:
        time.sleep(0.1)
        rss_max = max(rss_max, rss_anon_kib())
    stop.set()
    threads[0].join()
    threads[1].join()
    k = ring.kernel_stats()
    c = ring.counters()
    ring.close()
    store.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res.update(frames=c["frames"], kernel_packets=k["packets"], drops=k["drops"],
               freeze_q_cnt=k["freeze_q_cnt"], blocks=c["blocks"],
               process_cpu_s=ru.ru_utime + ru.ru_stime, rss_anon_kib=rss_anon_kib(),
               rss_anon_max_kib=max(rss_max, rss_anon_kib()), ip=pipe.totals()["ip"])
    return res


def run_row(tools, pair, reader, rate, duration, geometry):
    """One measurement: start the reader in the capture namespace, offer traffic, collect both."""
    cpu_reader = ["taskset", "-c", "1"] if os.cpu_count() >= 2 else []
    cpu_sender = ["taskset", "-c", "0"] if os.cpu_count() >= 2 else []
    wait = duration + 1.5
    if reader == "bare":
        cmd = [tools["bare_ring"], pair.cap_if, "--block-size", str(geometry["block_size"]),
               "--block-count", str(geometry["block_count"]), "--frame-size",
               str(geometry["frame_size"]), "--timeout-ms", str(geometry["block_timeout_ms"]),
               "--duration", str(wait)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.capture", "--reader", pair.cap_if,
               "--duration", str(wait), "--geometry", json.dumps(geometry)]
    env = dict(os.environ, PYTHONPATH=REPO)
    rp = subprocess.Popen(["ip", "netns", "exec", pair.cap_ns, *cpu_reader, *cmd], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = rp.stderr.readline()
    if "ready" not in line:
        rp.kill()
        raise RuntimeError(f"{reader} reader did not start: {line}{rp.stderr.read()}")
    time.sleep(0.3)
    s = subprocess.run(["ip", "netns", "exec", pair.send_ns, *cpu_sender, tools["beat_send"],
                        pair.send_if, FOREIGN_MAC, SRC_MAC, "--rate", str(rate), "--duration",
                        str(duration)], capture_output=True, text=True, check=True)
    sent = json.loads(s.stdout)
    out, err = rp.communicate(timeout=wait + 30)
    if rp.returncode:
        raise RuntimeError(f"{reader} reader failed ({rp.returncode}): {err}")
    got = json.loads(out.strip().splitlines()[-1])
    cpu = got.get("reader_cpu_s", got.get("cpu_s"))
    frames = got["frames"]
    return {
        "reader": reader, "rate_requested": rate, "offered": sent["sent"],
        "offered_pps": round(sent["pps"]), "captured": frames,
        "captured_ratio": frames / sent["sent"] if sent["sent"] else 0.0,
        "kernel_packets": got["kernel_packets"], "kernel_drops": got["drops"],
        "reader_cpu_s": cpu,
        "reader_cpu_s_per_mpkt": cpu / frames * 1e6 if frames else None,
        "process_cpu_s": got.get("process_cpu_s", got.get("cpu_s")),
        "rss_anon_kib": got.get("rss_anon_max_kib"),
        "records": got.get("records"), "commits": got.get("commits"),
        "commit_s": got.get("commit_s"), "errors": got.get("errors", []),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per row (default 5)")
    ap.add_argument("--rate", type=int, default=100_000, help="the paced rate (default 100 kpps)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--reader", help=argparse.SUPPRESS)       # internal: run the beatd-like reader
    ap.add_argument("--geometry", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    geometry = {"block_size": 1 << 20, "block_count": 16, "frame_size": 2048, "block_timeout_ms": 10}
    if args.reader:
        with tempfile.TemporaryDirectory(prefix="beat-capture-store-") as d:
            res = beatd_reader(args.reader, args.duration, json.loads(args.geometry), d)
        print(json.dumps(res))
        return 0
    if os.geteuid() != 0:
        sys.exit("bench: capture needs root (network namespaces, AF_PACKET)")
    try:
        import fastpath._native as native
        native.Ring
    except (ImportError, AttributeError) as exc:
        sys.exit(f"bench: the native fast path with Ring is not built ({exc})")

    rows = []
    tmp = tempfile.mkdtemp(prefix="beat-capture-tools-")
    try:
        tools = build_tools(tmp)
        with VethPair() as pair:
            cpu_sender = ["taskset", "-c", "0"] if os.cpu_count() >= 2 else []
            alone = json.loads(subprocess.run(
                ["ip", "netns", "exec", pair.send_ns, *cpu_sender, tools["beat_send"],
                 pair.send_if, FOREIGN_MAC, SRC_MAC, "--duration", str(min(args.duration, 3))],
                capture_output=True, text=True, check=True).stdout)
            print(f"  sender alone: {alone['pps']:.0f} pps", file=sys.stderr)
            for rate in (args.rate, 0):
                for reader in ("bare", "beatd"):
                    row = run_row(tools, pair, reader, rate, args.duration, geometry)
                    rows.append(row)
                    print(f"  {reader:5} rate {rate or 'max'}: {row['captured']} / "
                          f"{row['offered']} captured, {row['kernel_drops']} kernel drops",
                          file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def row_of(reader, rate):
        return next(r for r in rows if r["reader"] == reader and r["rate_requested"] == rate)

    paced, top_b, top_bare = row_of("beatd", args.rate), row_of("beatd", 0), row_of("bare", 0)
    rss_mib = max(r["rss_anon_kib"] or 0 for r in rows if r["reader"] == "beatd") / 1024
    top_vs_bare = top_b["captured"] / top_bare["captured"] if top_bare["captured"] else 0.0
    ratio_vs_bare = (top_b["captured_ratio"] / top_bare["captured_ratio"]
                     if top_bare["captured_ratio"] else 0.0)
    targets = {
        f"no drop at {args.rate} pps": {"value": paced["kernel_drops"],
                                        "ok": paced["kernel_drops"] == 0
                                        and paced["captured"] >= paced["offered"]},
        "top rate: captured >= 95% of the bare loop's": {"value": round(top_vs_bare, 4),
                                             "ok": top_vs_bare >= 0.95},
        "top rate: captured/offered >= 95% of the bare loop's": {
            "value": round(ratio_vs_bare, 4), "ok": ratio_vs_bare >= 0.95},
        "RssAnon <= 64 MiB": {"value": round(rss_mib, 1), "ok": rss_mib <= 64},
    }
    hdr = (f"{'reader':6} {'rate':>8} {'offered':>9} {'pps':>8} {'captured':>9} {'ratio':>7} "
           f"{'drops':>8} {'cpu s/Mpkt':>10} {'RssAnon MiB':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        cpm = f"{r['reader_cpu_s_per_mpkt']:.3f}" if r["reader_cpu_s_per_mpkt"] else "-"
        rss = f"{r['rss_anon_kib'] / 1024:.1f}" if r["rss_anon_kib"] else "-"
        print(f"{r['reader']:6} {r['rate_requested'] or 'max':>8} {r['offered']:>9} "
              f"{r['offered_pps']:>8} {r['captured']:>9} {r['captured_ratio']:>7.4f} "
              f"{r['kernel_drops']:>8} {cpm:>10} {rss:>11}")
    print(f"\nsender alone (no capturer): {alone['pps']:.0f} pps; a capturer's receive work runs "
          "on the sender's CPU, so the offered rate falls when one listens")
    for name, t in targets.items():
        print(f"  {'OK  ' if t['ok'] else 'MISS'} {name}: {t['value']}")

    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "duration_s": args.duration, "geometry": geometry, "frame_size": 60, "flows": 1000,
        "sender_alone_pps": round(alone["pps"]), "rows": rows, "targets": targets,
        "notes": "veth: the receive work runs on the sender's CPU (0); reader on CPU 1. "
                 "captured counts every frame the reader saw; kernel_packets includes drops.",
    }
    write_results(args.out, "capture", result)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
