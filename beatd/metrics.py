"""beatd's Prometheus metrics: text exposition at ``http://<daemon.metrics_listen>/metrics``.

The names are those of docs/daemon.md (one name per idea). Nothing is counted twice: a collector
reads the daemon's ``snapshot()`` at scrape time (the pipeline's totals since start, the rings'
counters, the kernel drop counters, the store's ring status cached by the committer), so the capture
path does no metrics work at all. prometheus_client does the format and the HTTP server (a thread).
"""
import bisect
import math
import platform
import socket
import time

import threading
from wsgiref.simple_server import make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.process_collector import ProcessCollector

from fastpath.output import REASON_CLASS

from .failures import Kind

__all__ = ["MetricsServer", "Collector", "AnchorCollector", "InterrogationCollector", "NAMES",
           "ANCHOR_METRICS", "INTERROGATION_METRICS", "OPS_METRICS", "PROCESS_METRICS",
           "Durations", "BuildInfoCollector", "OpsCollector", "build_info", "StoreSpaceCollector",
           "STORE_SPACE_METRICS", "NeighbourCollector", "NEIGHBOUR_METRICS"]

NAMES = ("beat_frames_total", "beat_bytes_total", "beat_records_total", "beat_dropped_total",
         "beat_kernel_drops_total", "beat_kernel_packets_total", "beat_ring_wraps_total",
         "beat_oldest_proof_age_seconds", "beat_ring_short", "beat_batches_written_total",
         "beat_segments_total", "beat_receipts_total", "beat_unknown_mac_total",
         "beat_neighbour_wrong_interface_total", "beat_join_overflow_total",
         "beat_commit_seconds", "beat_receipt_overflow_total", "beat_store_full",
         "beat_store_dropped_total", "beat_store_pruned_total", "beat_failure")


def _counter(name, doc, value, labels=None):
    # prometheus_client wants the name without "_total" and adds it back in the exposition
    m = CounterMetricFamily(name[:-len("_total")], doc, labels=list(labels or ()))
    if labels is None:
        m.add_metric([], value)
    else:
        for key, v in value.items():
            m.add_metric([key] if isinstance(key, str) else list(key), v)
    return m


def _gauge(name, doc, value):
    m = GaugeMetricFamily(name, doc)
    m.add_metric([], value)
    return m


class Collector:
    """Turns ``snapshot()`` (a dict, see ``beatd.daemon.Daemon.snapshot``) into the metrics."""

    def __init__(self, snapshot):
        self._snapshot = snapshot

    def collect(self):
        s = self._snapshot()
        t = s["totals"]
        ring = s.get("ring") or {}
        oldest = ring.get("oldest_t_ns")
        age = max(0.0, (time.time_ns() - oldest) / 1e9) if oldest else 0.0
        kernel = s["kernel"]
        yield _counter("beat_frames_total", "Frames fed to the fast path since start", t["frames"])
        yield _counter("beat_bytes_total", "Bytes of the frames captured since start (wire length)",
                       s["capture"]["bytes"])
        yield _counter("beat_records_total", "Proof records made since start", t["records"])
        yield _counter("beat_dropped_total", "Frames without a digest since start, by reason",
                       {r: t[r] for r in REASON_CLASS}, labels=("reason",))
        yield _counter("beat_kernel_drops_total", "Frames the kernel dropped (ring full), by "
                       "ring (\"any\": all the configured interfaces)", {i: k["drops"] for i, k in kernel.items()},
                       labels=("interface",))
        yield _counter("beat_kernel_packets_total", "Frames the kernel handed to the rings, by "
                       "ring (\"any\": all the configured interfaces)", {i: k["packets"] for i, k in kernel.items()},
                       labels=("interface",))
        yield _counter("beat_ring_wraps_total", "Proof segments overwritten by the ring (store)",
                       ring.get("wraps", 0))
        yield _gauge("beat_oldest_proof_age_seconds", "Age of the oldest proof in the ring", age)
        yield _gauge("beat_ring_short", "1 when the ring wrapped and holds less than the "
                     "governance threshold", 1 if ring.get("short") else 0)
        yield _counter("beat_batches_written_total", "Store transactions committed since start",
                       s["commits"])
        yield _counter("beat_segments_total", "Proof segments closed since start", t["segments"])
        yield _counter("beat_receipts_total", "Receipts finalised since start", t["receipts"])
        yield _counter("beat_unknown_mac_total", "Observations whose MAC is not a neighbour",
                       t["unknown_mac"])
        yield _counter("beat_neighbour_wrong_interface_total", "Observations carrying a "
                       "neighbour's MAC on an interface where that neighbour is not, recorded as "
                       "from or to outside (0)", t["neighbour_wrong_interface"])
        yield _counter("beat_join_overflow_total", "Observations released early: join FIFO full",
                       t["join_overflow"])
        last = s.get("commit_seconds")
        yield _gauge("beat_commit_seconds", "Duration of the last store commit",
                     last if last is not None else math.nan)
        yield _counter("beat_receipt_overflow_total", "Packets counted in an epoch's overflow "
                       "receipt (their flow beyond governance.max_receipts_per_epoch), per role",
                       t.get("receipt_overflow", 0))
        store = s.get("store") or {}
        yield _gauge("beat_store_full", "1 while the store is full (batches dropped)",
                     1 if store.get("full") else 0)
        yield _counter("beat_store_dropped_total", "What a full store could not record since "
                       "start, by kind (batches, records, segments, receipts)",
                       dict(store.get("dropped") or {}), labels=("what",))
        pruned = store.get("pruned") or {}
        yield _counter("beat_store_pruned_total", "Pruned from the store (anchored, older than "
                       "the threshold), by kind: batches, segments, receipts",
                       {k: pruned.get(k, 0) for k in ("batches", "segments", "receipts")},
                       labels=("what",))
        now = set(s.get("failures") or ())
        m = GaugeMetricFamily("beat_failure", "1 while a failure of this kind holds (capture, "
                              "store: the daemon stops; store_full, ledger_down, "
                              "ledger_refused, anchor: it goes on), else 0", labels=["kind"])
        for kind in Kind:
            m.add_metric([kind.value], 1 if kind.value in now else 0)
        yield m


