"""The live daemon (``beatd run``): capture rings -> one pipeline -> the LMDB store.

Threads (docs/daemon.md):
- capture workers: worker k owns ONE ring bound to every interface (``Ring("any", ...)`` filtered
  to the configured ones; the workers' rings form one fanout group), waits for a ring block and
  feeds it to the ONE pipeline (``ring.read(pipeline, timeout)``, GIL released): one socket gets
  both copies of a forwarded packet in the kernel's order, so the ingress copy is fed first;
  it also snapshots its rings' kernel drop statistics and counters about once a second (a ring is
  only ever touched by the thread that owns it);
- the committer: every ``daemon.commit_interval_ms``, ``pipeline.take()`` -> ``store.commit(out)``,
  one LMDB transaction; the only thread that touches the store while capture runs;
- the neighbour follower (``beatd.neighbours``), the metrics server and the control socket;
- the main thread (``serve()``): signals (flags set by the handlers ``beatd.cli`` installs), the
  anchor timer (``pipeline.close_segment()`` at every anchor period boundary), capture rates.

Capture gaps (docs/interrogation.md, the coverage): what the device may have missed, stored as
signed-later statements in the store's ``capture_gaps`` database. A capture worker that sees a
ring's kernel drop counter grow between two snapshots (``RING_STATS_INTERVAL_S``) makes a gap from
the previous snapshot's time to this one (interface = the ring's name, the frames dropped, reason
kernel drops); the committer writes the gaps, and at least once a second ``capture_alive_t_ns``
(``CAPTURE_ALIVE_INTERVAL_S``). At start, once the rings are open, the previous run's
``capture_alive_t_ns`` (its last commit; or, for a store without it, its newest record) to now is
a gap "capture stopped". Gaps are pruned with the threshold like the ring's records
(``Store.record_capture``). Every gap written is also an immutable gap record, anchored like
receipts (docs/gap-records.md): ``beatd.gap_journal`` coalesces the snapshots into one record per
interface and second, logs drops rate-limited and summarises them at stop.

``shutdown()`` stops the workers (within one read timeout), commits what the pipeline holds, then
flushes it (every pending observation released, the open segment and receipts closed), commits
that, and closes the store: nothing fed to the pipeline is lost. A worker or committer failure stops
the daemon with ``failure`` set (exit code 1; systemd restarts it and the pipeline resumes from the
store).

A full store (the LMDB map, or the disk: ``StoreFullError``) does not stop the daemon
(docs/store.md, "A full store"): the batch that did not fit is dropped (its transaction aborted,
the pipeline rewound to the store's state with ``Pipeline.rewind``) and counted, capture, the
Interrogation service and anchoring go on, pruning frees what it may, and recording resumes with
the first batch that fits again. After every commit the committer prunes what the ledger holds
and the governance can no longer ask for (``Store.prune``, bounded work).

A capture source is anything with the Ring API (``read(pipeline, timeout_ms) -> int``,
``kernel_stats()``, ``counters()``, ``close()``, ``ifname``, optionally ``fileno()``);
``source_factory(interfaces, worker, fanout_group, config)`` returns worker k's list of sources,
``ring_sources`` by default (tests inject stand-ins).

Ledger anchoring (``[ledger]``, docs/ledger.md): when a backend is configured, ``beatd.anchoring``
opens it and runs the anchor thread (``Anchoring``: ``ledger_client.batcher.Batcher`` on the store,
every ``ledger.anchor_period_s``). Capture never waits for it. At shutdown, after the final commit,
one last tick builds what is left and makes one submission attempt (bounded by
``FINAL_ANCHOR_TIMEOUT_S``).

What goes wrong is a typed value (``beatd.failures.Failure``): ``fault`` is the one that stopped the
daemon (capture, store; ``failure`` its line), ``failures()`` every one holding now (also the store
full, the ledger down or refusing), for ``beatd status`` and the ``beat_failure`` metric.

Reload (SIGHUP, ``reload()``): the configuration file is compared key by key with the running one
(``config.reload_plan``); the keys in ``config.RELOADABLE_KEYS`` are applied, each other changed key
is logged by its TOML name as needing a restart.

``backend = "ethereum"``: ``url`` (the JSON-RPC node), ``contract`` (the Beat contract's address)
and ``key`` = the device's Ethereum account key (``device.eth`` from ``beatd keygen --ethereum``),
which signs the anchor transactions; ``device_key`` (optional) = the device's Ed25519 key
(``device.ed25519``), its identity for evidence signatures, kept separate: at start the daemon
checks that the node is registered with both (account and public key) and warns otherwise.
"""
import dataclasses
import logging
import os
import select
import socket
import threading
import time

import fastpath

from . import __version__
from .config import format_mac
from .failures import Failure, Kind
from .gap_journal import GapJournal
from .logs import event
from .neighbours import NeighbourMap, pipeline_map, unbound
from .store import PRUNE_LEAVES, Store, StoreError, StoreFullError
from .unknown_macs import UnknownMacs

__all__ = ["Daemon", "DaemonError", "ring_sources", "list_interfaces"]

log = logging.getLogger("beatd.daemon")

READ_TIMEOUT_MS = 100
STATS_INTERVAL_S = 1.0
RING_STATS_INTERVAL_S = 0.25
RING_STATUS_INTERVAL_S = 1.0
FINAL_ANCHOR_TIMEOUT_S = 1.0
CAPTURE_ALIVE_INTERVAL_S = 1.0        # capture_alive_t_ns is written at least this often
DRAIN_S = 0.5                         # at stop, reading what the capture rings still hold
WRONG_IF_LOG_INTERVAL_S = 10.0        # one log message per (MAC, interface, direction) at most
IFF_LOOPBACK = 0x8
FULL_LOG_INTERVAL_S = 10.0            # a full store is logged once, then at most this often
PRUNE_LEAVES_FULL = 256               # per call while full: small transactions find free pages
STORE_DROPPED = ("batches", "records", "segments", "receipts")


class DaemonError(Exception):
    """The daemon cannot start; the message names the key, interface or path at fault."""


def list_interfaces():
    """Every non-loopback interface, by name, in ifindex order."""
    out = []
    for _, name in sorted(socket.if_nameindex()):
        try:
            with open(f"/sys/class/net/{name}/flags") as f:
                if int(f.read(), 16) & IFF_LOOPBACK:
                    continue
        except (OSError, ValueError):
            if name == "lo":
                continue
        out.append(name)
    return out


