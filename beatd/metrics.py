"""beatd's Prometheus metrics: text exposition at ``http://<daemon.metrics_listen>/metrics``.

The names are those of docs/daemon.md (one name per idea). Nothing is counted twice: a collector
reads the daemon's ``snapshot()`` at scrape time (the pipeline's totals since start, the rings'
counters, the kernel drop counters, the store's ring status cached by the committer), so the capture
path does no metrics work at all. prometheus_client does the format and the HTTP server (a thread).
"""
import math
import socket
import time

import threading
from wsgiref.simple_server import make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from fastpath.output import REASON_CLASS

__all__ = ["MetricsServer", "Collector", "NAMES"]

NAMES = ("beat_frames_total", "beat_bytes_total", "beat_records_total", "beat_dropped_total",
         "beat_kernel_drops_total", "beat_kernel_packets_total", "beat_ring_wraps_total",
         "beat_oldest_proof_age_seconds", "beat_ring_short", "beat_batches_written_total",
         "beat_segments_total", "beat_receipts_total", "beat_unknown_mac_total",
         "beat_neighbour_wrong_interface_total", "beat_join_overflow_total",
         "beat_commit_seconds", "beat_receipt_overflow_total", "beat_store_full",
         "beat_store_dropped_total", "beat_store_pruned_total")


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


class MetricsServer:
    """The HTTP server on ``(host, port)`` (port 0: any; ``.port`` says which)."""

    def __init__(self, address, snapshot):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(snapshot))
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