STORE_SPACE_METRICS = ("beat_store_bytes", "beat_store_free_bytes")


class StoreSpaceCollector:
    """The store's bytes on disk and the free bytes of its filesystem, read at scrape time
    (``beatd.store.space.usage``: a statvfs and three stats)."""

    def __init__(self, store_path):
        self._path = store_path

    def collect(self):
        from .store.space import usage
        try:
            use = usage(self._path)
        except OSError:
            return
        yield _gauge("beat_store_bytes", "Bytes the store's files take on disk (allocated)",
                     use["store_bytes"])
        yield _gauge("beat_store_free_bytes", "Bytes free for the store on its filesystem",
                     use["free_bytes"])


ANCHOR_METRICS = ("beat_anchor_leaves_waiting", "beat_anchor_pending", "beat_anchor_last_batch_seq",
                  "beat_anchor_retries_total", "beat_anchors_total", "beat_anchor_sent",
                  "beat_anchor_resent_total")


class AnchorCollector:
    """The anchor metrics (only when a ledger is configured): leaves waiting, pending anchors,
    last anchored batch_seq (-1: none yet), failed submission attempts and anchors on the ledger
    (both since start)."""

    def __init__(self, anchor_status):
        self._status = anchor_status

    def collect(self):
        st = self._status()
        if not st:
            return
        last = st.get("last_anchored_batch_seq")
        for name, doc, value in (
                ("beat_anchor_leaves_waiting", "Outbox leaves not in a batch yet",
                 st.get("leaves_waiting", 0)),
                ("beat_anchor_pending", "Batches built and not yet on the ledger",
                 st.get("pending_anchors", 0)),
                ("beat_anchor_last_batch_seq", "The last batch_seq on the ledger (-1: none)",
                 -1 if last is None else last),
                ("beat_anchor_sent", "Pending batches on the ledger but not yet confirmations "
                 "blocks deep (sent, not confirmed)", st.get("sent_anchors", 0))):
            m = GaugeMetricFamily(name, doc)
            m.add_metric([], value)
            yield m
        for name, doc, value in (
                ("beat_anchor_retries_total", "Failed anchor submissions (ledger unavailable) "
                 "since start", st.get("retries", 0)),
                ("beat_anchors_total", "Anchors that reached the ledger since start",
                 st.get("anchors_submitted", 0)),
                ("beat_anchor_resent_total", "Anchors sent again since start (reorganised away "
                 "or dropped before they were confirmed)", st.get("resent", 0))):
            m = CounterMetricFamily(name[:-len("_total")], doc)
            m.add_metric([], value)
            yield m


