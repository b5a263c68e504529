"""`python -m benchmarks.replay`: `beatd replay` against softflowd and tcpdump on the same captures.

Minimum-size frames (60 bytes, IPv4/UDP over Ethernet, 1,000 flows, one packet every µs) in four
captures made here: joined traffic (each packet seen arriving from a host, an unknown MAC, and 20 µs
later leaving to neighbour 2 from the router's own MAC) and ingress-only traffic (every packet only
arriving: each stays pending for the whole 50 ms join window), each as pcap and as pcapng. On each
capture, in the same run and on the same CPU, best of --repeat:

- `beatd replay F --node-id 1 --config C --store DIR` (own MAC and neighbour in C; the LMDB store
  written as replay always does); its frames/s from the run's own seconds (summary line) and from
  the wall time of the process (Python start and imports included);
- `softflowd -r F` (flow accounting of the same packets) and `tcpdump -r F -w /dev/null` (libpcap
  reading and writing them): wall time, as frames/s;
- the ratios beatd / softflowd and beatd / tcpdump: the meaningful numbers on a shared machine.

Also the fixed cost of `beatd replay` (Python start, imports, store open and close: a 1,000-frame
capture, wall time) beside a bare `python -c pass`, and, in process: the capture readers alone (C and the Python reference, frames/s) and the pipeline
alone in the pending case (ingress only, 1 µs apart, 50 ms window: feed + take, no store).
softflowd and tcpdump come from scripts/bootstrap-bench (`make bench` runs it); without them their
rows are missing and the run says so. Results: benchmarks/results/replay-latest.json.
"""
import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from benchmarks.results_file import cpu_model, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OWN = bytes.fromhex("020000000001")
HOST = bytes.fromhex("02000000aa01")
NEXT = bytes.fromhex("020000000002")
T0_US = 1_700_000_000_000_000            # µs
DELAY_US = 20                             # a joined packet leaves 20 µs after it arrived
TARGETS = {"beatd replay frames/s (joined, ingress-only)": 3_000_000,
           "pipeline pending packets/s": 2_000_000}


# -- captures ---------------------------------------------------------------------------------

def _frame(src_mac, dst_mac, flow, ident):
    """A 60-byte Ethernet/IPv4/UDP frame of flow `flow`."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 46, ident & 0xFFFF, 0, 64, 17, 0,
                     bytes((10, 0, flow >> 8, flow & 0xFF)), bytes((10, 1, flow >> 8, flow & 0xFF)))
    udp = struct.pack(">HHHH", 1024 + ident % 7, 53, 26, 0)
    return dst_mac + src_mac + b"\x08\x00" + ip + udp + bytes(18)


def frames(kind, n_frames, flows=1000):
    """Yields (t_us, frame): `joined` (n_frames // 2 packets, in and out) or `ingress` (n_frames
    packets, in only), one packet every µs, in time order."""
    if kind == "ingress":
        for i in range(n_frames):
            yield T0_US + i, _frame(HOST, OWN, i % flows, i // flows)
        return
    packets = n_frames // 2
    for i in range(packets + DELAY_US):
        if i < packets:
            yield T0_US + i, _frame(HOST, OWN, i % flows, i // flows)
        j = i - DELAY_US                  # the packet that leaves now
        if 0 <= j < packets:
            yield T0_US + i, _frame(OWN, NEXT, j % flows, j // flows)


def write_capture(path, kind, fmt, n_frames):
    """The capture `kind` as pcap (µs) or pcapng (SHB, one Ethernet IDB, EPBs); returns frames."""
    n = 0
    rec_head = struct.Struct("<IIII")
    epb_head = struct.Struct("<IIIIIII")
    with open(path, "wb", buffering=1 << 22) as f:
        if fmt == "pcap":
            f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
            for t, fr in frames(kind, n_frames):
                f.write(rec_head.pack(t // 1_000_000, t % 1_000_000, len(fr), len(fr)) + fr)
                n += 1
        else:
            f.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
            f.write(struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20))
            for t, fr in frames(kind, n_frames):
                blen = 32 + len(fr) + (-len(fr) % 4)
                f.write(epb_head.pack(6, blen, 0, t >> 32, t & 0xFFFFFFFF, len(fr), len(fr)) + fr
                        + bytes(-len(fr) % 4) + struct.pack("<I", blen))
                n += 1
    return n


# -- runs -------------------------------------------------------------------------------------

def _pin(cpu):
    def pin():
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return pin


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd, cpu, env=None):
    """(wall seconds, CPU seconds, output) of cmd pinned to cpu; RuntimeError when it fails."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_pin(cpu), env=env,
                       timeout=1800)
    wall = time.perf_counter() - t0
    used = _children_cpu() - c0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stderr or r.stdout)[-800:]}")
    return wall, used, r.stdout + r.stderr