def ring_sources(interfaces, worker, fanout_group, config):
    """Worker ``worker``'s TPACKET_V3 rings (``fastpath._native.Ring``): one on "any" (every
    interface, one socket: the kernel's order), filtered to ``interfaces``; a Ring without the
    interface filter gets one ring per interface instead (the join then suffers: docs/daemon.md),
    with a warning."""
    try:
        from fastpath._native import Ring
    except (ImportError, AttributeError) as exc:
        raise DaemonError(f"live capture needs fastpath._native.Ring, which this build lacks "
                          f"({exc}); rebuild the native fast path (make build)") from None
    kw = config.ring_kwargs()
    try:
        return [Ring("any", fanout_group=fanout_group, interfaces=tuple(interfaces), **kw)]
    except TypeError as exc:
        if "interfaces" not in str(exc):
            raise
    if len(interfaces) > 1 and worker == 0:
        event(log, logging.WARNING, "this Ring has no interface filter: one ring per interface; "
              "ingress and egress copies may reach the pipeline out of order",
              interfaces=list(interfaces))
    return [Ring(ifname, fanout_group=None if fanout_group is None else
                 (fanout_group + i) & 0xFFFF, **kw)
            for i, ifname in enumerate(interfaces)]


def _quietly(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 (closing: nothing left to do about it)
        pass


def _shown(value):
    """A configuration value for a log line (MACs and neighbours readable)."""
    if isinstance(value, bytes):
        return format_mac(value) if len(value) == 6 else value.hex()
    if isinstance(value, tuple):
        return [_shown(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {k: _shown(v) for k, v in dataclasses.asdict(value).items()}
    return value


def _empty(out):
    return not (out.records or out.segments or out.receipts or out.counters
                or any(out.stats.values()))


class Daemon:
    def __init__(self, config, config_path=None, source_factory=None, testing_allow_inject=False,
                 testing_lies=()):
        self.cfg = config
        # TEST ONLY: `beatd run --testing-allow-inject` (see inject_capture)
        self.testing_allow_inject = bool(testing_allow_inject)
        # TEST ONLY: `beatd run --testing-lie SPEC` (beatd.testing_lies): the records are
        # rewritten (S recomputed) before they are committed
        self.testing_lies = None
        if testing_lies:
            from .testing_lies import Lies
            try:
                self.testing_lies = Lies(testing_lies, config.node_id, config.hash)
            except ValueError as exc:
                raise DaemonError(str(exc)) from None
        self.config_path = config_path
        self.source_factory = source_factory or ring_sources
        self.fault = None               # why the daemon stopped on its own (a fatal Failure)
        self.store = None
        self.pipeline = None
        self.neighbours = None
        self.metrics = None
        self.control = None
        self.interfaces = ()
        self.workers = []               # (thread, [source, ...])
        self._stop = threading.Event()          # set: the main loop ends
        self._capture_stop = threading.Event()
        self._commit_stop = threading.Event()
        self._commit_lock = threading.Lock()
        self._committer = None
        self._hup = False
        self._ring_stats = {}           # (worker, ifname) -> {"kernel": {...}, "counters": {...}}
        self._ring_status = None
        self._drops_seen = {}           # (worker, ifname) -> (t_ns, kernel drops) at the snapshot
        self._gaps_lock = threading.Lock()
        self._pending_gaps = []         # capture gaps not written yet (the committer writes them)
        self._capture_started_ns = None
        self._capture_ended_ns = None
        self._alive_written = 0.0       # monotonic time capture_alive_t_ns was last written
        self._gap_status = None         # Store.capture_gap_status(), after each write
        self.gap_journal = GapJournal(log)   # pieces -> gap records, drops logged, the summary
        self._ring_status_at = 0.0
        self.commits = 0
        # a full store: since when (None: not full), why, and what it could not record since start
        self._full = None               # the store_full Failure while the store is full
        self._full_logged = -FULL_LOG_INTERVAL_S
        self._full_logged_state = (False, 0)     # (full, episodes) as the last line said
        self._full_episodes = 0
        self.store_dropped = dict.fromkeys(STORE_DROPPED, 0)
        self._prune_error_logged = 0.0
        self._store_status = {}
        self._disk = None               # beatd.store.space.usage() of the store, every second
        self.commit_seconds = None
        self.last_commit_time = None
        from .metrics import Durations
        self.commit_durations = Durations()     # beat_store_commit_seconds
        self.reloads = 0
        self.last_reload = None         # what the last reload applied and what needs a restart
        self.last_reload_time = None    # the start, then each SIGHUP (beat_config_last_reload_*)
        self.started = None
        self._rates = {"frames_per_s": 0.0, "records_per_s": 0.0}
        self._rate_prev = None
        self.ledger = None              # the ledger backend, when [ledger] is configured
        self.batcher = None
        self.anchoring = None           # the anchor thread around the batcher (beatd.anchoring)
        self.device_key = None          # ethereum: the device's Ed25519 key (ledger.device_key)
        self._evidence_key = None       # the DeviceKey that signs evidence (already loaded)
        self.interrogation = None       # the gRPC Interrogation server, when configured
        self._ledger_log_routed = False
        self.slots = {}                 # {ifname: slot}: the interface each frame was captured on
        self._wrong_if_log = {}         # (mac, slot, dir) -> [monotonic time logged, frames since]
        self.unknown_macs = UnknownMacs(log)    # MACs that are no neighbour's: log and status
        self._warned_uncaptured = set()

    # -- start ----------------------------------------------------------------------------------

    def start(self):
        """Open everything (errors: DaemonError, StoreError, RingError, ControlError) and start
        the threads; on an error, whatever was opened is closed again."""
        try:
            self._start()
        except BaseException:
            self._close_all()
            raise

    def _start(self):
        cfg = self.cfg
        if cfg.node_id is None:
            raise DaemonError("node_id: not set in the configuration")
        self.interfaces = self._resolve_interfaces()
        self._log_interface_set()
        nworkers = cfg.workers or os.cpu_count() or 1
        event(log, logging.INFO, "starting", version=__version__, node_id=cfg.node_id,
              impl=fastpath.IMPL, interfaces=list(self.interfaces), workers=nworkers,
              store=cfg.store_path, config=self.config_path)
        self.store = self._open_store(nworkers)
        self.pipeline = fastpath.Pipeline(**cfg.pipeline_kwargs())
        resume = self.store.resume_state()
        self.pipeline.resume(**resume)
        event(log, logging.INFO, "store resumed", path=cfg.store_path,
              next_seg_seq=resume["next_seg_seq"], open_records=len(resume["open_records"]) // 48)
        self._refresh_ring_status(force=True)
        if cfg.ledger_enabled:
            self._open_ledger()

        # rings: all opened before any thread starts, so that a bad interface fails the start
        group = (os.getpid() * 251) & 0xFFFF if nworkers > 1 else None
        per_worker = []
        for k in range(nworkers):
            sources = []
            per_worker.append(sources)
            self.workers.append((None, sources))
            sources.extend(self.source_factory(self.interfaces, k, group, cfg))
        first = per_worker[0][0] if per_worker and per_worker[0] else None
        self.slots = self._capture_slots(per_worker)
        event(log, logging.INFO, "capture rings open", workers=nworkers,
              interfaces=list(self.interfaces), rings=[getattr(s, "ifname", "?") for s in
                                                       per_worker[0]],
              fanout_mode=cfg.fanout_mode, fanout_group=group,
              geometry=getattr(first, "geometry", None), slots=self.slots)

        self._start_capture_gaps()

        self._check_neighbour_interfaces(cfg.neighbours)
        for n in unbound(cfg.neighbours):
            event(log, logging.WARNING, "neighbour without an interface: its MAC names it on "
                  "every captured interface, so a frame carrying it on another link is taken as "
                  "from (or to) it; give its interface in [[neighbours]]", node_id=n.node_id,
                  mac=format_mac(n.mac), interfaces=list(self.interfaces))
        # the capture threads start below: the bound map is in the pipeline before any frame
        self.neighbours = NeighbourMap(cfg.neighbours, cfg.neighbour_refresh,
                                       on_change=self._set_neighbours,
                                       resync_s=cfg.neighbour_resync_s, own_macs=cfg.own_macs)
        self.neighbours.start()

        if cfg.metrics_address is not None:
            from .metrics import (AnchorCollector, InterrogationCollector, MetricsServer,
                                  NeighbourCollector)
            try:
                self.metrics = MetricsServer(cfg.metrics_address, self.snapshot, ops=self.ops)
            except OSError as exc:
                raise DaemonError(f'daemon.metrics_listen: "{cfg.metrics_listen}": cannot listen: '
                                  f"{exc.strerror or exc}") from None
            self.metrics.registry.register(AnchorCollector(self.anchor_status))
            self.metrics.registry.register(InterrogationCollector(lambda: self.interrogation))
            self.metrics.registry.register(NeighbourCollector(self.neighbour_status))
            from .metrics import StoreSpaceCollector
            self.metrics.registry.register(StoreSpaceCollector(self.cfg.store_path))
            event(log, logging.INFO, "metrics", listen=f"{self.metrics.host}:{self.metrics.port}")
        if cfg.interrogation_listen:
            self._start_interrogation()
        if cfg.control_socket:
            from .control import ControlServer
            self.control = ControlServer(
                cfg.control_socket, self.status,
                inject=self.inject_capture if self.testing_allow_inject else None)
            if self.testing_allow_inject:
                event(log, logging.WARNING, "TESTING: the control socket accepts test-inject: "
                      "frames from files enter the proofs as if captured; never in production")

        if self.testing_lies is not None:
            event(log, logging.WARNING, "TESTING: this daemon lies in its proof records (rewritten "
                  "before they are committed and anchored); never in production",
                  lies=self.testing_lies.specs)

        self.started = self.last_reload_time = time.time()
        self._committer = threading.Thread(target=self._commit_loop, name="beatd-commit",
                                           daemon=True)
        self._committer.start()
        if self.anchoring is not None:
            self.anchoring.start()
        self.workers = []
        for k, sources in enumerate(per_worker):
            t = threading.Thread(target=self._capture_loop, args=(k, sources),
                                 name=f"beatd-capture-{k}", daemon=True)
            self.workers.append((t, sources))
            t.start()
        state = self.state()
        if state == "running":
            event(log, logging.INFO, "running", node_id=cfg.node_id)
        else:
            event(log, logging.WARNING, f"running, {state}", node_id=cfg.node_id,
                  reason=self.state_reason())

    # -- the store and its disk (beatd.store.lock, beatd.store.space) ----------------------------

    def _open_store(self, nworkers):
        """The store, exclusively: its lock first (a second daemon, a replay or a dump on it is
        refused naming this pid, and this daemon is refused likewise), then the disk checked
        (``space.check``: a new store without room refuses the start, the rest are warnings), then
        the store opened. A store on a full disk opens: the daemon starts degraded, reporting the
        store full until a batch fits again."""
        from .store import StoreLock, space
        cfg = self.cfg
        lock = StoreLock(cfg.store_path, "beatd run").acquire()
        try:
            ring_bytes = cfg.block_size * cfg.block_count * max(1, nworkers)
            problems, warnings, use = space.check(cfg.store_path, cfg.effective_map_size,
                                                  ring_bytes)
            if problems:
                raise DaemonError("; ".join(problems))
            for w in warnings:
                event(log, logging.WARNING, "store: " + w, path=cfg.store_path)
            store = Store(**cfg.store_kwargs(), lock=lock)
        except BaseException:
            lock.release()
            raise
        self._disk = use
        if use is not None and use["free_bytes"] < space.DISK_FULL_FREE_BYTES:
            self._full = Failure(Kind.STORE_FULL, "store",
                                 space.no_space_message(cfg.store_path, use["free_bytes"]),
                                 "StoreDiskFullError", time.time())
            self._full_episodes += 1
        return store

    def _refresh_disk(self):
        """The store's bytes and its filesystem's free bytes (status, metrics, state)."""
        from .store import space
        try:
            self._disk = space.usage(self.cfg.store_path)
        except OSError:
            self._disk = None

    def _disk_full(self):
        from .store import space
        disk = self._disk
        return disk is not None and disk["free_bytes"] < space.DISK_FULL_FREE_BYTES

    def state(self):
        """``running``; ``degraded: store full`` (batches that do not fit are dropped: the map
        or the disk is full) or ``degraded: disk full`` (the store's filesystem has less than
        ``DISK_FULL_FREE_BYTES`` free: the next batch may not fit); ``failed``, ``stopping``."""
        if self.fault is not None:
            return "failed"
        if self._stop.is_set():
            return "stopping"
        if self._full is not None:
            return "degraded: store full"
        if self._disk_full():
            return "degraded: disk full"
        return "running"

    def state_reason(self):
        """Why the state is not ``running`` (an operator's line), or None."""
        from .store import space
        if self.fault is not None:
            return str(self.fault)
        if self._full is not None:
            return self._full.error
        if self._disk_full():
            return space.no_space_message(self.cfg.store_path, self._disk["free_bytes"])
        return None

    # -- neighbours and interfaces --------------------------------------------------------------

    def _capture_slots(self, per_worker):
        """``{ifname: slot}``: the slot each frame carries for the interface it was captured on
        (docs/fastpath.md): the configured interfaces in order from 1, as every Ring numbers its
        interface filter. A source that says otherwise (``slots``) stops the start."""
        slots = {name: i + 1 for i, name in enumerate(self.interfaces)}
        for k, sources in enumerate(per_worker):
            for s in sources:
                got = getattr(s, "slots", None)
                if got is None:
                    continue
                for name, slot in dict(got).items():
                    if slots.get(name) != slot:
                        raise DaemonError(f"capture worker {k}: ring {getattr(s, 'ifname', '?')} "
                                          f"gives interface {name} slot {slot}, the daemon "
                                          f"expects {slots.get(name)} (interfaces: "
                                          f"{', '.join(self.interfaces)})")
        return slots

    def _check_neighbour_interfaces(self, neighbours):
        """Every ``[[neighbours]]`` interface is a captured one (DaemonError naming the key)."""
        for i, n in enumerate(neighbours):
            if n.interface is not None and n.interface not in self.slots:
                raise DaemonError(f'neighbours[{i}].interface: "{n.interface}" is not a captured '
                                  f"interface (interfaces: {', '.join(self.interfaces)})")

    def _set_neighbours(self, bindings):
        """The neighbour map changed (start, SIGHUP, netlink): into the pipeline, with slots."""
        for mac, (nid, ifs) in bindings.items():
            if ifs is not None and not any(i in self.slots for i in ifs) and \
                    (mac, ifs) not in self._warned_uncaptured:
                self._warned_uncaptured.add((mac, ifs))
                event(log, logging.WARNING, "neighbour on an interface that is not captured: "
                      "frames carrying its MAC on the captured interfaces are recorded as from "
                      "(or to) outside; give its interface in [[neighbours]] if it is the one of "
                      "a captured port (a bridge or bond above them)", node_id=nid,
                      mac=format_mac(mac), on=list(ifs), interfaces=list(self.interfaces))
        self.pipeline.set_neighbours(pipeline_map(bindings, self.slots))

    def _log_wrong_interface(self, force=False):
        """The committer: frames whose neighbour MAC came (or went) on an interface where that
        neighbour is not, logged at most once per WRONG_IF_LOG_INTERVAL_S for each MAC, interface
        and direction (the frames in between are added to the next message; ``force``, the last
        commit at stop: every count not logged yet)."""
        now = time.monotonic()
        names = {slot: name for name, slot in self.slots.items()}
        for mac, slot, d, nid, frames in self.pipeline.take_wrong_interface():
            st = self._wrong_if_log.setdefault((mac, slot, d), [None, 0, nid])
            st[1] += frames
            st[2] = nid
        for (mac, slot, d), st in self._wrong_if_log.items():
            if st[1] and (force or st[0] is None or now - st[0] >= WRONG_IF_LOG_INTERVAL_S):
                event(log, logging.WARNING,
                      ("frames from a neighbour's MAC on an interface where that neighbour is "
                       "not: recorded as from outside (prev_id 0)") if d == 1 else
                      ("frames to a neighbour's MAC on an interface where that neighbour is not: "
                       "recorded as to outside (next_id 0)"),
                      mac=format_mac(mac), interface=names.get(slot, f"slot {slot}"),
                      neighbour=st[2], direction="ingress" if d == 1 else "egress",
                      frames=st[1], since_s=None if st[0] is None else round(now - st[0], 3))
                st[0], st[1] = now, 0

    def _note_unknown_macs(self, force=False):
        """The committer: the pipeline's MACs that are no neighbour's, into the table that logs
        them (rate-limited) and shows the busiest in the status."""
        listed, unlisted = self.pipeline.take_unknown_macs()
        self.unknown_macs.add(listed, unlisted, {slot: name for name, slot in self.slots.items()})
        self.unknown_macs.log_due(force=force)

    # -- capture gaps -------------------------------------------------------------------------

    def _start_capture_gaps(self):
        """The rings are open: capture runs from now. The time since the previous run's capture
        ended is a "capture stopped" gap, written now."""
        from .store import GAP_CAPTURE_STOPPED
        now = time.time_ns()
        self._capture_started_ns = now
        prev = self.store.capture_alive_t_ns()
        if prev is None:                # a store written before capture gaps: its newest record
            st = self.store.proof_ring_status(now, self.cfg.threshold_ns)
            prev = st.get("newest_t_ns") or None
        if prev is None:                # a new store: nothing was captured before this start
            prev = 0
        gaps = []
        if prev is not None and prev < now:
            gaps.append((prev, now, 0, GAP_CAPTURE_STOPPED, ""))
            event(log, logging.WARNING if now - prev > 10**9 * 60 else logging.INFO,
                  "capture gap: capture stopped since the previous run", from_ns=prev, to_ns=now,
                  seconds=round((now - prev) / 1e9, 3))
        try:
            self.store.record_capture(gaps, alive_t_ns=now, threshold_ns=self.cfg.threshold_ns)
        except StoreFullError as exc:           # written with a later commit, when there is room
            self.gap_journal.requeue(gaps)
            event(log, logging.WARNING, "capture gap kept in memory: the store is full",
                  error=str(exc))
        self._alive_written = time.monotonic()
        self._gap_status = self.store.capture_gap_status()

    def _note_drops(self, k, ifname, kernel, t_ns):
        """A worker's ring snapshot: kernel drops since its previous one make a capture gap."""
        from .store import GAP_KERNEL_DROPS
        drops = kernel.get("drops", 0)
        prev_t, prev_drops = self._drops_seen.get((k, ifname), (self._capture_started_ns or t_ns,
                                                                0))
        if drops > prev_drops:
            with self._gaps_lock:
                self._pending_gaps.append((min(prev_t, t_ns), t_ns, drops - prev_drops,
                                           GAP_KERNEL_DROPS, str(ifname)[:16]))
        self._drops_seen[(k, ifname)] = (t_ns, drops)

    def _write_capture_gaps(self, force=False):
        """The committer: pending gaps (as gap records: beatd.gap_journal, one per interface and
        second at most) and capture_alive_t_ns, at least once a second."""
        mono = time.monotonic()
        with self._gaps_lock:
            pieces, self._pending_gaps = self._pending_gaps, []
        self.gap_journal.add(pieces)
        gaps = self.gap_journal.due(force=force)
        if not gaps and not force and mono - self._alive_written < CAPTURE_ALIVE_INTERVAL_S:
            return
        alive = self._capture_ended_ns or time.time_ns()
        try:
            self.store.record_capture(gaps, alive_t_ns=alive, threshold_ns=self.cfg.threshold_ns)
        except StoreFullError:
            self.gap_journal.requeue(gaps)      # not lost: written once there is room again
            return
        except BaseException:
            self.gap_journal.requeue(gaps)      # not lost: written with the next commit
            raise
        self._alive_written = mono
        if gaps:
            self._gap_status = self.store.capture_gap_status()
            self.gap_journal.written(gaps)

    # -- the Interrogation service ----------------------------------------------------------

    def _start_interrogation(self):
        """gRPC over mutual TLS (docs/interrogation.md), evidence signed with the device's
        Ed25519 key (the one registered on the ledger)."""
        from ledger_client.keys import DeviceKey, KeyFileError

        from .interrogation import InterrogationServer, Limits
        cfg = self.cfg
        key = self._evidence_key
        if key is None:
            try:
                key = DeviceKey.load(cfg.interrogation_signing_key)
            except KeyFileError as exc:
                raise DaemonError(f"interrogation.signing_key: {exc}") from None
        try:
            limits = Limits(max_window_s=cfg.interrogation_max_window_s,
                            max_records=cfg.interrogation_max_records,
                            max_streams=cfg.interrogation_max_streams,
                            max_flow_tags=cfg.interrogation_max_flow_tags,
                            max_stream_s=cfg.interrogation_max_stream_s,
                            max_index_entries=cfg.interrogation_max_index_entries,
                            max_seg_seqs=cfg.interrogation_max_seg_seqs,
                            max_peer_rpcs=cfg.interrogation_max_peer_rpcs,
                            max_device_rpcs=cfg.interrogation_max_device_rpcs,
                            max_call_s=cfg.interrogation_max_call_s)
            self.interrogation = InterrogationServer(
                self.store, key, ca=cfg.interrogation_ca, cert=cfg.interrogation_cert,
                private_key=cfg.interrogation_key, listen=cfg.interrogation_listen,
                limits=limits, neighbours=self.neighbours.current,
                threshold_ns=cfg.threshold_ns).start()
        except (ValueError, OSError, RuntimeError) as exc:
            raise DaemonError(f"interrogation: {exc}") from None
        st = self.interrogation.stats()
        event(log, logging.INFO, "interrogation service", listen=cfg.interrogation_listen,
              port=st.get("port"), signer=key.public.hex())

    # -- ledger -------------------------------------------------------------------------------

    def _open_ledger(self):
        """The backend, the device's signer, the batcher and its thread (``beatd.anchoring``;
        DaemonError naming the key)."""
        from ledger_client.batcher import Batcher

        from .anchoring import Anchoring, AnchoringError, check_registration, open_ledger
        cfg = self.cfg
        self._route_ledger_logs()
        try:
            setup = open_ledger(cfg)
        except AnchoringError as exc:
            raise DaemonError(str(exc)) from None
        self.ledger, self.device_key = setup.backend, setup.device_key
        if setup.evidence_key is not None:
            self._evidence_key = setup.evidence_key
        try:
            self.batcher = Batcher(self.store, self.ledger, cfg.node_id, cfg.hash,
                                   signer=setup.signer,
                                   anchor_period_s=cfg.effective_ledger_anchor_period_s,
                                   max_leaves=cfg.ledger_max_leaves)
        except ValueError as exc:
            raise DaemonError(f'ledger: "{setup.where}": {exc}') from None
        self.anchoring = Anchoring(self.batcher, cfg, where=setup.where,
                                   map_size=lambda: getattr(self.store, "map_size", None))
        st = self.anchoring.stats
        event(log, logging.INFO, "ledger", backend=cfg.ledger_backend, where=setup.where,
              anchor_period_s=cfg.effective_ledger_anchor_period_s,
              next_batch_seq=st["next_batch_seq"], pending_anchors=st["pending_anchors"],
              leaves_waiting=st["leaves_waiting"])
        check_registration(cfg, setup)

    def _route_ledger_logs(self):
        """The batcher logs under ``beat.ledger``: through beatd's handlers, in beatd's format."""
        parent = logging.getLogger("beatd")
        child = logging.getLogger("beat.ledger")
        if parent.handlers and not child.handlers:
            for h in parent.handlers:
                child.addHandler(h)
            child.setLevel(parent.level or logging.INFO)
            child.propagate = False
            self._ledger_log_routed = True

    def _final_anchor(self):
        """After the final commit: build what is left, one submission attempt, bounded by
        ``FINAL_ANCHOR_TIMEOUT_S`` (read at call time)."""
        self.anchoring.final(FINAL_ANCHOR_TIMEOUT_S)

    def anchor_status(self):
        """The anchor state (status and metrics), or None without a ledger."""
        return self.anchoring.status() if self.anchoring is not None else None

    def neighbour_status(self):
        """The neighbours' part of the status (metrics): the follower's, the unknown MACs'."""
        nb = self.neighbours
        return {"neighbour_kernel": nb.status() if nb is not None else None,
                "unknown_macs": self.unknown_macs.status(top=0)}

    def interface_set(self):
        """Where the captured interfaces come from, as ``beatd status`` says it."""
        return ("configuration (interfaces)" if self.cfg.interfaces else
                "all interfaces: interfaces = [] in the configuration")

    def _log_interface_set(self):
        """The interface set, stated at start: every interface found (management ports
        included) when the configuration lists none."""
        if self.cfg.interfaces:
            event(log, logging.INFO, "capturing on the configured interfaces",
                  interfaces=list(self.interfaces))
        else:
            event(log, logging.WARNING, "capturing on all interfaces: interfaces = [] in the "
                  "configuration (every non-loopback interface found now, management ports "
                  "included; list the ports to capture in interfaces)",
                  interfaces=list(self.interfaces))

    def _resolve_interfaces(self):
        names = self.cfg.interfaces
        if not names:
            names = tuple(list_interfaces())
            if not names:
                raise DaemonError("interfaces: none given and no non-loopback interface found")
            return names
        if self.source_factory is ring_sources:
            present = {n for _, n in socket.if_nameindex()}
            for i, name in enumerate(names):
                if name not in present:
                    raise DaemonError(f'interfaces[{i}]: "{name}": no such network interface '
                                      f"(present: {', '.join(sorted(present))})")
        return tuple(names)

    # -- capture --------------------------------------------------------------------------------

    def _capture_loop(self, k, sources):
        pipe = self.pipeline
        stop = self._capture_stop
        next_stats = 0.0
        try:
            pollable = len(sources) > 1 and all(hasattr(s, "fileno") for s in sources)
            if pollable:
                poller = select.poll()
                by_fd = {}
                for s in sources:
                    by_fd[s.fileno()] = s
                    poller.register(s.fileno(), select.POLLIN | select.POLLERR)
            share = max(1, READ_TIMEOUT_MS // max(1, len(sources)))
            while not stop.is_set():
                if len(sources) == 1:
                    sources[0].read(pipe, READ_TIMEOUT_MS)
                elif pollable:
                    for fd, _ in poller.poll(READ_TIMEOUT_MS):
                        by_fd[fd].read(pipe, 0)
                else:
                    for s in sources:
                        s.read(pipe, share)
                now = time.monotonic()
                if now >= next_stats:
                    self._snapshot_rings(k, sources)
                    next_stats = now + RING_STATS_INTERVAL_S
            self._drain(sources)
        except Exception as exc:  # noqa: BLE001 (any failure stops the daemon, named)
            self._fail(Failure.of(Kind.CAPTURE, f"capture worker {k}", exc))
        finally:
            try:
                self._snapshot_rings(k, sources)
            except Exception:  # noqa: BLE001
                pass

    def _drain(self, sources):
        """At stop: what the kernel already holds in the rings is read too (the block still open
        is retired by the kernel within the block timeout), within ``DRAIN_S``: a packet that
        reached the router before the stop is recorded."""
        wait_ms = 2 * self.cfg.block_timeout_ms + 5
        end = time.monotonic() + DRAIN_S
        try:
            for s in sources:
                while time.monotonic() < end and s.read(self.pipeline, wait_ms) > 0:
                    pass
        except Exception as exc:  # noqa: BLE001 (stopping anyway: say it, do not fail the stop)
            event(log, logging.WARNING, "capture rings not drained at stop", error=str(exc))

    def _snapshot_rings(self, k, sources):
        for s in sources:
            ifname = getattr(s, "ifname", "?")
            kernel = dict(s.kernel_stats())
            t_ns = time.time_ns()               # the drops counted so far happened before this
            self._ring_stats[(k, ifname)] = {"kernel": kernel, "counters": dict(s.counters())}
            self._note_drops(k, ifname, kernel, t_ns)

    def inject_capture(self, path):
        """TEST ONLY (``--testing-allow-inject``): feed the frames of the capture file ``path``
        into the pipeline as if they had been captured now, with their own timestamps (the lab's
        misbehaviour scenarios fabricate proofs with it). Returns {"frames": n}."""
        from fastpath.output import DESC_SIZE

        from .capfile import CaptureError, CaptureReader

        try:
            reader = CaptureReader(path, 4096)
        except (CaptureError, OSError) as exc:
            return {"error": f"test-inject: {path}: {exc}"}
        n = 0
        for buf, desc in reader:
            self.pipeline.feed(buf, desc)
            n += len(desc) // DESC_SIZE
        event(log, logging.WARNING, "TESTING: frames injected", path=path, frames=n)
        return {"frames": n}

    # -- commit ---------------------------------------------------------------------------------

    def _commit_loop(self):
        interval = self.cfg.commit_interval_ms / 1000.0
        while not self._commit_stop.wait(interval):
            try:
                self.commit()
            except StoreError as exc:
                self._fail(Failure.of(Kind.STORE, "store", exc))
                return

    def commit(self, force_status=False):
        """``take()`` and commit it in one transaction (skipped when nothing happened); a batch a
        full store cannot hold is dropped and counted (``_store_full``). Then prune."""
        with self._commit_lock:
            # A quiet link still moves time on: let the join window pass by wall time, minus what
            # may still sit unread in a ring block (block timeout) or wait for this tick.
            lag_ns = (self.cfg.block_timeout_ms + self.cfg.commit_interval_ms) * 1_000_000
            self.pipeline.advance(max(0, time.time_ns() - lag_ns))
            out = self.pipeline.take()
            self._log_wrong_interface(force=force_status)
            self._note_unknown_macs(force=force_status)
            if self.testing_lies is not None:       # TEST ONLY (--testing-lie)
                self.testing_lies.apply(out)
            # gap records first: a gap record precedes in the outbox every leaf of what is
            # recorded after it, also one kept in memory while the store was full (the
            # governance reads back-dating from that order: docs/gap-records.md)
            self._write_capture_gaps(force=force_status)
            if not _empty(out):
                t0 = time.perf_counter()
                try:
                    self.store.commit(out)
                except StoreFullError as exc:
                    self._store_full(out, exc)
                else:
                    self.commit_seconds = time.perf_counter() - t0
                    self.commit_durations.observe(self.commit_seconds)
                    self.commits += 1
                    self.last_commit_time = time.time()
                    if self._full is not None:
                        self._store_has_room()
            self._log_full()        # a line the rate limit held back, or "store still full"
            self._prune()
            self._refresh_ring_status(force=force_status)

    def _store_full(self, out, exc):
        """The store had no room for ``out``: its transaction was aborted, so the store holds the
        state of the last batch that fitted. The pipeline goes back to that state (``rewind``:
        what it made since ``out`` goes too, in the same step), so that the next batch follows
        the store exactly. What is lost is counted: the batches, their records and segments, and
        the receipts (finalised ones, and open ones the store does not hold open)."""
        state = self.store.resume_state()
        since = self.pipeline.rewind(**state)
        n = self.store_dropped
        n["batches"] += 1
        # what the store still holds comes back with the rewind and is no loss: its open receipts
        # (finalised in a batch that failed, they are finalised again) and its open segment
        rk, ork = fastpath.RECEIPT_SIZE, fastpath.OPEN_RECEIPT_SIZE
        kept = {state["open_receipts"][i:i + 41] for i in range(0, len(state["open_receipts"]),
                                                                ork)}
        lost = set()
        for o in (out, since):
            n["records"] += len(o.records) // fastpath.RECORD_SIZE
            n["segments"] += sum(1 for seg in o.segments
                                 if bytes(seg[3]) != state["open_records"])
            lost.update(bytes(o.receipts[i:i + 41]) for i in range(0, len(o.receipts), rk))
        lost.update(bytes(since.open_receipts[i:i + 41])
                    for i in range(0, len(since.open_receipts), ork))
        n["receipts"] += len(lost - kept)
        if self._full is None:
            self._full = Failure.of(Kind.STORE_FULL, "store", exc)
            self._full_episodes += 1
        else:                           # the same episode: its latest error, since its start
            self._full = dataclasses.replace(self._full, error=str(exc),
                                             exc_type=type(exc).__name__)

    def _store_has_room(self):
        self._full = None

    def _log_full(self):
        """The full store's log lines, at most one every FULL_LOG_INTERVAL_S whatever the
        episodes (a store at the edge of full fits a small batch and not the next one): "store
        full" (an error) when it became full since the last line, "store still full" while it
        stays, "store has room again" once it has (also when that came between two lines)."""
        now = time.monotonic()
        full = self._full is not None
        if now - self._full_logged < FULL_LOG_INTERVAL_S or \
                (not full and self._full_logged_state == (False, self._full_episodes)):
            return
        was_full, episodes = self._full_logged_state
        dropped = {f"dropped_{k}": v for k, v in self.store_dropped.items()}
        where = {"path": self.cfg.store_path, "map_size": getattr(self.store, "map_size", None)}
        if full and (not was_full or episodes != self._full_episodes):
            event(log, logging.ERROR, "store full: the batches that do not fit are dropped and "
                  "counted; capture, the Interrogation service and anchoring go on, pruning "
                  "frees what it may", **where, error=self._full.error, **dropped)
        elif full:
            event(log, logging.WARNING, "store still full", **where,
                  full_for_s=round(time.time() - self._full.since, 1), **dropped)
        else:
            event(log, logging.INFO, "store has room again: recording resumed", **where,
                  episodes=self._full_episodes, **dropped)
        self._full_logged = now
        self._full_logged_state = (full, self._full_episodes)

    def _prune(self):
        """What the ledger holds and the governance can no longer ask for (``Store.prune``):
        nothing without a ledger (nothing is anchored); smaller steps while the store is full."""
        if self.batcher is None:
            return
        try:
            self.store.prune(time.time_ns(), self.cfg.threshold_ns,
                             PRUNE_LEAVES if self._full is None else PRUNE_LEAVES_FULL)
        except StoreError as exc:
            now = time.monotonic()
            if now - self._prune_error_logged >= FULL_LOG_INTERVAL_S:
                self._prune_error_logged = now
                event(log, logging.WARNING, "pruning failed; retried at the next commit",
                      path=self.cfg.store_path, error=str(exc))

    def _refresh_ring_status(self, force=False):
        now = time.monotonic()
        if force or now - self._ring_status_at >= RING_STATUS_INTERVAL_S:
            as_of = time.time()             # the store is read after this (status readers wait on it)
            st = self.store.proof_ring_status(time.time_ns(), self.cfg.threshold_ns)
            st["as_of"] = as_of
            self._ring_status = st
            self._store_status = self.store.prune_status()
            self._refresh_disk()
            self._ring_status_at = now

    def store_status(self):
        """The store's state for ``beatd status`` and the metrics: its map, whether it is full
        (since when, why), what a full store made the daemon drop since start, what was pruned."""
        full = self._full
        return {"path": self.cfg.store_path, "map_size": self.store.map_size if self.store else
                None, "full": full is not None, "full_since": full.since if full else None,
                "full_error": full.error if full else None,
                "full_episodes": self._full_episodes, "dropped": dict(self.store_dropped),
                "pruned": dict(self._store_status),
                "bytes": (self._disk or {}).get("store_bytes"),
                "free_bytes": (self._disk or {}).get("free_bytes")}

    # -- main thread ----------------------------------------------------------------------------

    def request_stop(self):
        """Signal-safe: the main loop ends at its next tick."""
        self._stop.set()

    def request_reload(self):
        """Signal-safe: the main loop reloads the neighbours at its next tick."""
        self._hup = True

    @property
    def failure(self):
        """Why the daemon stopped on its own, as the line ``beatd run`` and ``beatd status``
        print ("capture worker 0: ..."), or None; ``fault`` is the typed value."""
        return str(self.fault) if self.fault is not None else None

    def failures(self):
        """Every problem now, as ``Failure`` values (beatd.failures): the one that stopped the
        daemon, the store full, what keeps anchors off the ledger."""
        out = [f for f in (self.fault, self._full) if f is not None]
        if self.anchoring is not None:
            f = self.anchoring.failure()
            if f is not None:
                out.append(f)
        return out

    def _fail(self, failure):
        """A fatal failure (``Failure``, kind capture or store): the daemon stops (exit code 1)."""
        if self.fault is None:
            self.fault = failure
            event(log, logging.ERROR, "stopping on a failure", error=str(failure),
                  kind=failure.kind.value, exc_type=failure.exc_type)
        self._stop.set()

    def serve(self, tick_s=0.1):
        """The main loop: until ``request_stop()`` (or a failure)."""
        period = self.cfg.anchor_period_s
        next_anchor = (time.time() // period + 1) * period
        next_rate = time.monotonic() + STATS_INTERVAL_S
        while not self._stop.wait(tick_s):
            if self._hup:
                self._hup = False
                self.reload()
            now = time.time()
            if now >= next_anchor:
                self.pipeline.close_segment()
                next_anchor = (now // period + 1) * period
            mono = time.monotonic()
            if mono >= next_rate:
                self._update_rates(mono)
                next_rate = mono + STATS_INTERVAL_S

    def _update_rates(self, mono):
        t = self.pipeline.totals()
        if self._rate_prev is not None:
            pm, pf, pr = self._rate_prev
            dt = mono - pm
            if dt > 0:
                self._rates = {"frames_per_s": round((t["frames"] - pf) / dt, 1),
                               "records_per_s": round((t["records"] - pr) / dt, 1)}
        self._rate_prev = (mono, t["frames"], t["records"])

    def reload(self):
        """SIGHUP: the configuration file again, compared key by key with the running one
        (``config.reload_plan``): the keys a reload applies (``config.RELOADABLE_KEYS``: the
        neighbours) are applied, each other changed key is logged by its TOML name as needing a
        restart; then the kernel's neighbour table again, and a halted anchor submission resumes.
        Returns ``{"applied": [...], "restart": [...], "error": ...}`` (also ``last_reload`` in
        ``status()``)."""
        from .config import ConfigError, check_not_self, load, reload_plan
        self.reloads += 1
        result = {"applied": [], "restart": [], "error": None}
        if self.config_path:
            try:
                new = load(self.config_path)
            except ConfigError as exc:
                event(log, logging.ERROR, "reload: configuration rejected, neighbours unchanged",
                      error=str(exc))
                result["error"] = str(exc)
                new = None
            if new is not None:
                plan = reload_plan(self.cfg, new)
                result["restart"] = list(plan.restart)
                for key in plan.restart:
                    event(log, logging.WARNING, f"reload: {key} changed: needs a restart",
                          key=key, running=_shown(self.cfg.value_of(key)),
                          new=_shown(new.value_of(key)))
                try:
                    self._check_neighbour_interfaces(new.neighbours)
                    # against the running identity: a changed node_id waits for a restart
                    check_not_self(new.neighbours, self.cfg.node_id, self.cfg.own_macs)
                except (DaemonError, ConfigError) as exc:
                    event(log, logging.ERROR, "reload: configuration rejected, neighbours "
                          "unchanged", error=str(exc))
                    result["error"] = str(exc)
                    new = None
            if new is not None:
                for n in unbound(new.neighbours):
                    event(log, logging.WARNING, "neighbour without an interface: its MAC names "
                          "it on every captured interface; give its interface in [[neighbours]]",
                          node_id=n.node_id, mac=format_mac(n.mac))
                self.neighbours.set_config(new.neighbours)
                # the running configuration takes what was applied, and keeps the rest: a key
                # that needs a restart is reported again at the next reload
                self.cfg = self.cfg.with_keys(new, plan.apply)
                result["applied"] = list(plan.apply)
        self.neighbours.reload_kernel()
        if self.anchoring is not None:
            self.anchoring.resume()
        self.last_reload = result
        self.last_reload_time = time.time()
        event(log, logging.INFO, "reloaded", reloads=self.reloads,
              neighbours=len(self.neighbours.current()), applied=result["applied"],
              restart=result["restart"])
        return result

    # -- stop -----------------------------------------------------------------------------------

    def shutdown(self):
        """Stop capture, commit everything, flush, commit, close the store and the servers."""
        t0 = time.monotonic()
        self._capture_stop.set()
        if self.anchoring is not None:
            self.anchoring.request_stop()
        for t, _ in self.workers:
            if t is not None:
                t.join(timeout=1.0)
        if self._capture_started_ns is not None:
            self._capture_ended_ns = time.time_ns()     # what arrives from now on is not read
        self._commit_stop.set()
        if self._committer is not None:
            self._committer.join(timeout=1.0)
        committed = False
        store_failed = self.fault is not None and self.fault.kind is Kind.STORE
        if self.store is not None and self.pipeline is not None and not store_failed:
            try:
                self.commit()
                self.pipeline.flush()
                self.commit(force_status=True)
                committed = True
            except StoreError as exc:
                if self.fault is None:
                    self.fault = Failure.of(Kind.STORE, "store", exc)
                event(log, logging.ERROR, "final commit failed", error=str(exc))
        if committed and self.anchoring is not None:
            self._final_anchor()
        self.gap_journal.log_summary()
        totals = self.pipeline.totals() if self.pipeline is not None else {}
        self._close_all()
        dropped = {f"dropped_{k}": v for k, v in self.store_dropped.items() if v}
        event(log, logging.INFO, "stopped", committed=committed,
              frames=totals.get("frames"), records=totals.get("records"),
              seconds=round(time.monotonic() - t0, 3), failure=self.failure, **dropped)

    def _close_all(self):
        self._capture_stop.set()
        self._commit_stop.set()
        if self.anchoring is not None:
            self.anchoring.stop(FINAL_ANCHOR_TIMEOUT_S)
        for _, sources in self.workers:
            for s in sources:
                try:
                    s.close()
                except Exception:  # noqa: BLE001
                    pass
        if self.interrogation is not None:
            _quietly(lambda: self.interrogation.stop(1.0))
            self.interrogation = None
        # each of these waits for its thread's next poll (0.1 s): stop them side by side
        closers = []
        for name in ("neighbours", "control", "metrics"):
            obj = getattr(self, name)
            if obj is not None:
                setattr(self, name, None)
                t = threading.Thread(target=_quietly,
                                     args=(obj.stop if name == "neighbours" else obj.close,))
                t.start()
                closers.append(t)
        for t in closers:
            t.join(timeout=1.0)
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.ledger is not None:
            _quietly(getattr(self.ledger, "close", lambda: None))
            self.ledger = None
        if self._ledger_log_routed:
            child = logging.getLogger("beat.ledger")
            for h in list(child.handlers):
                child.removeHandler(h)
            child.propagate = True
            self._ledger_log_routed = False

    # -- what it says about itself --------------------------------------------------------------

    def _capture_totals(self):
        """Kernel statistics and ring counters by ring name ("any", or an interface), summed over
        the workers, and the totals; from the workers' last snapshots (at most 0.25 s old)."""
        kernel, per_if = {}, {}
        total = {"frames": 0, "bytes": 0}
        for (_, ifname), st in list(self._ring_stats.items()):
            k = kernel.setdefault(ifname, {"packets": 0, "drops": 0, "freeze_q_cnt": 0})
            for key in k:
                k[key] += st["kernel"].get(key, 0)
            c = per_if.setdefault(ifname, {"frames": 0, "bytes": 0, "vlan_tagged": 0,
                                           "snap_truncated": 0})
            for key in c:
                c[key] += st["counters"].get(key, 0)
            total["frames"] += st["counters"].get("frames", 0)
            total["bytes"] += st["counters"].get("bytes", 0)
        return kernel, per_if, total

    def snapshot(self):
        """What the metrics are made of (see ``beatd.metrics``)."""
        kernel, _, total = self._capture_totals()
        return {"totals": self.pipeline.totals(), "capture": total, "kernel": kernel,
                "ring": self._ring_status, "commits": self.commits,
                "commit_seconds": self.commit_seconds, "anchor": self.anchor_status(),
                "store": self.store_status(),
                "failures": sorted({f.kind.value for f in self.failures()})}

    def ops(self):
        """What the operator's metrics are made of (``beatd.metrics.OpsCollector``)."""
        return {"commit_durations": self.commit_durations,
                "last_anchor_time": (self.anchoring.last_anchor_time
                                     if self.anchoring is not None else None),
                "reload": {"success": (self.last_reload or {}).get("error") is None,
                           "time": self.last_reload_time}}

    def status(self):
        """The state ``beatd status`` prints (JSON-able)."""
        kernel, per_if, _ = self._capture_totals()
        totals = self.pipeline.totals()
        neighbours = self.neighbours
        now = time.time()
        rings = [{"name": name, **per_if[name], "kernel_packets": kernel[name]["packets"],
                  "kernel_drops": kernel[name]["drops"]} for name in sorted(per_if)]
        from fastpath.output import REASON_CLASS
        return {
            "node_id": self.cfg.node_id,
            "state": self.state(),
            "state_reason": self.state_reason(),
            "version": __version__,
            "pid": os.getpid(),
            "impl": fastpath.IMPL,
            "config": self.config_path,
            "started": self.started,
            "uptime_s": round(now - self.started, 3) if self.started else 0,
            "workers": len(self.workers),
            "interfaces": list(self.interfaces),
            "interfaces_from": self.interface_set(),
            "rings": rings,
            "rates": dict(self._rates),
            "totals": totals,
            "drops": {r: totals[r] for r in REASON_CLASS},
            "kernel_drops": sum(k["drops"] for k in kernel.values()),
            "store": {**self.store_status(), "ring": self._ring_status},
            "capture_gaps": self._gap_status,
            "last_commit": {"time": self.last_commit_time, "seconds": self.commit_seconds,
                            "age_s": round(now - self.last_commit_time, 3)
                            if self.last_commit_time else None,
                            "commits": self.commits},
            "neighbours": {format_mac(m): n for m, n in
                           (neighbours.current().items() if neighbours else ())},
            # where each neighbour's MAC names it (null: on every interface)
            "neighbour_interfaces": {format_mac(m): (list(ifs) if ifs is not None else None)
                                     for m, (_, ifs) in
                                     (neighbours.bindings().items() if neighbours else ())},
            "neighbour_wrong_interface": totals["neighbour_wrong_interface"],
            # the neighbours given by their ip: what the kernel taught, the follower's counters
            "neighbour_kernel": neighbours.status() if neighbours else None,
            # frames from (to) MACs that are no neighbour's, recorded as from (to) outside
            "unknown_macs": self.unknown_macs.status(),
            "reloads": self.reloads,
            "anchor": self.anchor_status(),
            "interrogation": (self.interrogation.stats() if self.interrogation is not None
                              else None),
            "failure": self.failure,
            "failures": [f.as_dict() for f in self.failures()],
            "last_reload": self.last_reload,
            "testing": ({"allow_inject": self.testing_allow_inject,
                         **(self.testing_lies.status() if self.testing_lies else {"lies": []})}
                        if self.testing_allow_inject or self.testing_lies else None),
        }