INTERROGATION_METRICS = ("beat_interrogation_active_streams", "beat_interrogation_answers_total",
                         "beat_interrogation_refused_total",
                         "beat_interrogation_refused_reasons_total", "beat_interrogation_calls",
                         "beat_interrogation_cancelled_total")


class InterrogationCollector:
    """The Interrogation service's metrics (only when it runs): evidence answers running now,
    answers given and requests refused by gRPC status code (both since start); the guard's
    refusals by reason, calls running by role (governance, others), calls cancelled by the
    watchdog by limit (max_stream_s, max_call_s)."""

    def __init__(self, server):
        self._server = server

    def collect(self):
        srv = self._server()
        if srv is None:
            return
        st = srv.stats()
        m = GaugeMetricFamily("beat_interrogation_active_streams",
                              "Evidence answers (proof segments, receipts) running now")
        m.add_metric([], st.get("active_streams", 0))
        yield m
        m = CounterMetricFamily("beat_interrogation_answers", "Answers given since start")
        m.add_metric([], st.get("answers", 0))
        yield m
        m = CounterMetricFamily("beat_interrogation_refused",
                                "Requests refused since start, by gRPC status code",
                                labels=["code"])
        for code, n in sorted((st.get("refused") or {}).items()):
            m.add_metric([str(code)], n)
        yield m
        m = CounterMetricFamily("beat_interrogation_refused_reasons",
                                "Calls refused before their handler since start, by reason (role, "
                                "max_peer_rpcs, max_device_rpcs)", labels=["reason"])
        for reason, n in sorted((st.get("refused_reasons") or {}).items()):
            m.add_metric([str(reason)], n)
        yield m
        m = GaugeMetricFamily("beat_interrogation_calls",
                              "Calls running now, by the client certificate's role (governance, "
                              "others)", labels=["role"])
        for role, n in sorted((st.get("calls") or {}).items()):
            m.add_metric([str(role)], n)
        yield m
        m = CounterMetricFamily("beat_interrogation_cancelled",
                                "Calls cancelled by the watchdog since start, by limit "
                                "(max_stream_s: evidence answers, max_call_s: the others)",
                                labels=["limit"])
        for limit, n in sorted((st.get("cancelled") or {}).items()):
            m.add_metric([str(limit)], n)
        yield m


NEIGHBOUR_METRICS = ("beat_unknown_macs", "beat_neighbours_without_mac",
                     "beat_neighbour_resyncs_total", "beat_neighbour_resync_repairs_total",
                     "beat_neighbour_event_overruns_total", "beat_neighbour_mac_changes_total")


class NeighbourCollector:
    """The neighbours' metrics, from ``status()`` (the daemon's status dict, or None): MACs that
    are no neighbour's, neighbours given by their ip without a MAC yet, the follower's re-syncs
    with the kernel table (and those that repaired a missed event), overruns, MAC changes."""

    def __init__(self, status):
        self._status = status

    def collect(self):
        st = self._status()
        if st is None:
            return
        um, nk = st.get("unknown_macs") or {}, st.get("neighbour_kernel") or {}
        yield _gauge("beat_unknown_macs", "Distinct MACs that are no configured neighbour's seen "
                     "since start (frames recorded as from/to outside; bounded table)",
                     um.get("distinct", 0))
        yield _gauge("beat_neighbours_without_mac", "Neighbours given by their ip whose MAC the "
                     "kernel's neighbour table has not given yet", len(nk.get("missing") or ()))
        for name, key, doc in (
                ("beat_neighbour_resyncs_total", "resyncs",
                 "Periodic re-reads of the kernel's neighbour table (daemon.neighbour_resync_s)"),
                ("beat_neighbour_resync_repairs_total", "resync_repairs",
                 "Re-reads that changed the neighbour map: a netlink event had been missed"),
                ("beat_neighbour_event_overruns_total", "overruns",
                 "Neighbour events the kernel dropped (ENOBUFS): the table was read again"),
                ("beat_neighbour_mac_changes_total", "mac_changes",
                 "Neighbours given by their ip whose MAC the kernel replaced by another")):
            yield _counter(name, doc, nk.get(key, 0))


# -- what an operator expects beside the evidence: build, process, commit times, anchor, reload --

