"""`python -m benchmarks.dispute`: a dispute over one minute of 10 kpps tenant traffic (root only).

Issue 5's target: "Interrogating one minute of 10 kpps tenant traffic over four routers takes
<= 10 s end to end." The lab topology ``line4`` (h1 - r1 - r2 - r3 - r4 - h2, node ids 1..4,
real beatd daemons capturing with AF_PACKET, a local ledger, anchors every lab second) carries the
tenant's flow exactly as the lab's SLA names it (src = h1's address, dst = h2's: one flow tag),
sent by tools/beat_send from h1's namespace at ``--rate`` packets/s for ``--duration`` s. Once
every router has anchored all of it (``Lab.wait_anchored``: its segments of the window closed,
then no leaf waiting and no anchor pending), ``beatctl interrogate`` for that window is timed
as the governance runs it in the lab's management namespace: the wall clock of the whole command
(interpreter start, TLS, gRPC, signature checks, commitment and anchor checks, the judgement, the
report, the dispute recorded on the ledger).

Each of ``--runs`` runs sends its own minute (its own sequence range, so its own packet digests)
in the same lab. Reported per run: end-to-end seconds, the per-device fetch seconds and records
(the report's "interrogation" section), every verdict, packets sent and judged, each router's
kernel capture drops during the run. With ``--stages`` (default), the last window is interrogated
once more through an instrumented ``governance.cli`` (same code path, each stage timed, threads
included); ``--cprofile`` adds a cProfile of the main thread. Results:
benchmarks/results/dispute-latest.json (and a dated copy).
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.results_file import cpu_model, write_results
from beat_lab.data import topology_path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOPOLOGY = topology_path("line4")
TARGET_S = 10.0
PREFIX = "beat-bd-"


# -- the machine ----------------------------------------------------------------------------------

def references(n=200_000):
    """This machine's reference rates next to the reference machine's (hashlib SHA3-256 in a loop:
    1.9 M/s), and a pure-Python record loop (``struct.iter_unpack`` of 48-byte records, the
    judgement's first pass), plus the load average: others may be using the machine."""
    msg = bytes(48)
    t0 = time.perf_counter()
    for _ in range(n):
        hashlib.sha3_256(msg).digest()
    sha3 = n / (time.perf_counter() - t0)
    rec = struct.Struct(">QQQ16s8s")
    buf = bytes(48 * n)
    t0 = time.perf_counter()
    k = 0
    for t, p, q, pd, f in rec.iter_unpack(buf):
        if f == b"x":
            k += 1
    unpack = n / (time.perf_counter() - t0)
    return {"hashlib sha3-256 loop (reference machine: 1.9 M/s)": round(sha3),
            "python iter_unpack 48 B records": round(unpack),
            "cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}


# -- the lab --------------------------------------------------------------------------------------

def build_sender(outdir):
    out = os.path.join(outdir, "beat_send")
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(REPO, "tools", "beat_send.c")],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc tools/beat_send.c failed:\n{r.stderr}")
    return out


def sender_argv(lab, tool, rate, duration, seq_start):
    """beat_send in the SLA's src host: frames to its router's MAC, src/dst = the SLA's hosts."""
    topo, net = lab.topo, lab.net
    link = topo.host_link(topo.src)
    first = link.peer(topo.src)
    count = int(round(rate * duration))
    return net.exec_argv(topo.src, [
        tool, net.ifname(topo.src, first), net.mac(first, link), net.mac(topo.src, link),
        "--rate", str(rate), "--count", str(count), "--duration", str(duration + 10),
        "--flows", "1", "--src-ip", str(topo.host_addr(topo.src)),
        "--dst-ip", str(topo.host_addr(topo.dst)), "--seq-start", str(seq_start)])


def capture_counts(lab):
    """{router: {"kernel_packets", "kernel_drops", "records"}} from each daemon's status."""
    out = {}
    for r in lab.topo.routers:
        st = lab.status(r.name, timeout=5.0)
        rings = st.get("rings", [])
        out[r.name] = {"kernel_packets": sum(x.get("kernel_packets", 0) for x in rings),
                       "kernel_drops": sum(x.get("kernel_drops", 0) for x in rings),
                       "records": st.get("totals", {}).get("records")}
    return out


_NODE_INFO = r"""
import json, sys
from governance.client import InterrogationClient
from governance.interrogate import load_config
from ledger_client.local import LocalLedger
cfg = load_config(sys.argv[1])
out = {}
with LocalLedger(sys.argv[2], hash_name=None) as led:
    for nid, addr in sorted(cfg.endpoints.items()):
        node = led.get_node(nid)
        with InterrogationClient(addr, cfg.ca, cfg.cert, cfg.key, led.hash_name, nid,
                                 node.pubkey, timeout=10) as c:
            i = c.node_info()
        out[nid] = {"anchored_until_t_ns": i.anchored_until_t_ns,
                    "newest_proof_t_ns": i.newest_proof_t_ns,
                    "oldest_proof_t_ns": i.oldest_proof_t_ns, "ring_short": i.ring_short}
print(json.dumps(out))
"""


def node_infos(lab):
    p = subprocess.run(lab.net_ledger_argv([lab.python, "-c", _NODE_INFO,
                                            lab.governance_config_path, lab.ledger_path]),
                       capture_output=True, text=True, cwd=REPO, env=lab._env(), timeout=60)
    if p.returncode:
        raise RuntimeError(f"GetNodeInfo: exit {p.returncode}: {p.stderr.strip()[-2000:]}")
    return {int(k): v for k, v in json.loads(p.stdout).items()}


def wait_anchored(lab, t_end_ns, timeout=120.0):
    """Until every router has anchored what it recorded up to ``t_end_ns`` (``Lab.wait_anchored``:
    its segments closed, then no leaf waiting and no anchor pending). Returns (seconds waited after
    the traffic, the NodeInfo of every router)."""
    t0 = time.monotonic()
    late = {r: why for r, why in lab.wait_anchored(t_end_ns, timeout=timeout).items() if why}
    if late:
        raise RuntimeError(f"not everything anchored {timeout:.0f} s after the traffic: {late}")
    return time.monotonic() - t0, node_infos(lab)


# -- one run --------------------------------------------------------------------------------------

def summarise(report, names):
    devices = {}
    for d in report["devices"]:
        c = d["counts"]
        devices[names.get(d["node_id"], str(d["node_id"]))] = {
            "node_id": d["node_id"], "verdict": d["verdict"], "reasons": d["reasons"],
            **{k: c.get(k, 0) for k in ("received", "forwarded", "dropped", "unconfirmed",
                                        "absent", "egress_unseen", "join_missed", "unanchored",
                                        "unproven_records")}}
    fetch = {names.get(int(n), n): v for n, v in report.get("interrogation", {}).items()}
    return {"packets_judged": report["packets"], "verdicts": {n: d["verdict"]
                                                             for n, d in devices.items()},
            "devices": devices, "fetch": fetch,
            "records_fetched": sum(v.get("records", 0) for v in fetch.values()),
            "segments_fetched": sum(v.get("segments", 0) for v in fetch.values()),
            "paths": report["paths"][:5], "notes": report["notes"],
            "decision": report.get("decision")}


def one_run(lab, tool, k, args, workdir):
    names = {r.node_id: r.name for r in lab.topo.routers}
    before = capture_counts(lab)
    seq_start = k * 10**9
    t0 = time.time_ns()
    s = subprocess.run(sender_argv(lab, tool, args.rate, args.duration, seq_start),
                       capture_output=True, text=True, timeout=args.duration + 60)
    t1 = time.time_ns()
    if s.returncode:
        raise RuntimeError(f"beat_send: exit {s.returncode}: {s.stderr.strip()}")
    sent = json.loads(s.stdout)
    print(f"  run {k + 1}: sent {sent['sent']} packets in {sent['seconds']:.2f} s "
          f"({sent['pps']:.0f} pps)", file=sys.stderr)
    waited, infos = wait_anchored(lab, t1)
    after = capture_counts(lab)
    capture = {r: {key: (after[r][key] - before[r][key]
                         if after[r][key] is not None and before[r][key] is not None else None)
                   for key in after[r]} for r in after}
    jpath, spath = os.path.join(workdir, f"run{k + 1}.json"), os.path.join(workdir, f"run{k + 1}.svg")
    w0 = time.perf_counter()
    p = lab.interrogate(t0, t1, jpath, spath, record=True, timeout=600)
    wall = time.perf_counter() - w0
    if p.returncode not in (0, 3):
        raise RuntimeError(f"beatctl interrogate: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    with open(jpath) as f:
        report = json.load(f)
    row = {"run": k + 1, "window": {"from_ns": t0, "to_ns": t1,
                                    "seconds": round((t1 - t0) / 1e9, 3)},
           "sent": sent, "anchored_after_s": round(waited, 2),
           "node_info": {names[n]: v for n, v in infos.items()},
           "capture": capture, "end_to_end_s": round(wall, 3), "exit": p.returncode,
           "loadavg_after": os.getloadavg(),
           "target_ok": wall <= TARGET_S, **summarise(report, names),
           "table": p.stdout}
    fetch = ", ".join(f"{n} {v.get('seconds')} s/{v.get('records')} rec"
                      for n, v in row["fetch"].items())
    print(f"  run {k + 1}: beatctl interrogate {wall:.2f} s end to end (exit {p.returncode}); "
          f"verdicts {row['verdicts']}; {row['packets_judged']} packets judged; fetch: {fetch}",
          file=sys.stderr)
    return row


# -- the instrumented interrogation (run inside the management namespace) -------------------------

class _Timers:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}

    def wrap(self, owner, name, label=None):
        fn = getattr(owner, name)
        label = label or f"{getattr(owner, '__name__', owner)}.{name}"
        timers = self

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                with timers.lock:
                    timers.calls.setdefault(label, []).append(
                        (threading.current_thread().name, round(dt, 4)))
        setattr(owner, name, timed)


def driver(out_path, cprofile_path, cli_argv):
    """``governance.cli.main(cli_argv)`` with every stage timed (and the main thread profiled)."""
    t_start = time.perf_counter()
    import governance.cli as cli
    from governance import client, interrogate as itg, report, verify
    t_imported = time.perf_counter()
    tm = _Timers()
    tm.wrap(itg, "collect", "collect (all devices: fetch + checks, in threads)")
    tm.wrap(itg, "_ask", "_ask (one device: fetch + checks)")
    tm.wrap(client.InterrogationClient, "proof_segments", "client.proof_segments")
    tm.wrap(client.InterrogationClient, "receipts", "client.receipts")
    tm.wrap(client.InterrogationClient, "counter_report", "client.counter_report")
    tm.wrap(verify, "verify_segments", "verify.verify_segments")
    tm.wrap(verify, "verify_receipts", "verify.verify_receipts")
    tm.wrap(itg, "judge", "verdicts.judge")
    tm.wrap(itg, "record_decision", "record_decision (ledger)")
    tm.wrap(report, "evidence_digest", "report.evidence_digest")
    tm.wrap(report, "to_dict", "report.to_dict")
    tm.wrap(report, "svg", "report.svg")
    tm.wrap(report, "text_table", "report.text_table")
    tm.wrap(cli, "_open", "open the ledger")
    prof = None
    if cprofile_path:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    import contextlib
    import io
    buf = io.StringIO()
    t_main = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(cli_argv)
    t_done = time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(cprofile_path)
    res = {"exit": rc, "import_s": round(t_imported - t_start, 3),
           "main_s": round(t_done - t_main, 3), "stages": tm.calls}
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    return 0


def instrumented(lab, t0, t1, workdir, cprofile=False):
    """The last window again, through ``driver`` in the management namespace: (wall, stages,
    cProfile text or None)."""
    argv = lab.interrogate_argv(t0, t1, os.path.join(workdir, "stages.json"),
                                os.path.join(workdir, "stages.svg"), record=True)
    i = argv.index("governance.cli")
    assert argv[i - 1] == "-m"
    out = os.path.join(workdir, "stages-timers.json")
    prof = os.path.join(workdir, "stages.prof") if cprofile else ""
    argv = argv[:i - 1] + ["-m", "benchmarks.dispute", "--driver", out, "--driver-cprofile",
                           prof, "--"] + argv[i + 1:]
    w0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=lab._env(),
                       timeout=600)
    wall = time.perf_counter() - w0
    if p.returncode:
        raise RuntimeError(f"instrumented interrogation: exit {p.returncode}: {p.stderr[-3000:]}")
    with open(out) as f:
        res = json.load(f)
    res["wall_s"] = round(wall, 3)
    res["process_start_and_exit_s"] = round(wall - res["import_s"] - res["main_s"], 3)
    text = None
    if cprofile:
        import io
        import pstats
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40)
        s.write("\n--- by own time ---\n")
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        text = s.getvalue()
    return res, text


