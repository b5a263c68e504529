"""The ``beatd`` command line: ``run`` (the live daemon), ``status``, ``dump``, ``replay``,
``check-config`` (every start-time check, without capturing: beatd.check_config),
``keygen``.

The testbed is not the router's: the namespace lab, the GNS3 project writer and the lab CA are
``beat-lab`` (beat_lab/); ``beatd lab|gns3|certs`` say so and exit 2 (``MOVED``).

Errors a user can fix (a missing or bad capture, a bad configuration, a store that belongs to another
node or is full) print one line on stderr naming the thing and exit with code 2, no traceback.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from fastpath.output import HASH_NAMES

from . import __version__
from .capfile import CaptureError
from .config import Config, ConfigError, load
from .replay import DEFAULT_BATCH as REPLAY_BATCH

EXIT_USAGE = 2
ENV_BATCH = "BEAT_REPLAY_BATCH"
# commands that moved to the testbed's own command, beat-lab (what to run instead)
MOVED = {"lab": "beat-lab up|demo|dump NODE|down (the namespace lab; pip install 'beat[lab]')",
         "gns3": "beat-lab gns3 project|appliances",
         "certs": "beat-lab certs ca|device|governance"}


def _parser():
    p = argparse.ArgumentParser(prog="beatd", description="BEAT router daemon",
                                epilog="The namespace lab, the GNS3 project writer and the lab CA "
                                       "are beat-lab's (beat-lab --help).")
    p.add_argument("--version", action="version", version=f"beatd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("replay", help="run a pcap/pcapng file through the fast path into a store",
                       description="Replay a capture file through the fast path and the store, "
                                   "as the live daemon would, and print a summary.")
    r.add_argument("file", metavar="FILE", help="pcap or pcapng capture")
    r.add_argument("--node-id", type=int, help="this device's node_id (overrides the config)")
    r.add_argument("--config", metavar="F", help="beatd TOML configuration")
    r.add_argument("--store", metavar="DIR",
                   help="store directory (default: a temporary one, removed at exit); an existing "
                        "store of the same node is resumed")
    r.add_argument("--json", action="store_true",
                   help="one JSON object per proof record, then one {\"summary\": ...} line")
    r.add_argument("--hash", choices=HASH_NAMES, help="hash (overrides the config)")
    r.add_argument("--batch-frames", type=int, default=None, metavar="N",
                   help=f"frames per batch and store transaction (default {REPLAY_BATCH}, or "
                   f"${ENV_BATCH})")

    d = sub.add_parser("run", help="run the live daemon in the foreground",
                       description="Capture on the configured interfaces into the store until "
                                   "SIGTERM/SIGINT; SIGHUP reloads the neighbours.")
    d.add_argument("--config", metavar="F", required=True, help="beatd TOML configuration")
    d.add_argument("--log-format", choices=("json", "text"),
                   help="overrides daemon.log_format")
    # TEST ONLY (the lab's misbehaviour scenarios): lets the control socket feed a capture file's
    # frames into the pipeline as if captured (`test-inject PATH`). Hidden, off by default, not in
    # the configuration schema; the daemon logs a warning when it is on.
    d.add_argument("--testing-allow-inject", action="store_true", help=argparse.SUPPRESS)
    # TEST ONLY (the lab's attack scenarios): the daemon lies in its own proof records before it
    # commits and anchors them (beatd.testing_lies: next=OLD:NEW, prev=OLD:NEW, self,
    # withhold=FT_HEX; repeatable). Hidden, off by default, refused in the configuration file;
    # the daemon logs a warning when it is on.
    d.add_argument("--testing-lie", action="append", default=[], metavar="SPEC",
                   help=argparse.SUPPRESS)

    s = sub.add_parser("status", help="state of the running daemon (over its control socket)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="F", help="take daemon.control_socket from this file")
    g.add_argument("--socket", metavar="PATH", help=f"control socket (default {DEFAULT_SOCKET})")
    s.add_argument("--json", action="store_true", help="the daemon's answer as one JSON object")

    u = sub.add_parser("dump", help="print the stored proof records",
                       description="The proof records of the store (the ring's segments, oldest "
                                   "first, then the open segment), in the replay JSON format.")
    u.add_argument("--config", metavar="F", required=True, help="beatd TOML configuration")
    u.add_argument("--store", metavar="DIR", help="store directory (overrides store.path)")
    u.add_argument("--json", action="store_true",
                   help="one JSON object per proof record, then one {\"summary\": ...} line")
    u.add_argument("--live", action="store_true",
                   help="read a store a running beatd holds: one consistent read-only snapshot "
                        "(without it, a store in use is refused naming its pid)")

    c = sub.add_parser("check-config", help="every start-time check, without capturing",
                       description="The checks `beatd run` makes at start, without capturing: "
                                   "the configuration, interfaces, capture permission, ring "
                                   "memory, ports, control socket, store (writable, lock, "
                                   "node, disk), certificates, ledger. One line per check, "
                                   "ok or FAIL naming the key and value; exit 0 when all are "
                                   "ok, 2 otherwise.")
    c.add_argument("file", metavar="F", help="beatd TOML configuration")

    from . import keygen
    k = sub.add_parser("keygen", help="generate the device's Ed25519 key (mode 0600)")
    keygen.add_arguments(k)
    return p


DEFAULT_SOCKET = "/run/beatd/control.sock"


def _fail(msg):
    print(f"beatd: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _replay(args):
    from .replay import format_summary, json_records, replay
    from .store import Store, StoreError

    try:
        cfg = load(args.config) if args.config else Config()
        changes = {}
        if args.node_id is not None:
            changes["node_id"] = args.node_id
        if args.hash:
            changes["hash"] = args.hash
        cfg = cfg.replace(**changes)
        if cfg.node_id is None:
            return _fail("replay: node_id: not set (give --node-id or node_id in --config)")
        batch = args.batch_frames or int(os.environ.get(ENV_BATCH) or REPLAY_BATCH)
        if batch < 1:
            return _fail(f"replay: --batch-frames: {batch} must be at least 1")
    except ConfigError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(f"{ENV_BATCH}: {exc}")
    if not os.path.exists(args.file):
        return _fail(f"{args.file}: no such file")

    tmp = None
    store_dir = args.store
    if store_dir is None:
        tmp = store_dir = tempfile.mkdtemp(prefix="beatd-replay-")
    out = sys.stdout
    try:
        store = Store(store_dir, **{k: v for k, v in cfg.store_kwargs().items() if k != "path"},
                      lock="beatd replay")
        try:
            emit = None
            if args.json:
                def emit(output):
                    rows = json_records(output, cfg.node_id, cfg.hash)
                    if rows:
                        out.write("".join(json.dumps(r, separators=(",", ":")) + "\n"
                                          for r in rows))
            summary = replay(args.file, cfg, store, batch_frames=batch, emit=emit)
        finally:
            store.close()
        if tmp is not None:
            summary["store"] = None
        if args.json:
            out.write(json.dumps({"summary": summary}, separators=(",", ":")) + "\n")
        else:
            out.write(format_summary(summary) + "\n")
        out.flush()
    except (CaptureError, ConfigError, StoreError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # `beatd replay --json | head`: not an error; keep Python's exit-time flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run(args):
    import logging
    import signal

    from . import logs
    from .control import ControlError
    from .daemon import Daemon, DaemonError
    from .store import StoreError

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.testing_lie:
        from .testing_lies import parse_lie
        try:
            for spec in args.testing_lie:
                parse_lie(spec)
        except ValueError as exc:
            return _fail(str(exc))
    log = logs.setup(args.log_format or cfg.log_format)
    try:
        daemon = Daemon(cfg, config_path=os.path.abspath(args.config),
                        testing_allow_inject=args.testing_allow_inject,
                        testing_lies=args.testing_lie)
    except DaemonError as exc:
        return _fail(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    try:
        daemon.start()
    except (ConfigError, DaemonError, StoreError, ControlError, OSError) as exc:
        # RingError is an OSError whose message names the interface and the errno
        msg = str(exc)
        if getattr(exc, "errno", None) in (1, 13) and "AF_PACKET" in msg:     # EPERM, EACCES
            msg += ("; capture needs CAP_NET_RAW: run beatd through its systemd unit, as root, or "
                    "with setpriv --ambient-caps=+net_raw (docs/operations.md, \"Privileges\")")
        logs.event(log, logging.ERROR, "cannot start", error=msg)
        return _fail(msg)
    try:
        daemon.serve()
    finally:
        daemon.shutdown()
    if daemon.failure:
        print(f"beatd: {daemon.failure}", file=sys.stderr)
        return 1
    return 0


def _status(args):
    from .control import ControlError, request

    path = args.socket
    if path is None and args.config:
        try:
            path = load(args.config).control_socket
        except ConfigError as exc:
            return _fail(str(exc))
        if not path:
            return _fail(f"{args.config}: daemon.control_socket is off (\"\"): no status to ask")
    path = path or DEFAULT_SOCKET
    try:
        st = request(path)
    except ControlError as exc:
        print(f"beatd: status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, separators=(",", ":")))
        return 0
    print(format_status(st))
    return 0


def format_status(st):
    """The human form of ``beatd status``."""
    if "error" in st:
        return f"error: {st['error']}"
    t = st["totals"]
    ring = (st.get("store") or {}).get("ring") or {}
    lc = st.get("last_commit") or {}
    lines = [
        f"beatd {st.get('version')} node {st['node_id']}, pid {st['pid']}, "
        f"up {st['uptime_s']:.0f} s, {st['workers']} workers, {st['impl']} fast path",
        f"  rates        {st['rates']['frames_per_s']} frames/s, "
        f"{st['rates']['records_per_s']} records/s",
        f"  totals       {t['frames']} frames, {t['records']} records, {t['segments']} segments, "
        f"{t['receipts']} receipts, {t['unknown_mac']} unknown MACs, "
        f"{t.get('neighbour_wrong_interface', 0)} neighbour MACs on a wrong interface",
        f"  dropped      {sum(st['drops'].values())} by the fast path, {st['kernel_drops']} by "
        f"the kernel",
    ]
    if st.get("state"):         # running, or degraded / failed and why
        lines.insert(1, f"  state        {st['state']}" +
                     (f" ({st['state_reason']})" if st.get("state_reason") else ""))
    lines.append(f"  interfaces   {', '.join(st['interfaces'])}"
                 + (f" ({st['interfaces_from']})" if st.get("interfaces_from") else ""))
    for i in st["rings"]:
        lines.append(f"  ring {i['name']:<7} {i.get('frames', 0)} frames, {i.get('bytes', 0)} bytes, "
                     f"kernel {i['kernel_packets']} packets / {i['kernel_drops']} drops")
    if ring:
        lines.append(f"  store        {st['store']['path']}: {ring.get('segments')} segments, "
                     f"{ring.get('bytes')} of {ring.get('ring_size')} bytes (proof ring), wraps "
                     f"{ring.get('wraps')}" + (" (SHORT of the threshold)" if ring.get("short")
                                                else ""))
    gs = st.get("capture_gaps")
    if gs is not None:
        last = gs.get("last")
        text = f"  capture gaps {gs.get('count', 0)}"
        if last:
            text += (f", last: {last['reason']} on {last['interface'] or 'every interface'}, "
                     f"[{last['from_ns']}, {last['to_ns']}] "
                     f"({(last['to_ns'] - last['from_ns']) / 1e9:.3f} s)"
                     + (f", {last['frames_dropped']} frames dropped"
                        if last['reason'] == "kernel drops" else ""))
        lines.append(text)
    lines.extend(_store_lines(st.get("store") or {}))
    if t.get("receipt_overflow"):
        lines.append(f"  receipts     {t['receipt_overflow']} packets counted in overflow "
                     "receipts (flows beyond governance.max_receipts_per_epoch)")
    age = lc.get("age_s")
    lines.append(f"  last commit  " + (f"{age} s ago, took {lc['seconds'] * 1000:.1f} ms, "
                                       f"{lc['commits']} commits" if age is not None else "none"))
    ifs = st.get("neighbour_interfaces") or {}
    lines.append(f"  neighbours   " + (", ".join(
        f"{m} -> {n} on " + (", ".join(ifs[m]) if ifs.get(m) is not None else "any interface")
        for m, n in st["neighbours"].items()) or "none"))
    lines.extend(neighbour_lines(st))
    an = st.get("anchor")
    if an:
        last = an.get("last_anchored_batch_seq")
        lines.append(f"  ledger       {an.get('backend')} {an.get('ledger')}: last anchored batch "
                     f"{'none' if last is None else last}, {an.get('pending_anchors', 0)} pending"
                     + (f" ({an.get('sent_anchors', 0)} sent, confirmed at "
                        f"{an['confirmations']} blocks deep)" if an.get("confirmations") else "")
                     + ", "
                     f"{an.get('leaves_waiting', 0)} leaves waiting, {an.get('retries', 0)} retries"
                     + (" (HALTED)" if an.get("halted") else "")
                     + (f", last error: {an['last_error']}" if an.get("last_error") else ""))
    it = st.get("interrogation")
    if it:
        refused = ", ".join(f"{k} {v}" for k, v in sorted((it.get("refused") or {}).items()))
        reasons = ", ".join(f"{k} {v}" for k, v in
                            sorted((it.get("refused_reasons") or {}).items()))
        cancelled = ", ".join(f"{k} {v}" for k, v in sorted((it.get("cancelled") or {}).items())
                              if v)
        calls = it.get("calls") or {}
        lines.append(f"  interrogate  port {it.get('port')}: {it.get('active_streams', 0)} "
                     f"answers running, {it.get('answers', 0)} given"
                     + (f", refused: {refused}" if refused else "")
                     + (f" (before the handler: {reasons})" if reasons else "")
                     + (f"; calls running: governance {calls.get('governance', 0)}, others "
                        f"{calls.get('others', 0)}" if calls else "")
                     + (f"; cancelled: {cancelled}" if cancelled else ""))
    ts = st.get("testing")
    if ts:
        lines.append("  TESTING      " + ", ".join(
            (["test-inject allowed"] if ts.get("allow_inject") else []) +
            [f"lies {' '.join(ts['lies'])} ({ts.get('records_rewritten', 0)} records rewritten, "
             f"{ts.get('records_withheld', 0)} withheld)"] * bool(ts.get("lies"))))
    if st.get("failure"):
        lines.append(f"  FAILURE      {st['failure']}")
    return "\n".join(lines)


def neighbour_lines(st):
    """``beatd status``'s lines on the neighbours given by their ip (what the kernel taught, the
    ones without a MAC yet) and on the busiest MACs that are no neighbour's."""
    lines = []
    nk = st.get("neighbour_kernel") or {}
    for x in nk.get("learned") or ():
        lines.append(f"  learned      {x['node_id']} ({x['ip']}): {x['mac']} on {x['interface']}, "
                     f"kernel {x['kernel']}")
    for x in nk.get("missing") or ():
        lines.append(f"  NO MAC YET   {x['node_id']} ({x['ip']}): not in the kernel's neighbour "
                     "table; its frames are recorded as from (to) outside")
    if nk.get("follow"):
        lines.append(f"  kernel table {nk.get('events', 0)} events, {nk.get('resyncs', 0)} re-syncs "
                     f"every {nk.get('resync_s')} s ({nk.get('resync_repairs', 0)} repaired a "
                     f"missed event), {nk.get('overruns', 0)} overruns, {nk.get('mac_changes', 0)} "
                     "MAC changes")
    um = st.get("unknown_macs") or {}
    if um.get("top"):
        lines.append(f"  unknown MACs {um['distinct']} MACs that are no configured neighbour "
                     f"(frames recorded as from/to outside), the busiest:")
        for m in um["top"]:
            ifs = ", ".join(f"{i} {n}" for i, n in sorted(m["interfaces"].items()))
            lines.append(f"    {m['mac']}  {m['frames']} frames ({m['ingress']} in, "
                         f"{m['egress']} out) on {ifs}")
    return lines