OPS_METRICS = ("beat_build_info", "beat_store_commit_seconds", "beat_last_anchor_timestamp_seconds",
               "beat_config_last_reload_success", "beat_config_last_reload_timestamp_seconds")
# prometheus_client's standard process metrics (read from /proc/self)
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                   "process_start_time_seconds")
# a store commit (one LMDB transaction) takes ~0.2 ms with sync, more under load or on a slow disk
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Durations:
    """A histogram kept by the one thread that observes (the committer, once per commit): counts
    per bucket (``le``), their sum and count; ``snapshot()`` for the scrape (a lock: both sides
    take it for microseconds)."""

    def __init__(self, buckets=COMMIT_BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)        # the last one: above every bucket
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds):
        i = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self):
        """``([(le, cumulative count)...,("+Inf", count)], sum)``, the exposition's form."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for le, n in zip(self.buckets, counts):
            acc += n
            out.append((repr(float(le)), acc))
        out.append(("+Inf", acc + counts[-1]))
        return out, total


def build_info():
    """``{"version", "python", "simd"}``: beatd's version, the interpreter's, and the fast path's
    hash SIMD level (``avx512``, ``avx2``, ``scalar``; ``pure-python`` for the pure twin)."""
    from . import __version__
    simd = "pure-python"
    try:
        import fastpath
        if fastpath.IMPL == "c":
            from fastpath._native import simd as native_simd
            simd = native_simd()
    except (ImportError, AttributeError):
        pass
    return {"version": __version__, "python": platform.python_version(), "simd": simd}


class BuildInfoCollector:
    """``beat_build_info{version,python,simd} 1``."""

    def __init__(self):
        self._info = build_info()

    def collect(self):
        m = GaugeMetricFamily("beat_build_info", "beatd's version, Python's version and the fast "
                              "path's SIMD level, as labels (the value is always 1)",
                              labels=list(self._info))
        m.add_metric(list(self._info.values()), 1)
        yield m


class OpsCollector:
    """The commit-duration histogram, the last anchor's time and the last reload's outcome, from
    ``ops()``: ``{"commit_durations": Durations, "last_anchor_time": float or None,
    "reload": {"success": bool, "time": float}}``."""

    def __init__(self, ops):
        self._ops = ops

    def collect(self):
        o = self._ops()
        buckets, total = o["commit_durations"].snapshot()
        yield HistogramMetricFamily("beat_store_commit_seconds", "Duration of the store commits "
                                    "(one LMDB transaction each) since start",
                                    buckets=buckets, sum_value=total)
        last = o.get("last_anchor_time")
        yield _gauge("beat_last_anchor_timestamp_seconds", "When the last anchor reached the "
                     "ledger (Unix time, as this daemon saw it; 0: none since start or no ledger)",
                     last or 0)
        rl = o.get("reload") or {}
        yield _gauge("beat_config_last_reload_success", "1 when the last configuration load (the "
                     "start, or the last SIGHUP) was accepted, 0 when it was rejected",
                     1 if rl.get("success", True) else 0)
        yield _gauge("beat_config_last_reload_timestamp_seconds", "When the configuration was "
                     "last loaded (the start, or the last SIGHUP; Unix time)", rl.get("time") or 0)


class ProcessMetrics(ProcessCollector):
    """prometheus_client's process collector (cpu seconds, resident and virtual memory, open and
    maximum fds, start time, all from /proc/self) that also works where /proc shows the process's
    own files only (the unit's ProcSubset=pid hides /proc/stat): the boot time is then the wall
    clock minus CLOCK_BOOTTIME."""

    def __init__(self):
        super().__init__(registry=None)

    def _boot_time(self):
        try:
            got = super()._boot_time()
        except OSError:
            got = None
        if got:
            return got
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class MetricsServer:
    """The HTTP server on ``(host, port)`` (port 0: any; ``.port`` says which)."""

    def __init__(self, address, snapshot, ops=None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(snapshot))
        self.registry.register(BuildInfoCollector())
        self.registry.register(ProcessMetrics())
        if ops is not None:
            self.registry.register(OpsCollector(ops))
        host, port = address
        from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self._server = make_server(host, port, make_wsgi_app(self.registry), Server,
                                   handler_class=_SilentHandler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, name="beatd-metrics",
                                        daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        self.host = host

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=1.0)