SUMMARY = re.compile(r": (pcapng|pcap), (\d+) frames, .*\((c|py) fast path, ([0-9.]+) s\)")


def run_beatd(path, config, store_dir, cpu, batch):
    shutil.rmtree(store_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "beatd", "replay", path, "--node-id", "1", "--config", config,
           "--store", store_dir]
    if batch:
        cmd += ["--batch-frames", str(batch)]
    wall, used, out = timed(cmd, cpu)
    m = SUMMARY.search(out)
    if not m:
        raise RuntimeError(f"beatd replay: no summary line in:\n{out[-800:]}")
    return dict(wall=wall, cpu=used, seconds=float(m.group(4)), frames=int(m.group(2)),
                impl=m.group(3), cmd=cmd)


def run_tool(name, path, cpu, tmp):
    if name == "tcpdump":
        cmd = ["tcpdump", "-r", path, "-w", "/dev/null"]
    else:
        # -c none: softflowd 1.1.0 reading a file would otherwise wait on its control socket
        cmd = ["softflowd", "-r", path, "-d", "-c", "none", "-p", os.path.join(tmp, "softflowd.pid")]
    wall, used, _ = timed(cmd, cpu)
    return dict(wall=wall, cpu=used, cmd=cmd)


def readers_alone(path, batch=4096):
    """frames/s of the C reader and of the Python reference (batches only, nothing fed)."""
    from beatd.capfile import CaptureReader, ReferenceCaptureReader
    out = {}
    for name, cls in (("c", CaptureReader), ("py", ReferenceCaptureReader)):
        r = cls(path, batch)
        t0 = time.perf_counter()
        for _ in r:
            pass
        out[name] = r.frames / (time.perf_counter() - t0)
    return out


