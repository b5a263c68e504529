"""The device side of the Interrogation Protocol: a gRPC server over mutual TLS.

docs/interrogation.md has the contract, the error table and this server's limits and roles.

``InterrogationServer(store, key, ca=, cert=, private_key=, ...)`` serves ``beat.v1.Interrogation``
(plus grpc.health.v1 and server reflection) from a device's LMDB store while the daemon keeps
writing it: ``start()``, ``port``, ``stop(grace)``; the daemon runs it beside its threads (gRPC has
its own pool). Every call passes ``beatd.rpc_guard.RpcGuard`` first: health is open to any
certificate of the domain's CA, everything else needs the governance role; calls of certificates
without it are limited per certificate (``max_peer_rpcs``) and together (``max_device_rpcs``), so
that they never hold the workers the governance needs; a watchdog cancels evidence answers after
``max_stream_s`` and every other call (Health.Watch, reflection) after ``max_call_s``.

The answers' evidence is read out of the store by ``beatd.store.evidence.EvidenceStore`` (short
read transactions, never blocking the writer); this module checks requests, signs chunks and serves.
"""
import logging
import os
import sys
import threading
import time
from concurrent import futures
from functools import lru_cache

import grpc
import lmdb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc

from . import __version__
from .certs import ROLE_GOVERNANCE, peer_role
from .rpc_guard import RpcGuard
from .store import StoreError
from .store.evidence import AnchorIndex, AnswerPlan, EvidenceStore, OutboxIndex  # noqa: F401

__all__ = ["InterrogationServer", "InterrogationServicer", "EvidenceStore", "Limits",
           "SERVICE_NAME", "DEFAULT_MAX_WINDOW_S", "DEFAULT_MAX_RECORDS", "DEFAULT_MAX_STREAMS",
           "DEFAULT_MAX_FLOW_TAGS", "DEFAULT_MAX_STREAM_S", "DEFAULT_MAX_INDEX_ENTRIES",
           "DEFAULT_MAX_SEG_SEQS", "DEFAULT_MAX_PEER_RPCS", "DEFAULT_MAX_DEVICE_RPCS",
           "DEFAULT_MAX_CALL_S", "DEFAULT_MAX_FLOWS", "OPEN_METHODS"]

log = logging.getLogger("beatd.interrogation")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Interrogation"].full_name   # beat.v1.Interrogation
OPEN_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")   # any peer
EVIDENCE_METHODS = (f"/{SERVICE_NAME}/GetProofSegments", f"/{SERVICE_NAME}/GetReceipts",
                    f"/{SERVICE_NAME}/GetGapRecords")
FORMAT_VERSION = 1
DEFAULT_MAX_WINDOW_S = 3600.0        # = governance.threshold_s's default: what the ring must cover
DEFAULT_MAX_RECORDS = 4_000_000      # ~192 MB of records per answer, ~4 s at 1M records/s
DEFAULT_MAX_STREAMS = 4              # concurrent GetProofSegments/GetReceipts answers
DEFAULT_MAX_FLOW_TAGS = 64
DEFAULT_MAX_STREAM_S = 600.0         # an answer still running after this is cancelled
DEFAULT_MAX_INDEX_ENTRIES = 100_000  # ~1 h of 10 kpps is 36,000 segments of 1024; ~600 B each
DEFAULT_MAX_SEG_SEQS = 1024          # segments one GetSegments request may name
DEFAULT_MAX_FLOWS = 256              # flows one GetReceipts request may name (request kind 7)
DEFAULT_MAX_PEER_RPCS = 4            # calls of one certificate without the governance role
DEFAULT_MAX_DEVICE_RPCS = 8          # calls of all the certificates without it, together
DEFAULT_MAX_CALL_S = 60.0            # any other call (Health.Watch, reflection) cancelled after
GOVERNANCE_SPARE_WORKERS = 4         # workers for the governance beyond max_streams
QUEUED_RPCS = 16                     # calls gRPC queues beyond its workers before refusing
RECEIPTS_PER_CHUNK = 4096            # ~0.5-1 MiB of receipts with their paths
GAP_RECORDS_PER_CHUNK = 4096         # ~0.4-1 MiB of gap records with their paths
MAX_MESSAGE = 64 << 20               # a lone segment of segment_records = 10^6 is 48 MB