def _store_lines(store):
    """``beatd status``'s lines on a full store and on pruning (none when neither applies)."""
    lines = []
    dropped = store.get("dropped") or {}
    map_size = store.get("map_size")
    if store.get("free_bytes") is not None:
        lines.append(f"  disk         store {store.get('bytes')} bytes, "
                     f"{store['free_bytes']} bytes free on its filesystem")
    if store.get("full"):
        since = store.get("full_since")
        lines.append(f"  STORE FULL   since {time.strftime('%H:%M:%S', time.localtime(since))} "
                     f"(map {map_size} bytes): batches that do not fit are dropped; "
                     f"{store.get('full_error')}" if since else "  STORE FULL")
    if any(dropped.values()):
        lines.append(f"  dropped      for a full store since start: {dropped.get('batches')} "
                     f"batches, {dropped.get('records')} records, {dropped.get('segments')} "
                     f"segments, {dropped.get('receipts')} receipts")
    pruned = store.get("pruned") or {}
    if pruned.get("batches"):
        lines.append(f"  pruned       {pruned['batches']} anchored batches older than the "
                     f"threshold: {pruned.get('receipts')} receipts, {pruned.get('segments')} "
                     "segment commitments")
    return lines


def _dump(args):
    from types import SimpleNamespace

    from .replay import json_records
    from .store import StoreError

    try:
        cfg = load(args.config)
        if cfg.node_id is None:
            return _fail(f"{args.config}: node_id: not set")
        kw = cfg.store_kwargs()
        if args.store:
            kw["path"] = args.store
    except ConfigError as exc:
        return _fail(str(exc))
    if not os.path.isdir(kw["path"]):
        return _fail(f"{kw['path']}: no store there (store.path)")
    out = sys.stdout
    try:
        store = _open_for_reading(kw, args.live)
        try:
            with store.snapshot():          # one read transaction: one state of the store
                records = b"".join(store.iter_records())
                counters = store.counters()
                stats = store.stats()
                ring = store.proof_ring_status(0, 0)
        finally:
            store.close()
        rows = json_records(SimpleNamespace(records=records), cfg.node_id, cfg.hash)
        if args.json:
            for r in rows:
                out.write(json.dumps(r, separators=(",", ":")) + "\n")
            summary = {"store": kw["path"], "node_id": cfg.node_id, "hash": cfg.hash,
                       "records": len(rows), "stats": stats, "ring": ring,
                       "counters": [{"prev_id": p, "next_id": n, "packets": c[0], "bytes": c[1],
                                     "first_t_ns": c[2], "last_t_ns": c[3]}
                                    for (p, n), c in sorted(counters.items())]}
            out.write(json.dumps({"summary": summary}, separators=(",", ":")) + "\n")
        else:
            for r in rows:
                out.write(f"{r['t_ns']} {r['prev_id']:>20} {r['next_id']:>20} {r['pd']} "
                          f"{r['ft']} {r['fp']}\n")
            out.write(f"# {len(rows)} records in {kw['path']} (node {cfg.node_id})\n")
        out.flush()
    except StoreError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def _open_for_reading(kw, live):
    """The store for ``dump``: refused while another process holds it (a daemon, a replay),
    naming its pid, unless ``live``: then read-only beside it (LMDB readers see committed
    transactions only; nothing is written). A store nobody holds is opened read-only too, under
    its lock (no daemon may start writing it meanwhile)."""
    from .store import Store, StoreLock, StoreLockedError

    lock = None
    if not live:
        try:
            lock = StoreLock(kw["path"], "beatd dump").acquire()
        except StoreLockedError as exc:
            raise StoreLockedError(exc.path, exc.pid, exc.what, hint=(
                "beatd dump --live reads a snapshot of it; or stop that process first")) from None
    try:
        return _Locked(Store(**kw, readonly=True), lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


class _Locked:
    """A read-only store and the lock held while it is read (released at close)."""

    def __init__(self, store, lock):
        self._store, self._lock = store, lock

    def __getattr__(self, name):
        return getattr(self._store, name)

    def close(self):
        self._store.close()
        if self._lock is not None:
            self._lock.release()


def main(argv=None):
    """Entry point of the ``beatd`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in MOVED:
        return _fail(f"{argv[0]}: the testbed is not part of the router daemon any more: run "
                     f"{MOVED[argv[0]]}")
    args = _parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "dump":
        return _dump(args)
    if args.command == "check-config":
        from . import check_config
        return check_config.main(args)
    if args.command == "keygen":
        from . import keygen
        return keygen.main(args)
    return _fail(f"unknown command {args.command}")  # pragma: no cover (argparse rejects it)


if __name__ == "__main__":
    sys.exit(main())