# -- main -----------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000, help="packets/s (default 10000)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    ap.add_argument("--runs", type=int, default=3, help="runs, each its own window (default 3)")
    ap.add_argument("--no-stages", dest="stages", action="store_false",
                    help="skip the instrumented rerun of the last window")
    ap.add_argument("--cprofile", action="store_true",
                    help="also a cProfile (main thread) of an interrogation of the last window")
    ap.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    ap.add_argument("--topology", default=TOPOLOGY)
    ap.add_argument("--keep", metavar="DIR", help="keep the reports (JSON, SVG) in DIR")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--driver", help=argparse.SUPPRESS)            # internal: see driver()
    ap.add_argument("--driver-cprofile", default="", help=argparse.SUPPRESS)
    ap.add_argument("cli_argv", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.driver:
        return driver(args.driver, args.driver_cprofile, args.cli_argv)
    if os.geteuid() != 0:
        sys.exit("bench: dispute needs root (network namespaces, AF_PACKET)")

    from beat_lab.lab import LAB_ANCHOR_PERIOD_S, Lab

    refs = references()
    print("reference rates here: " + ", ".join(f"{k} {v}" for k, v in refs.items()))
    per_run = int(args.rate * args.duration)
    # every run's records stay in the ring (48 B each, plus segment headers), with room to spare
    ring_mib = max(64, -(-(args.runs * per_run * 64 * 2) // (1 << 20)))
    workdir = tempfile.mkdtemp(prefix="beat-dispute-bench-")
    state_root = tempfile.mkdtemp(prefix="beat-dispute-lab-")
    lab = Lab(args.topology, prefix=args.prefix, state_root=state_root,
              ring_size=f"{ring_mib}MiB")
    rows, stages, cprof = [], None, None
    try:
        tool = build_sender(workdir)
        t_up = time.perf_counter()
        lab.up()
        up_s = time.perf_counter() - t_up
        print(f"lab {lab.topo.name} up in {up_s:.1f} s: {lab.topo.src} -> "
              f"{' - '.join(lab.topo.agreed)} -> {lab.topo.dst}; ring {ring_mib} MiB per router; "
              f"{args.runs} run(s) of {per_run} packets at {args.rate:.0f} pps", file=sys.stderr)
        for k in range(args.runs):
            rows.append(one_run(lab, tool, k, args, workdir))
        last = rows[-1]["window"]
        if args.stages:
            stages, _ = instrumented(lab, last["from_ns"], last["to_ns"], workdir)
        if args.cprofile:
            _, cprof = instrumented(lab, last["from_ns"], last["to_ns"], workdir, cprofile=True)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for name in os.listdir(workdir):
                if name.endswith((".json", ".svg", ".prof")):
                    shutil.copy(os.path.join(workdir, name), args.keep)
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(state_root, ignore_errors=True)

    print(f"\n{'run':>3} {'sent':>8} {'judged':>8} {'records':>9} {'e2e s':>7} "
          f"{'fetch s (r1..r4)':>28} {'drops':>6}  verdicts")
    for r in rows:
        fetch = " ".join(f"{v.get('seconds', '-')}" for v in r["fetch"].values())
        drops = sum(c["kernel_drops"] or 0 for c in r["capture"].values())
        verdicts = " ".join(f"{n}={v}" for n, v in r["verdicts"].items())
        print(f"{r['run']:>3} {r['sent']['sent']:>8} {r['packets_judged']:>8} "
              f"{r['records_fetched']:>9} {r['end_to_end_s']:>7.2f} {fetch:>28} {drops:>6}  "
              f"{verdicts}")
    walls = [r["end_to_end_s"] for r in rows]
    honest = all(set(r["verdicts"].values()) == {"CONSISTENT"} for r in rows)
    ok = bool(walls) and max(walls) <= TARGET_S
    print(f"\n  {'OK  ' if ok else 'MISS'} interrogating {args.duration:.0f} s of "
          f"{args.rate:.0f} pps over {len(lab.topo.agreed)} routers <= {TARGET_S:.0f} s end to "
          f"end: {', '.join(f'{w:.2f}' for w in walls)} s")
    print(f"  {'OK  ' if honest else 'MISS'} every verdict CONSISTENT (an honest run)")
    if stages:
        print(f"\ninstrumented rerun of the last window: {stages['wall_s']} s wall = "
              f"{stages['process_start_and_exit_s']} s interpreter start/exit + "
              f"{stages['import_s']} s imports + {stages['main_s']} s beatctl main")
        for label, calls in stages["stages"].items():
            tot = sum(dt for _, dt in calls)
            each = ", ".join(f"{dt}" for _, dt in calls) if len(calls) <= 8 else f"{len(calls)} calls"
            print(f"  {label:52} {tot:7.3f} s  ({each})")
    if cprof:
        print("\ncProfile (main thread) of the last window's interrogation:\n" + cprof)

    result = {
        "benchmark": "dispute",
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "python": platform.python_version(), "references": refs},
        "target": f"interrogating {args.duration:.0f} s of {args.rate:.0f} pps tenant traffic "
                  f"over {len(lab.topo.agreed)} routers <= {TARGET_S:.0f} s end to end",
        "topology": os.path.relpath(args.topology, REPO), "rate_pps": args.rate,
        "duration_s": args.duration, "anchor_period_s": LAB_ANCHOR_PERIOD_S,
        "ring_mib": ring_mib, "lab_up_s": round(up_s, 2),
        "end_to_end_s": walls, "target_ok": ok, "all_consistent": honest,
        "runs": rows, "instrumented": stages, "cprofile_main_thread": cprof,
        "notes": "end_to_end_s: wall clock of `ip netns exec <mgmt> python -m governance.cli "
                 "interrogate ...` (Lab.interrogate) once every router has anchored the window; "
                 "fetch seconds per device: the report's interrogation section (3 RPCs, "
                 "signatures checked, decoded; not the commitment/anchor checks)",
    }
    write_results(args.out, "dispute", result)
    return 0 if ok and honest else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