_FT_OFFSET = 40
_NATIVE_U64 = "Q"


class Limits:
    """The device's limits on one request (constructor defaults: the module's DEFAULT_*)."""

    def __init__(self, max_window_s=DEFAULT_MAX_WINDOW_S, max_records=DEFAULT_MAX_RECORDS,
                 max_streams=DEFAULT_MAX_STREAMS, max_flow_tags=DEFAULT_MAX_FLOW_TAGS,
                 max_stream_s=DEFAULT_MAX_STREAM_S, max_index_entries=DEFAULT_MAX_INDEX_ENTRIES,
                 max_seg_seqs=DEFAULT_MAX_SEG_SEQS, max_peer_rpcs=DEFAULT_MAX_PEER_RPCS,
                 max_device_rpcs=DEFAULT_MAX_DEVICE_RPCS, max_call_s=DEFAULT_MAX_CALL_S,
                 max_flows=DEFAULT_MAX_FLOWS):
        for name, value in (("max_window_s", max_window_s), ("max_records", max_records),
                            ("max_flows", max_flows),
                            ("max_streams", max_streams), ("max_flow_tags", max_flow_tags),
                            ("max_stream_s", max_stream_s),
                            ("max_index_entries", max_index_entries),
                            ("max_seg_seqs", max_seg_seqs), ("max_peer_rpcs", max_peer_rpcs),
                            ("max_device_rpcs", max_device_rpcs), ("max_call_s", max_call_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"interrogation.{name}: {value!r} must be a number above 0")
        for name, value in (("max_records", max_records), ("max_streams", max_streams),
                            ("max_flows", max_flows),
                            ("max_flow_tags", max_flow_tags),
                            ("max_index_entries", max_index_entries),
                            ("max_seg_seqs", max_seg_seqs), ("max_peer_rpcs", max_peer_rpcs),
                            ("max_device_rpcs", max_device_rpcs)):
            if not isinstance(value, int):
                raise ValueError(f"interrogation.{name}: {value!r} must be an integer")
        if max_peer_rpcs > max_device_rpcs:
            raise ValueError(f"interrogation.max_peer_rpcs: {max_peer_rpcs} is more than "
                             f"max_device_rpcs {max_device_rpcs}")
        self.max_window_s = float(max_window_s)
        self.max_window_ns = int(max_window_s * 1e9)
        self.max_records = max_records
        self.max_streams = max_streams
        self.max_flow_tags = max_flow_tags
        self.max_stream_s = float(max_stream_s)
        self.max_index_entries = max_index_entries
        self.max_seg_seqs = max_seg_seqs
        self.max_peer_rpcs = max_peer_rpcs
        self.max_device_rpcs = max_device_rpcs
        self.max_call_s = float(max_call_s)
        self.max_flows = max_flows

    @property
    def workers(self):
        """The server's worker threads: the governance's (max_streams evidence answers and a few
        short calls) plus max_device_rpcs, which is all the other certificates may hold."""
        return self.max_streams + GOVERNANCE_SPARE_WORKERS + self.max_device_rpcs


class ChunkSigner:
    """Signs chunk bodies with the device's ``DeviceKey``. Ed25519 (RFC 8032) is deterministic:
    OpenSSL (``cryptography``) computes the very same 64 bytes as the key's own ``sign``
    (pycryptodome) about 3x faster on 1 MiB bodies, so it is used when it can load the key and
    gives the same signature on a test message; else ``key.sign``. ``impl`` says which."""

    def __init__(self, key):
        self.key = key
        self.public = key.public
        self._sign = key.sign
        self.impl = "pycryptodome"
        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
            from cryptography.hazmat.primitives.serialization import load_pem_private_key
            k = load_pem_private_key(key.to_pem(), password=None)
            probe = b"BEAT-EV-v1 signer probe"
            if isinstance(k, Ed25519PrivateKey) and k.sign(probe) == key.sign(probe):
                self._sign = k.sign
                self.impl = "openssl"
        except Exception as exc:  # noqa: BLE001 (any trouble: the key's own sign, which works)
            log.info("interrogation: signing with pycryptodome (%s)", exc)

    def sign(self, body):
        return self._sign(body)


class RequestError(Exception):
    """A request the device refuses: ``code`` (grpc.StatusCode) and the message for the client."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# -- flow tags ----------------------------------------------------------------------------------

def _find_aligned(records, tag, start=_FT_OFFSET):
    """True when ``tag`` is the FT (bytes 40..48) of one of the 48-byte records."""
    i = records.find(tag, start)
    while i != -1:
        if i % ev.RECORD_SIZE == _FT_OFFSET:
            return True
        i = records.find(tag, i + 1)
    return False


class FlowTagFilter:
    """Whether a segment's packed records hold one of the flow tags: ``bytes.find`` stepping for
    one or two tags (~45M records/s per tag), else a set test over the FT column read as native
    u64 (~30M records/s whatever the number of tags). No Python object per record is kept."""

    def __init__(self, tags):
        self.tags = tuple(tags)
        self._ints = frozenset(int.from_bytes(t, sys.byteorder) for t in self.tags)

    def __call__(self, records):
        if len(self.tags) <= 2:
            data = records if isinstance(records, bytes) else bytes(records)
            return any(_find_aligned(data, t) for t in self.tags)
        col = memoryview(records).cast(_NATIVE_U64)[5::6]
        return not self._ints.isdisjoint(col)


# -- roles --------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _role_of_pem(pem):
    return peer_role(pem)


def _peer(context):
    """``(role or None, description)`` of the client certificate of this call."""
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        return None, "no client certificate"
    return _role_of_pem(bytes(certs[0]))


# -- the servicer -------------------------------------------------------------------------------

def _window(limits, from_ns, to_ns):
    if to_ns == 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"window [{from_ns}, {to_ns}]: to_ns is 0 (max_window_s "
                           f"{limits.max_window_s:g} s)")
    if to_ns < from_ns:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"window [{from_ns}, {to_ns}]: to_ns is before from_ns (max_window_s "
                           f"{limits.max_window_s:g} s)")
    if to_ns - from_ns > limits.max_window_ns:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"window [{from_ns}, {to_ns}] is {(to_ns - from_ns) / 1e9:.3f} s long, "
                           f"more than max_window_s {limits.max_window_s:g} s")


def _bytes_field(name, value, size):
    if len(value) != size:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name}: {ev._show(value)}, must be {size} bytes")


class InterrogationServicer(pb_grpc.InterrogationServicer):
    """``beat.v1.Interrogation`` on an EvidenceStore (see the module doc)."""

    def __init__(self, evidence, key, node_id, hash_name, limits=None, neighbours=None,
                 threshold_ns=0, clock=time.time_ns):
        self.evidence = evidence
        self.key = key
        self.signer = ChunkSigner(key)
        self.node_id = node_id
        self.hash_name = hash_name
        self.limits = limits or Limits()
        self.neighbours = neighbours
        self.threshold_ns = threshold_ns
        self.clock = clock
        self._lock = threading.Lock()
        self._streams = {}                  # id -> (context, started monotonic)
        self._next_id = 0
        self.answers = 0                    # evidence answers completed
        self.refused = {}                   # status code name -> count
        self.cancelled = 0                  # answers cancelled after max_stream_s

    # -- plumbing --

    def _refuse(self, context, exc):
        with self._lock:
            self.refused[exc.code.name] = self.refused.get(exc.code.name, 0) + 1
        log.info("interrogation refused: %s: %s", exc.code.name, exc)
        context.abort(exc.code, str(exc))

    def _governance_only(self, context, rpc):
        role, why = _peer(context)
        if role is None or role.kind != ROLE_GOVERNANCE:
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{rpc} needs the governance role; the client certificate has "
                               f"{why}")

    def _acquire(self, context):
        with self._lock:
            if len(self._streams) >= self.limits.max_streams:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{len(self._streams)} evidence streams are running: the "
                                   f"device's max_streams is {self.limits.max_streams}; retry "
                                   "later")
            sid = self._next_id
            self._next_id += 1
            self._streams[sid] = (context, time.monotonic())
        context.add_callback(lambda: self._release(sid))
        return sid

    def _release(self, sid):
        with self._lock:
            self._streams.pop(sid, None)

    def _answered(self):
        with self._lock:
            self.answers += 1

    def active_streams(self):
        with self._lock:
            return len(self._streams)

    def cancel_overdue(self, now=None):
        """Cancel the answers running longer than max_stream_s (a client that stopped reading
        holds a stream slot); returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            overdue = [(sid, ctx) for sid, (ctx, t0) in self._streams.items()
                       if now - t0 > self.limits.max_stream_s]
            self.cancelled += len(overdue)
        for sid, ctx in overdue:
            log.warning("interrogation: an answer ran longer than max_stream_s %g s; cancelled",
                        self.limits.max_stream_s)
            ctx.cancel()
            self._release(sid)
        return len(overdue)

    def _store_call(self, what, fn, *args):
        try:
            return fn(*args)
        except (StoreError, lmdb.Error, OSError) as exc:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"the store {self.evidence.path} cannot be read ({what}): "
                               f"{type(exc).__name__}: {exc}") from None

    def _sign(self, body):
        return pb.SignedChunk(body=body, signature=self.signer.sign(body))

    def _nonce(self, nonce):
        _bytes_field("nonce", nonce, ev.NONCE_SIZE)

    # -- RPCs --

    def GetNodeInfo(self, request, context):
        try:
            self._governance_only(context, "GetNodeInfo")
            now = self.clock()
            info = self._store_call("node info", self._node_info, now)
        except RequestError as exc:
            self._refuse(context, exc)
        return info

    def _node_info(self, now):
        self.evidence.refresh()
        fields = self.evidence.node_info(now, self.threshold_ns)
        neighbours = []
        current = self.neighbours() if self.neighbours is not None else ()
        items = current.items() if isinstance(current, dict) else current
        for item in items:
            if isinstance(current, dict):
                mac, node_id = item
                iface = ""
            else:
                node_id, mac, iface = item
            neighbours.append(pb.Neighbour(node_id=node_id, mac=bytes(mac or b""),
                                           interface=iface or ""))
        neighbours.sort(key=lambda n: (n.node_id, n.mac))
        return pb.NodeInfo(node_id=self.node_id, hash=self.hash_name,
                           public_key=self.key.public, neighbours=neighbours,
                           threshold_ns=self.threshold_ns, version=__version__,
                           format_version=FORMAT_VERSION, now_ns=now, **fields)

    def GetProofSegments(self, request, context):
        lim = self.limits
        try:
            self._governance_only(context, "GetProofSegments")
            self._nonce(request.nonce)
            if len(request.flow_tags) > lim.max_flow_tags:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"flow_tags: {len(request.flow_tags)} given, at most "
                                   f"{lim.max_flow_tags}")
            try:
                tags = ev.normalise_flow_tags(request.flow_tags)
            except ValueError as exc:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            _window(lim, request.from_ns, request.to_ns)
            Q = ev.request_digest(self.hash_name, ev.KIND_SEGMENTS, request.from_ns,
                                  request.to_ns, tags, None, None, request.nonce)
            self._acquire(context)
            flow_filter = FlowTagFilter(tags) if tags else None
            self._store_call("indexing", self.evidence.refresh)
            plan = self._store_call("selecting segments", self.evidence.plan_answer,
                                    request.from_ns, request.to_ns, flow_filter,
                                    self.threshold_ns)
            where = f"[{request.from_ns}, {request.to_ns}]"
            if plan.count > lim.max_index_entries:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{plan.count} index entries (segments {plan.first_seq}.."
                                   f"{plan.first_seq + plan.count - 1}) for the window {where}: "
                                   f"more than the device's max_index_entries "
                                   f"{lim.max_index_entries}; ask for a shorter window")
            selected = plan.selected
            records = sum(c for _, c in selected)
            if records > lim.max_records:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{records} records in {len(selected)} segments of the window "
                                   f"{where}: more than the device's max_records "
                                   f"{lim.max_records}; ask for a shorter window or fewer flows")
            entries = self._store_call("indexing segments", self.evidence.index_entries,
                                       plan.first_seq, plan.count)
        except RequestError as exc:
            self._refuse(context, exc)
        yield from self._segments_answer(context, Q, selected, plan, entries)

    def _chunked_answer(self, kind, Q, items, per_chunk):
        """The signed chunks of a list answer (receipts, gap records): ``per_chunk`` items each,
        one empty chunk for none, the last flagged; then the session is answered."""
        groups = [items[i:i + per_chunk] for i in range(0, len(items), per_chunk)] or [[]]
        for seq, group in enumerate(groups):
            body = ev.encode_chunk(kind, self.node_id, Q, seq, seq == len(groups) - 1,
                                   self.clock(), group)
            yield self._sign(body)
        self._answered()

    def _segments_answer(self, context, Q, selected, plan=None, entries=()):
        """The chunks of a segments answer: the selected segments in full (kind 1), then the
        coverage (kind 4, the last flag on its last chunk). ``plan`` None (GetSegments): the
        coverage has the ring fields read after the segments were sent, no index, no gap."""
        chunk_seq = 0
        sent = set()

        def segment_body(_, segments, last):
            return ev.encode_chunk(ev.KIND_SEGMENTS, self.node_id, Q, chunk_seq, False,
                                   self.clock(), segments)

        def coverage_body(_, coverage, last):
            return ev.encode_chunk(ev.KIND_COVERAGE, self.node_id, Q, chunk_seq, last,
                                   self.clock(), coverage)

        def signed(chunks, what):
            """Sign and yield the bodies ``chunks`` makes (a store that cannot be read refuses
            the rest of the answer)."""
            nonlocal chunk_seq
            while True:
                try:
                    body = self._store_call(what, next, chunks, None)
                except RequestError as exc:
                    self._refuse(context, exc)
                if body is None:
                    return
                yield self._sign(body)
                chunk_seq += 1

        yield from signed(self.evidence.segment_chunks(selected, segment_body, final=False,
                                                        sent=sent), "reading segments")
        if plan is None:
            try:
                proof_ring = self._store_call("coverage", self.evidence.proof_ring_fields,
                                              self.threshold_ns)
            except RequestError as exc:
                self._refuse(context, exc)
            plan = AnswerPlan([], 0, 0, proof_ring, [])
        yield from signed(self.evidence.coverage_chunks(plan, entries, sent, coverage_body),
                          "coverage")
        self._answered()

    def GetSegments(self, request, context):
        lim = self.limits
        try:
            self._governance_only(context, "GetSegments")
            self._nonce(request.nonce)
            if len(request.seg_seqs) > lim.max_seg_seqs:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"seg_seqs: {len(request.seg_seqs)} given, at most "
                                   f"{lim.max_seg_seqs}")
            seqs = ev.normalise_seg_seqs(request.seg_seqs)
            Q = ev.segments_request_digest(self.hash_name, seqs, request.nonce)
            self._acquire(context)
            self._store_call("indexing", self.evidence.refresh)
            selected = self._store_call("selecting segments", self.evidence.held_segments, seqs)
            records = sum(c for _, c in selected)
            if records > lim.max_records:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{records} records in the {len(selected)} segments asked: "
                                   f"more than the device's max_records {lim.max_records}; ask "
                                   "for fewer segments")
        except RequestError as exc:
            self._refuse(context, exc)
        yield from self._segments_answer(context, Q, selected)

    def GetCounterReport(self, request, context):
        try:
            self._governance_only(context, "GetCounterReport")
            self._nonce(request.nonce)
            Q = ev.request_digest(self.hash_name, ev.KIND_COUNTERS, 0, 0, (), None, None,
                                  request.nonce)
            counters = self._store_call("counters", self.evidence.counters)
        except RequestError as exc:
            self._refuse(context, exc)
        body = ev.encode_chunk(ev.KIND_COUNTERS, self.node_id, Q, 0, True, self.clock(), counters)
        self._answered()
        return self._sign(body)

    def GetReceipts(self, request, context):
        if len(request.flows):
            yield from self._receipts_of_flows(request, context)
            return
        try:
            self._governance_only(context, "GetReceipts")
            self._nonce(request.nonce)
            _bytes_field("src", request.src, ev.ADDR_SIZE)
            _bytes_field("dst", request.dst, ev.ADDR_SIZE)
            _window(self.limits, request.from_ns, request.to_ns)
            Q = ev.request_digest(self.hash_name, ev.KIND_RECEIPTS, request.from_ns,
                                  request.to_ns, (), request.src, request.dst, request.nonce)
            self._acquire(context)
            self._store_call("indexing", self.evidence.refresh)
            receipts = self._store_call("receipts", self.evidence.receipts, request.from_ns,
                                        request.to_ns, request.src, request.dst)
        except RequestError as exc:
            self._refuse(context, exc)
        yield from self._chunked_answer(ev.KIND_RECEIPTS, Q, receipts, RECEIPTS_PER_CHUNK)

    def _receipts_of_flows(self, request, context):
        """GetReceipts naming several flows (request kind 7): the receipts of every flow named,
        in (flow, epoch_ns, role) order, kind-3 chunks: each flow's receipts exactly as its own
        request (kind 3) is answered, the flows in the order Q binds them."""
        lim = self.limits
        try:
            self._governance_only(context, "GetReceipts")
            if request.src or request.dst:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"src {ev._show(request.src)} and dst {ev._show(request.dst)} "
                                   f"with {len(request.flows)} flows: a request names one flow "
                                   "by src/dst or several by flows, not both")
            self._nonce(request.nonce)
            if len(request.flows) > lim.max_flows:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"flows: {len(request.flows)} given, at most "
                                   f"{lim.max_flows}")
            try:
                flows = ev.normalise_flows([(f.src, f.dst) for f in request.flows])
            except ValueError as exc:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            _window(lim, request.from_ns, request.to_ns)
            Q = ev.flows_request_digest(self.hash_name, request.from_ns, request.to_ns, flows,
                                        request.nonce)
            self._acquire(context)
            self._store_call("indexing", self.evidence.refresh)
            receipts = []
            for f in flows:                 # each flow's receipts as its kind-3 answer has them
                receipts += self._store_call("receipts", self.evidence.receipts, request.from_ns,
                                             request.to_ns, f[:ev.ADDR_SIZE], f[ev.ADDR_SIZE:])
        except RequestError as exc:
            self._refuse(context, exc)
        yield from self._chunked_answer(ev.KIND_RECEIPTS, Q, receipts, RECEIPTS_PER_CHUNK)

    def GetGapRecords(self, request, context):
        """The gap records overlapping the window, each with its inclusion proof (chunk kind 6,
        docs/gap-records.md); an empty answer is one chunk of none."""
        try:
            self._governance_only(context, "GetGapRecords")
            self._nonce(request.nonce)
            _window(self.limits, request.from_ns, request.to_ns)
            Q = ev.request_digest(self.hash_name, ev.KIND_GAP_RECORDS, request.from_ns,
                                  request.to_ns, (), None, None, request.nonce)
            self._acquire(context)
            self._store_call("indexing", self.evidence.refresh)
            records = self._store_call("gap records", self.evidence.gap_records,
                                       request.from_ns, request.to_ns)
        except RequestError as exc:
            self._refuse(context, exc)
        yield from self._chunked_answer(ev.KIND_GAP_RECORDS, Q, records, GAP_RECORDS_PER_CHUNK)