def pipeline_pending(path, repeat, batch=8192):
    """Packets/s of the native pipeline alone (feed + take, no store) on the ingress-only capture:
    every packet pending for the 50 ms window."""
    import fastpath._native as native
    from beatd.capfile import CaptureReader
    batches = [(bytes(b), d) for b, d in CaptureReader(path, batch)]
    n = sum(len(d) // 24 for _, d in batches)
    best = 0
    for _ in range(repeat):
        pipe = native.Pipeline(1, own_macs=[OWN], neighbours={NEXT: 2}, join_window_ns=50_000_000)
        t0 = time.perf_counter()
        for buf, desc in batches:
            pipe.feed(buf, desc)
            pipe.take()
        pipe.flush()
        pipe.take()
        best = max(best, n / (time.perf_counter() - t0))
        assert pipe.totals()["ingress_only"] == n, pipe.totals()
    return best, n


def replay_parts(path, repeat, tmp):
    """Where the time of `beatd replay` goes, in process (the CLI's replay loop, timed by part with
    the thread's CPU time, which a shared machine's other processes do not inflate): ns per frame
    of feeding the pipeline (C reader, parse, hashes, join index, releases, segments), of take()
    (the outputs copied into Python) and of Store.commit (LMDB), best of `repeat` each."""
    import fastpath
    from beatd.capfile import CaptureReader
    from beatd.config import load
    from beatd.replay import DEFAULT_BATCH
    from beatd.store import Store
    cfg = load(os.path.join(tmp, "replay.toml")).replace(node_id=1)
    best = {}
    for r in range(repeat):
        store_dir = os.path.join(tmp, f"parts-{r}")
        store = Store(store_dir, **{k: v for k, v in cfg.store_kwargs().items() if k != "path"})
        reader = CaptureReader(path, DEFAULT_BATCH)
        pipe = fastpath.Pipeline(**cfg.pipeline_kwargs(), records_out=False,
                                 segment_views=True)   # as replay makes it
        pipe.resume(**store.resume_state())
        spent = dict.fromkeys(("feed", "take", "commit"), 0.0)
        clock = time.thread_time
        feeds = reader.feeds(pipe)
        while True:
            t0 = clock()
            if next(feeds, None) is None:     # the batches end (a batch yields its frame count)
                break
            t1 = clock()
            out = pipe.take()
            t2 = clock()
            store.commit(out)
            t3 = clock()
            spent["feed"] += t1 - t0
            spent["take"] += t2 - t1
            spent["commit"] += t3 - t2
        pipe.flush()
        store.commit(pipe.take())
        store.close()
        shutil.rmtree(store_dir, ignore_errors=True)
        for k, v in spent.items():
            ns = v * 1e9 / reader.frames
            best[k] = min(best.get(k, ns), ns)
    return best


STARTUP_FRAMES = 1000


def startup_cost(tmp, config, cpu, repeat):
    """Best wall seconds of `beatd replay` on a tiny capture, and of a bare Python start."""
    path = os.path.join(tmp, "startup.pcap")
    write_capture(path, "ingress", "pcap", STARTUP_FRAMES)
    beatd = min(run_beatd(path, config, os.path.join(tmp, "store-startup"), cpu, 0)["wall"]
                for _ in range(repeat))
    python = min(timed([sys.executable, "-c", "pass"], cpu)[0] for _ in range(repeat))
    return dict(beatd=beatd, python=python)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=2_000_000, help="frames per capture (2 M)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept")
    ap.add_argument("--batch", type=int, default=0, help="beatd replay --batch-frames (default: "
                                                         "the CLI's own)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU every run is pinned to")
    ap.add_argument("--kinds", default="joined,ingress")
    ap.add_argument("--formats", default="pcap,pcapng")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    try:
        import fastpath._native  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench: the native fast path is not built ({exc}); run `make build`")
    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    tools = [t for t in ("softflowd", "tcpdump") if shutil.which(t)]
    missing = [t for t in ("softflowd", "tcpdump") if t not in tools]
    if missing:
        print(f"bench: {', '.join(missing)} not installed: run scripts/bootstrap-bench as root "
              f"(Debian/Ubuntu: apt-get install {' '.join(missing)}); those rows are missing")
    from fastpath._native import simd
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs); every run pinned to CPU {cpu}; Keccak: {simd()} "
          f"(BEAT_SIMD=avx2 or scalar chooses a lower level)")

    tmp = tempfile.mkdtemp(prefix="beat-bench-replay-")
    rows = []
    try:
        config = os.path.join(tmp, "replay.toml")
        with open(config, "w") as f:
            f.write(f'own_macs = ["{OWN.hex(":")}"]\n\n[[neighbours]]\nnode_id = 2\n'
                    f'mac = "{NEXT.hex(":")}"\n')
        captures = {}
        for kind in args.kinds.split(","):
            for fmt in args.formats.split(","):
                path = os.path.join(tmp, f"{kind}.{fmt}")
                t0 = time.perf_counter()
                n = write_capture(path, kind, fmt, args.frames)
                captures[(kind, fmt)] = (path, n)
                print(f"made {path}: {n} frames, {os.path.getsize(path) >> 20} MiB "
                      f"({time.perf_counter() - t0:.1f} s)")
        for (kind, fmt), (path, n) in captures.items():
            best = {}
            for _ in range(args.repeat):       # interleaved: each tool sees the same load
                r = run_beatd(path, config, os.path.join(tmp, "store"), cpu, args.batch)
                assert r["frames"] == n and r["impl"] == "c", r
                for key, v in (("beatd", r["seconds"]), ("beatd_wall", r["wall"]),
                               ("beatd_cpu", r["cpu"])):
                    best[key] = min(best.get(key, v), v)
                best["beatd_cmd"] = r["cmd"]
                for t in tools:
                    w = run_tool(t, path, cpu, tmp)
                    best[t] = min(best.get(t, w["wall"]), w["wall"])
                    best[t + "_cpu"] = min(best.get(t + "_cpu", w["cpu"]), w["cpu"])
                    best[t + "_cmd"] = w["cmd"]
            row = dict(kind=kind, format=fmt, frames=n,
                       beatd_fps=n / best["beatd"], beatd_wall_fps=n / best["beatd_wall"],
                       beatd_cpu_fps=n / best["beatd_cpu"], beatd_cmd=" ".join(best["beatd_cmd"]))
            for t in tools:
                row[f"{t}_fps"] = n / best[t]
                row[f"{t}_cpu_fps"] = n / max(best[t + "_cpu"], 1e-6)
                row[f"{t}_cmd"] = " ".join(best[t + "_cmd"])
                row[f"beatd/{t}"] = row["beatd_fps"] / row[f"{t}_fps"]
                row[f"beatd_wall/{t}"] = row["beatd_wall_fps"] / row[f"{t}_fps"]
                row[f"beatd_cpu/{t}"] = row["beatd_cpu_fps"] / row[f"{t}_cpu_fps"]
            rows.append(row)
        readers = readers_alone(captures[next(iter(captures))][0])
        startup = startup_cost(tmp, config, cpu, args.repeat)
        pend = parts = None
        if ("ingress", "pcap") in captures:
            pend = pipeline_pending(captures[("ingress", "pcap")][0], args.repeat)
            parts = replay_parts(captures[("ingress", "pcap")][0], args.repeat, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'capture':16} {'frames':>9} {'beatd M/s':>10} {'(wall)':>7} {'(cpu)':>6}"
          + "".join(f" {t + ' M/s':>14} {'(cpu)':>6}" for t in tools)
          + "".join(f" {'beatd/' + t:>22}" for t in tools))
    for r in rows:
        print(f"{r['kind'] + '.' + r['format']:16} {r['frames']:>9} {r['beatd_fps'] / 1e6:>10.2f} "
              f"{r['beatd_wall_fps'] / 1e6:>7.2f} {r['beatd_cpu_fps'] / 1e6:>6.2f}"
              + "".join(f" {r[t + '_fps'] / 1e6:>14.2f} {r[t + '_cpu_fps'] / 1e6:>6.2f}"
                        for t in tools)
              + "".join(f" {r['beatd/' + t]:>6.2f} ({r['beatd_wall/' + t]:.2f}, "
                        f"{r['beatd_cpu/' + t]:.2f})" for t in tools))
    print("beatd M/s: frames / the replay's own seconds (summary line); (wall): / the wall time of "
          "the whole process, Python start included; (cpu): / its CPU time (user + system).\n"
          "softflowd, tcpdump: frames / wall time, (cpu) / CPU time. Ratios: beatd / tool, as "
          "replay seconds / tool wall (wall / wall, cpu / cpu).")
    print(f"capture readers alone: C {readers['c'] / 1e6:.2f} M frames/s, Python reference "
          f"{readers['py'] / 1e6:.2f} M frames/s ({readers['c'] / readers['py']:.0f}x)")
    print(f"beatd replay's fixed cost (Python start, imports, store open and close; a "
          f"{STARTUP_FRAMES:,}-frame capture, best of {args.repeat}): {startup['beatd'] * 1e3:.0f} "
          f"ms wall, of which `python -c pass` takes {startup['python'] * 1e3:.0f} ms")
    if pend:
        print(f"pipeline alone, every packet pending 50 ms (ingress only, 1 µs apart): "
              f"{pend[0] / 1e6:.2f} M packets/s ({pend[1]} packets, feed + take, no store)")
    if parts:
        print("beatd replay of ingress.pcap by part (in process, thread CPU time, best of "
              f"{args.repeat}): feed {parts['feed']:.0f} ns/frame, take {parts['take']:.0f}, "
              f"Store.commit {parts['commit']:.0f}; {sum(parts.values()):.0f} in all "
              f"(the target, 3 M frames/s, is 333)")
    load_end = os.getloadavg()
    print(f"load average at the end: {load_end[0]:.2f} (the machine may be shared: compare the "
          "ratios, measured in the same run, rather than the absolute rates)")
    result = dict(
        benchmark="replay", when=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        machine=dict(platform=platform.platform(), cpu=cpu_model(), python=platform.python_version(),
                     cpus=os.cpu_count(), load_start=load, load_end=load_end, simd=simd()),
        note="one core (every run pinned to the same CPU), best of --repeat, minimum-size frames; "
             "beatd_fps from the replay's own seconds, beatd_wall_fps from the process's wall "
             "time; softflowd and tcpdump from wall time",
        targets=TARGETS, missing_tools=missing, rows=rows, readers_fps=readers,
        pipeline_pending_pps=pend[0] if pend else None, startup_seconds=startup,
        replay_parts_ns_per_frame=parts)
    write_results(args.out, "replay", result)


if __name__ == "__main__":
    main()