# -- health -------------------------------------------------------------------------------------

class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 (Check, Watch), as grpc_health's servicer, without its deadlock: there, a
    leaving watcher's callback runs on gRPC's polling thread and waits for the servicer's lock,
    which ``set()`` (``enter_graceful_shutdown()`` at ``stop()``) holds while it waits for that
    very thread to send the new status to every watcher; ``stop()`` then never returns. Here the
    status lock is held only to read or change the table (never while sending), and statuses
    are sent under a lock of their own that no gRPC callback takes. Watch answers from callbacks
    (``experimental_non_blocking``): an open watch holds no worker thread."""

    def __init__(self):
        self._lock = threading.Lock()        # the table; never held while sending
        self._send = threading.Lock()        # orders what watchers are sent
        self._status = {"": health_pb2.HealthCheckResponse.SERVING}
        self._watchers = {}                  # service -> {send callback}
        self._shutting_down = False

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback=None):
        watcher = None
        if send_response_callback is None:   # a server that calls it blocking: a generator
            watcher = _BlockingWatcher()
            send_response_callback = watcher.send
        service = request.service
        with self._send:
            with self._lock:
                status = self._status.get(service,
                                          health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                self._watchers.setdefault(service, set()).add(send_response_callback)
            send_response_callback(health_pb2.HealthCheckResponse(status=status))
        if not context.add_callback(lambda: self._forget(service, send_response_callback)):
            self._forget(service, send_response_callback)
        return watcher

    Watch.experimental_non_blocking = True
    Watch.experimental_thread_pool = None

    def _forget(self, service, send_response_callback):
        with self._lock:                     # brief: this runs on gRPC's polling thread
            self._watchers.get(service, set()).discard(send_response_callback)
        if isinstance(getattr(send_response_callback, "__self__", None), _BlockingWatcher):
            send_response_callback(None)

    def set(self, service, status):
        """The status of ``service``, sent to its watchers (ignored after
        ``enter_graceful_shutdown``)."""
        with self._send:
            with self._lock:
                if self._shutting_down:
                    return
                self._status[service] = status
                watchers = list(self._watchers.get(service, ()))
            for send in watchers:
                send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self):
        """Every service NOT_SERVING, for good."""
        with self._lock:
            services = list(self._status)
        for service in services:
            self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        with self._lock:
            self._shutting_down = True


class _BlockingWatcher:
    """Watch's answers as a generator (the latest status; None ends it)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._latest = []
        self._open = True

    def send(self, response):
        with self._cond:
            if response is None:
                self._open = False
            else:
                self._latest[:] = [response]
            self._cond.notify()

    def __iter__(self):
        return self

    def __next__(self):
        with self._cond:
            while not self._latest and self._open:
                self._cond.wait()
            if self._latest:
                return self._latest.pop()
            raise StopIteration


# -- the server ---------------------------------------------------------------------------------

def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f'interrogation.{what}: "{os.fspath(path)}": cannot read: '
                         f"{exc.strerror or exc}") from None


def server_credentials(ca, cert, private_key):
    """Mutual TLS: the device's certificate and key, client certificates required and checked
    against the domain's CA (PEM file paths)."""
    return grpc.ssl_server_credentials([(_read(private_key, "key"), _read(cert, "cert"))],
                                       root_certificates=_read(ca, "ca"),
                                       require_client_auth=True)


class InterrogationServer:
    """The gRPC server of one device: ``start()``, ``port``, ``stop(grace)``.

    ``store``: the daemon's ``beatd.store.Store``; ``key``: the device's Ed25519 ``DeviceKey``
    (the one registered on the ledger: it signs every chunk); ``ca``/``cert``/``private_key``: PEM
    paths (``beat-lab certs``); ``listen``: ``"host:port"`` (port 0: any free one, see ``port``);
    ``neighbours``: a callable giving the current neighbours (``{mac: node_id}`` as
    ``NeighbourMap.current``, or ``[(node_id, mac, interface)]``); ``threshold_ns``: the
    governance's threshold time. There is no plaintext port.
    """

    def __init__(self, store, key, *, ca, cert, private_key, listen="0.0.0.0:9478",
                 limits=None, neighbours=None, threshold_ns=0, clock=time.time_ns):
        self.limits = limits or Limits()
        self.listen = listen
        creds = server_credentials(ca, cert, private_key)
        self.evidence = EvidenceStore(store)
        self.evidence.refresh()
        self.servicer = InterrogationServicer(self.evidence, key, store.node_id, store.hash_name,
                                              self.limits, neighbours, threshold_ns, clock)
        self.guard = RpcGuard(self.limits, OPEN_METHODS, EVIDENCE_METHODS)
        workers = self.limits.workers
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="beatd-grpc"),
            interceptors=(self.guard,),
            maximum_concurrent_rpcs=workers + QUEUED_RPCS,
            options=[("grpc.max_send_message_length", MAX_MESSAGE),
                     ("grpc.max_receive_message_length", 1 << 20),
                     ("grpc.keepalive_time_ms", 60_000),
                     ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.http2.max_pings_without_data", 0),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_InterrogationServicer_to_server(self.servicer, self._server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        try:
            self.port = self._server.add_secure_port(listen, creds)
        except RuntimeError as exc:
            raise ValueError(f'interrogation.listen: "{listen}": cannot listen there ({exc})') \
                from None
        if not self.port:
            raise ValueError(f'interrogation.listen: "{listen}": cannot listen there (in use, or '
                             "not an address of this host)")
        self._watchdog = None
        self._stopped = threading.Event()

    def start(self):
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._watchdog = threading.Thread(target=self._watch, name="beatd-grpc-watchdog",
                                          daemon=True)
        self._watchdog.start()
        log.info("interrogation: serving on port %d (mutual TLS)", self.port)
        return self

    def _watch(self):
        period = min(1.0, self.limits.max_call_s / 4, self.limits.max_stream_s / 4)
        while not self._stopped.wait(period):
            try:
                self.servicer.cancel_overdue()
                self.guard.cancel_overdue()
            except Exception:  # noqa: BLE001 (the watchdog must outlive one bad round)
                log.exception("interrogation watchdog")

    def stop(self, grace=1.0):
        """Stop serving: NOT_SERVING, then running calls get ``grace`` seconds. Returns after
        the server has stopped."""
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        if self._watchdog is not None:
            self._watchdog.join(timeout=2.0)

    def stats(self):
        """For metrics and ``beatd status``: evidence streams running, answers given, requests
        refused (by status code: the servicer's and the guard's; the guard's also by reason:
        ``role``, ``max_peer_rpcs``, ``max_device_rpcs``), calls running (governance, others),
        calls cancelled by the watchdog (by limit), segments that left the ring while being
        answered, the signer."""
        sv = self.servicer
        with sv._lock:
            refused = dict(sv.refused)
            answers = sv.answers
            cancelled_answers = sv.cancelled
        g = self.guard.stats()
        for code, n in g["refused"].items():
            refused[code] = refused.get(code, 0) + n
        return {"port": self.port, "active_streams": sv.active_streams(), "answers": answers,
                "refused": refused, "refused_reasons": g["refused_reasons"],
                "calls": g["calls"],
                "cancelled": {"max_stream_s": cancelled_answers, "max_call_s": g["cancelled"]},
                "wrapped_during_answer": self.evidence.wrapped_during_answer,
                "signer": sv.signer.impl}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(0)
