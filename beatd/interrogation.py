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

Reading the store (``EvidenceStore``): every read is a short read transaction -- one per chunk of
about 1 MiB, one per few thousand keys when scanning -- so a slow or stalled client never pins old
pages for long and never blocks the writer (LMDB readers do not block the writer; the transaction
is closed before a chunk is handed to gRPC). The store's format is unchanged; two in-memory indexes
are kept, grown incrementally at each request:

- ``OutboxIndex``: the outbox leaf of every segment (``seg_seq`` -> ``leaf_seq``: the k-th segment
  leaf is seg_seq k) and of every receipt (by ``R``), from one scan of the outbox that continues
  where it stopped, from the store's pruned base (8 bytes per segment, trimmed below the ring; 16
  bytes per receipt, trimmed below the pruned base);
- ``AnchorIndex``: where each anchored batch starts in the outbox and its tree size, so that a
  leaf's inclusion path is read from its batch's stored levels (``ledger_client.outbox``) in the
  chunk's own transaction.

Only batches marked anchored (on the ledger) give an anchor ref; a leaf in a batch still pending, or
in none, travels as not anchored (``batch_seq = NONE``).
"""
import bisect
import logging
import os
import struct
import sys
import threading
import time
from array import array
from concurrent import futures
from functools import lru_cache

import grpc
import lmdb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import fastpath
from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from ledger_client.merkle import levels_proof
from ledger_client.outbox import ANCHORED, LEAF_RECEIPT, LEAF_SEGMENT, BatchRecord, Outbox

from . import __version__
from .certs import ROLE_GOVERNANCE, peer_role
from .rpc_guard import RpcGuard
from .store import SEG_HEAD, StoreError

__all__ = ["InterrogationServer", "InterrogationServicer", "EvidenceStore", "Limits",
           "SERVICE_NAME", "DEFAULT_MAX_WINDOW_S", "DEFAULT_MAX_RECORDS", "DEFAULT_MAX_STREAMS",
           "DEFAULT_MAX_FLOW_TAGS", "DEFAULT_MAX_STREAM_S", "DEFAULT_MAX_INDEX_ENTRIES",
           "DEFAULT_MAX_SEG_SEQS", "DEFAULT_MAX_PEER_RPCS", "DEFAULT_MAX_DEVICE_RPCS",
           "DEFAULT_MAX_CALL_S", "OPEN_METHODS"]

log = logging.getLogger("beatd.interrogation")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Interrogation"].full_name   # beat.v1.Interrogation
OPEN_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")   # any peer
EVIDENCE_METHODS = (f"/{SERVICE_NAME}/GetProofSegments", f"/{SERVICE_NAME}/GetReceipts")
FORMAT_VERSION = 1
DEFAULT_MAX_WINDOW_S = 3600.0        # = governance.threshold_s's default: what the ring must cover
DEFAULT_MAX_RECORDS = 4_000_000      # ~192 MB of records per answer, ~4 s at 1M records/s
DEFAULT_MAX_STREAMS = 4              # concurrent GetProofSegments/GetReceipts answers
DEFAULT_MAX_FLOW_TAGS = 64
DEFAULT_MAX_STREAM_S = 600.0         # an answer still running after this is cancelled
DEFAULT_MAX_INDEX_ENTRIES = 100_000  # ~1 h of 10 kpps is 36,000 segments of 1024; ~600 B each
DEFAULT_MAX_SEG_SEQS = 1024          # segments one GetSegments request may name
DEFAULT_MAX_PEER_RPCS = 4            # calls of one certificate without the governance role
DEFAULT_MAX_DEVICE_RPCS = 8          # calls of all the certificates without it, together
DEFAULT_MAX_CALL_S = 60.0            # any other call (Health.Watch, reflection) cancelled after
GOVERNANCE_SPARE_WORKERS = 4         # workers for the governance beyond max_streams
QUEUED_RPCS = 16                     # calls gRPC queues beyond its workers before refusing
RECEIPTS_PER_CHUNK = 4096            # ~0.5-1 MiB of receipts with their paths
SCAN_KEYS = 4096                     # keys per read transaction when scanning
SCAN_LEAVES = 65536                  # outbox leaves per read transaction when indexing
MAX_MESSAGE = 64 << 20               # a lone segment of segment_records = 10^6 is 48 MB

_U64 = struct.Struct(">Q")
_COMMIT = struct.Struct(">32sQQQ")   # S count first_t_ns last_t_ns
_COUNTER = struct.Struct(">QQQQ")
_RECEIPT_VAL = struct.Struct(">QQ32s")
_LEVELS_KEY = b"L"
_FT_OFFSET = 40
_NATIVE_U64 = "Q"


def _p64(n):
    return _U64.pack(n)


def _u64(b):
    return _U64.unpack(b)[0]


class Limits:
    """The device's limits on one request (constructor defaults: the module's DEFAULT_*)."""

    def __init__(self, max_window_s=DEFAULT_MAX_WINDOW_S, max_records=DEFAULT_MAX_RECORDS,
                 max_streams=DEFAULT_MAX_STREAMS, max_flow_tags=DEFAULT_MAX_FLOW_TAGS,
                 max_stream_s=DEFAULT_MAX_STREAM_S, max_index_entries=DEFAULT_MAX_INDEX_ENTRIES,
                 max_seg_seqs=DEFAULT_MAX_SEG_SEQS, max_peer_rpcs=DEFAULT_MAX_PEER_RPCS,
                 max_device_rpcs=DEFAULT_MAX_DEVICE_RPCS, max_call_s=DEFAULT_MAX_CALL_S):
        for name, value in (("max_window_s", max_window_s), ("max_records", max_records),
                            ("max_streams", max_streams), ("max_flow_tags", max_flow_tags),
                            ("max_stream_s", max_stream_s),
                            ("max_index_entries", max_index_entries),
                            ("max_seg_seqs", max_seg_seqs), ("max_peer_rpcs", max_peer_rpcs),
                            ("max_device_rpcs", max_device_rpcs), ("max_call_s", max_call_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"interrogation.{name}: {value!r} must be a number above 0")
        for name, value in (("max_records", max_records), ("max_streams", max_streams),
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


# -- indexes over the store ---------------------------------------------------------------------

class OutboxIndex:
    """Outbox leaves of segments (by seg_seq) and receipts (by R), from an incremental scan.

    The store prunes the outbox from its oldest end (beatd.store.Store.prune): the leaves held are
    ``outbox_base..`` and the first segment leaf among them is seg_seq ``pruned_segments`` (both in
    the store's meta). The scan starts there, and jumps there when pruning overtook it; the receipt
    entries of pruned leaves are dropped, so the index stays as bounded as the store."""

    def __init__(self, env, db_outbox, path, db_meta=None):
        self.env = env
        self.db = db_outbox
        self.db_meta = db_meta
        self.path = path
        self._lock = threading.Lock()
        self.next_leaf = 0               # leaves base..next_leaf-1 are indexed
        self.next_seg = 0                # seg_seq of the next segment leaf
        self.seg_base = 0                # seg_seq of _seg_leaf[0]
        self._seg_leaf = array("Q")
        self._rc_prefix = bytearray()    # the first 8 bytes of each receipt leaf's R, in order
        self._rc_leaf = array("Q")

    def _pruned_base(self, txn):
        """``(outbox_base, pruned_segments)`` from the store's meta (0, 0: never pruned)."""
        if self.db_meta is None:
            return 0, 0
        base = txn.get(b"outbox_base", db=self.db_meta)
        if base is None:
            return 0, 0
        return _u64(base), _u64(txn.get(b"pruned_segments", db=self.db_meta))

    def _drop_receipts_below(self, base):
        n = bisect.bisect_left(self._rc_leaf, base)
        if n:
            del self._rc_leaf[:n]
            del self._rc_prefix[:8 * n]

    def refresh(self, keep_from_seg=None):
        """Index the leaves written since the last call; drop segment entries below
        ``keep_from_seg`` (the ring's oldest seg_seq) when many are there, and the entries of
        leaves the store pruned."""
        with self._lock:
            base = 0
            while True:
                with self.env.begin() as txn:
                    base, base_seg = self._pruned_base(txn)
                    if base > self.next_leaf:        # pruned past what was indexed: start there
                        self._drop_receipts_below(base)
                        drop = min(base_seg, self.next_seg) - self.seg_base
                        if drop > 0:
                            del self._seg_leaf[:drop]
                            self.seg_base += drop
                        if base_seg > self.next_seg:
                            self.next_seg = self.seg_base = base_seg
                        self.next_leaf = base
                    cur = txn.cursor(db=self.db)
                    if not cur.set_range(_p64(self.next_leaf)):
                        break
                    n = 0
                    for k, v in cur:
                        leaf = _u64(k)
                        if leaf != self.next_leaf:
                            raise StoreError(f"{self.path}: outbox leaf {self.next_leaf} is "
                                             f"missing (found {leaf}): the outbox has a gap")
                        kind = v[0]
                        if kind == LEAF_SEGMENT:
                            self._seg_leaf.append(leaf)
                            self.next_seg += 1
                        elif kind == LEAF_RECEIPT:
                            self._rc_prefix += v[1:9]
                            self._rc_leaf.append(leaf)
                        self.next_leaf += 1
                        n += 1
                        if n >= SCAN_LEAVES:
                            break
                if n < SCAN_LEAVES:
                    break
            # segments below the ring are trimmed only SCAN_LEAVES behind it: an answer that
            # planned its index on an older ring still finds its segments' leaves
            if keep_from_seg is not None and keep_from_seg - self.seg_base > 2 * SCAN_LEAVES:
                drop = min(keep_from_seg - SCAN_LEAVES, self.next_seg) - self.seg_base
                del self._seg_leaf[:drop]
                self.seg_base += drop
            if self._rc_leaf and base - self._rc_leaf[0] > SCAN_LEAVES:
                self._drop_receipts_below(base)

    def segment_leaf(self, seg_seq):
        """The leaf_seq of segment ``seg_seq``, or None (not indexed, or trimmed)."""
        with self._lock:
            i = seg_seq - self.seg_base
            if 0 <= i < len(self._seg_leaf):
                return self._seg_leaf[i]
            return None

    def receipt_leaf(self, txn, R, hint=0):
        """``(leaf_seq, position)`` of the receipt leaf ``1 || R`` (checked against the stored
        leaf in ``txn``), or ``(None, hint)``. ``hint``: a position to search from first (the
        previous answer's: a flow's receipts are found in outbox order)."""
        prefix = bytes(R[:8])
        want = bytes((LEAF_RECEIPT,)) + bytes(R)
        with self._lock:
            blob = self._rc_prefix
            for start in ((hint, 0) if hint else (0,)):
                i = blob.find(prefix, start * 8)
                while i != -1:
                    if i % 8 == 0:
                        pos = i // 8
                        leaf = self._rc_leaf[pos]
                        v = txn.get(_p64(leaf), db=self.db)
                        if v is not None and bytes(v) == want:
                            return leaf, pos
                    i = blob.find(prefix, i + 1)
        return None, hint


class AnchorIndex:
    """The anchored batches: ``first_leaf_seq``, ``tree_size``, ``seg_leaves_end`` each (anchored
    batches are a prefix of the batch_seqs, and once anchored a batch never changes)."""

    def __init__(self, env, db_anchors):
        self.env = env
        self.db = db_anchors
        self._lock = threading.Lock()
        self.starts = array("Q")
        self.sizes = array("Q")
        self.seg_ends = array("Q")

    def refresh(self):
        with self._lock, self.env.begin(db=self.db) as txn:
            cur = txn.cursor()
            if not cur.set_key(_p64(len(self.starts))):
                return
            for k, v in cur:
                rec = BatchRecord.unpack(_u64(k), v)
                if rec.status != ANCHORED:
                    break
                self.starts.append(rec.first_leaf_seq)
                self.sizes.append(rec.tree_size)
                self.seg_ends.append(rec.seg_leaves_end)

    def locate(self, leaf_seq):
        """``(batch_seq, index, tree_size)`` of an anchored leaf, or None."""
        with self._lock:
            b = bisect.bisect_right(self.starts, leaf_seq) - 1
            if b >= 0 and leaf_seq < self.starts[b] + self.sizes[b]:
                return b, leaf_seq - self.starts[b], self.sizes[b]
            return None

    def anchored_segments(self):
        """How many segments (0..n-1) are in anchored batches."""
        with self._lock:
            return self.seg_ends[-1] if self.seg_ends else 0


# -- reading evidence ---------------------------------------------------------------------------

class AnswerPlan:
    """What a GetProofSegments answer holds (``EvidenceStore.plan_answer``)."""
    __slots__ = ("selected", "first_seq", "count", "ring", "gaps")

    def __init__(self, selected, first_seq, count, ring, gaps):
        self.selected = selected
        self.first_seq = first_seq
        self.count = count
        self.ring = ring
        self.gaps = gaps


class EvidenceStore:
    """Evidence from a device store (``beatd.store.Store``, the daemon's own object: one LMDB
    environment per process), read in short transactions."""

    def __init__(self, store):
        self.store = store
        self.path = store.path
        self.env = store.env
        self.db = store.db
        self.outbox = Outbox(store)           # opens (creates if missing) anchors, leaf_proofs
        self.index = OutboxIndex(self.env, self.db["outbox"], self.path, self.db["meta"])
        self.anchors = AnchorIndex(self.env, self.outbox.db_anchors)
        self.wrapped_during_answer = 0        # segments dropped by the ring while being answered

    def refresh(self):
        """Bring the indexes up to the store's latest commit."""
        with self.env.begin(db=self.db["meta"]) as txn:
            oldest = txn.get(b"ring_oldest_seq")
        self.index.refresh(_u64(oldest) if oldest is not None else None)
        self.anchors.refresh()

    # -- anchor refs --

    def _anchor_ref(self, txn, leaf_seq):
        if leaf_seq is None:
            return ev.UNANCHORED
        loc = self.anchors.locate(leaf_seq)
        if loc is None:
            return ev.UNANCHORED
        batch_seq, index, size = loc
        levels = txn.get(_LEVELS_KEY + _p64(batch_seq), db=self.outbox.db_proofs)
        if levels is not None:
            path = levels_proof(levels, size, index)
        else:                                  # a store of the former per-leaf proof format
            got = self.outbox.proof(leaf_seq)
            if got is None or got[0] != batch_seq:
                log.warning("%s: leaf %d of anchored batch %d has no stored proof; sent as not "
                            "anchored", self.path, leaf_seq, batch_seq)
                return ev.UNANCHORED
            path = [bytes(h) for h in got[2]]
        return ev.AnchorRef(batch_seq, index, size, tuple(path))

    # -- node info --

    def node_info(self, now_ns, threshold_ns):
        """``dict`` of NodeInfo's store fields."""
        with self.env.begin() as txn:
            meta = self.db["meta"]
            ring_segments = _u64(txn.get(b"ring_segments", db=meta))
            oldest_t = _u64(txn.get(b"ring_oldest_t_ns", db=meta)) if ring_segments else 0
            next_seg = _u64(txn.get(b"next_seg_seq", db=meta))
            newest_t = 0
            if ring_segments:
                c = txn.get(_p64(next_seg - 1), db=self.db["commitments"])
                if c is not None:
                    newest_t = _COMMIT.unpack(c)[3]
            anchored = self.anchors.anchored_segments()
            open_records = txn.get(b"open_records", db=meta)
            open_min = fastpath.t_range(open_records)[0] if open_records else None
        until = self._anchored_until(anchored, open_min)
        short = self.store.ring_status(now_ns, threshold_ns)["short"]
        return {"oldest_proof_t_ns": oldest_t, "newest_proof_t_ns": newest_t,
                "anchored_until_t_ns": until, "ring_short": bool(short)}

    def _anchored_until(self, anchored, open_min):
        """The largest T such that every record with ``t_ns <= T`` is in an anchored segment:
        the earliest record not anchored (in a later segment or the open one) minus 1, or the
        newest anchored record when every record is anchored; 0 when nothing is anchored."""
        if not anchored:
            return 0
        earliest = open_min
        newest = 0
        seq = 0
        while True:
            with self.env.begin(db=self.db["commitments"]) as txn:
                cur = txn.cursor()
                if seq == 0:
                    if cur.set_key(_p64(anchored - 1)):
                        newest = _COMMIT.unpack(cur.value())[3]
                    seq = anchored
                if not cur.set_range(_p64(seq)):
                    break
                n = 0
                for k, v in cur:
                    _, count, first, _ = _COMMIT.unpack(v)
                    if count and (earliest is None or first < earliest):
                        earliest = first
                    n += 1
                    if n >= SCAN_KEYS:
                        seq = _u64(k) + 1
                        break
                if n < SCAN_KEYS:
                    break
        if earliest is None:
            return newest
        return max(0, earliest - 1)

    # -- proof segments --

    def _holding(self, selected, flow_filter):
        """Those of ``selected`` whose records hold one of the filter's flow tags."""
        kept = []
        i = 0
        budget = 8 << 20                       # bytes of records read per transaction
        while i < len(selected):
            with self.env.begin(db=self.db["proofs"], buffers=True) as txn:
                read = 0
                while i < len(selected) and read < budget:
                    seq, count = selected[i]
                    v = txn.get(_p64(seq))
                    if v is not None and flow_filter(v[SEG_HEAD:]):
                        kept.append((seq, count))
                    read += count * ev.RECORD_SIZE
                    i += 1
        return kept

    def segment_chunks(self, selected, make_body, final=True, sent=None):
        """Yield chunk bodies of the selected segments: whole segments up to ~1 MiB of records
        per chunk (a larger segment alone). ``make_body(chunk_seq, segments, last)`` builds a
        body (chunk_seq counts the chunks yielded, from 0); it is called inside the chunk's read
        transaction (the records are views into the map, copied once into the body), and the
        transaction is closed before the body is yielded. A selected segment no longer in the
        ring is left out (and counted); a chunk left empty by that is skipped, unless last.
        ``final`` False: the answer goes on after these chunks (the coverage): no chunk is last
        and none is empty. ``sent``: a set the seg_seqs sent are added to."""
        groups, group, size = [], [], 0
        for seq, count in selected:
            nbytes = count * ev.RECORD_SIZE
            if group and size + nbytes > ev.CHUNK_RECORD_BYTES:
                groups.append(group)
                group, size = [], 0
            group.append(seq)
            size += nbytes
        if group or final:
            groups.append(group)               # the last one (possibly empty: an empty answer)
        chunk_seq = 0
        for g, seqs in enumerate(groups):
            last = final and g == len(groups) - 1
            with self.env.begin(buffers=True) as txn:
                segs = []
                for seq in seqs:
                    v = txn.get(_p64(seq), db=self.db["proofs"])
                    if v is None:              # the ring wrapped past it since the selection
                        self.wrapped_during_answer += 1
                        log.warning("%s: segment %d left the ring while being answered",
                                    self.path, seq)
                        continue
                    ref = self._anchor_ref(txn, self.index.segment_leaf(seq))
                    segs.append(ev.Segment(seq, bytes(v[8:SEG_HEAD]), ref,
                                           v[SEG_HEAD:]))
                if not segs and not last:
                    continue
                body = make_body(chunk_seq, segs, last)
            if sent is not None:
                sent.update(sg.seg_seq for sg in segs)
            yield body
            chunk_seq += 1

    # -- coverage: what the device holds for a request (docs/interrogation.md, kind 4) --

    def ring_fields(self, threshold_ns):
        """The coverage's ring fields now (all but ``index_first_seq``): a dict."""
        with self.env.begin() as txn:
            meta = self.db["meta"]
            ring_oldest = _u64(txn.get(b"ring_oldest_seq", db=meta))
            next_seg = _u64(txn.get(b"next_seg_seq", db=meta))
            ring_segments = _u64(txn.get(b"ring_segments", db=meta))
            wraps = _u64(txn.get(b"ring_wraps", db=meta))
            oldest_t = _u64(txn.get(b"ring_oldest_t_ns", db=meta)) if ring_segments else 0
            newest_t = 0
            if ring_segments:
                c = txn.get(_p64(next_seg - 1), db=self.db["commitments"])
                if c is not None:
                    newest_t = _COMMIT.unpack(c)[3]
            open_records = txn.get(b"open_records", db=meta)
            open_min = fastpath.t_range(open_records)[0] if open_records else None
        anchored = min(self.anchors.anchored_segments(), next_seg)
        return {"ring_oldest_seq": ring_oldest, "next_seg_seq": next_seg,
                "anchored_segments": anchored, "ring_wraps": wraps, "oldest_t_ns": oldest_t,
                "newest_t_ns": newest_t,
                "anchored_until_t_ns": self._anchored_until(anchored, open_min),
                "open_first_t_ns": open_min or 0, "threshold_ns": threshold_ns}

    def plan_answer(self, from_ns, to_ns, flow_filter, threshold_ns):
        """What a GetProofSegments answer holds, decided before its first chunk (a snapshot):
        ``AnswerPlan`` with the segments to send in full (``selected``: ``[(seg_seq, count)]``,
        overlapping the window and, with a filter, holding one of its flow tags), the index
        (``first_seq`` and ``count``: every segment held from the first to the last that
        overlaps the window; empty, ``first_seq`` is the first held segment that starts after
        the window, or ``next_seg_seq``), the ring fields and the capture gaps of the window.
        The index's entries are read by ``index_entries`` once the limits passed."""
        ring = self.ring_fields(threshold_ns)
        seq, end = ring["ring_oldest_seq"], ring["next_seg_seq"]
        overlapping = []
        after = None                           # the first held segment starting after to_ns
        while seq < end:
            with self.env.begin(db=self.db["commitments"]) as txn:
                cur = txn.cursor()
                if not cur.set_range(_p64(seq)):
                    break
                n = 0
                for k, v in cur:
                    seq = _u64(k)
                    if seq >= end:
                        break
                    _, count, first, last = _COMMIT.unpack(v)
                    if count and first <= to_ns and last >= from_ns:
                        overlapping.append((seq, count))
                    elif count and first > to_ns and after is None:
                        after = seq
                    n += 1
                    if n >= SCAN_KEYS:
                        break
                seq += 1
                if n < SCAN_KEYS:
                    break
        if overlapping:
            first_seq = overlapping[0][0]
            count = overlapping[-1][0] - first_seq + 1
        else:
            first_seq, count = (after if after is not None else end), 0
        selected = overlapping
        if flow_filter is not None and overlapping:
            selected = self._holding(overlapping, flow_filter)
        gaps = [ev.CaptureGap(*g) for g in self.store.capture_gaps(from_ns, to_ns)]
        return AnswerPlan(selected, first_seq, count, ring, gaps)

    def index_entries(self, first_seq, count):
        """``[(seg_seq, count, first_t_ns, last_t_ns, S, leaf_seq or None)]`` of segments
        first_seq .. first_seq + count - 1, from the commitments (or, for one whose commitment
        is gone, the ring), in short read transactions. The outbox leaf is taken now: the
        index's anchor refs are read from it when the coverage chunk is made."""
        out = []
        seq, end = first_seq, first_seq + count
        while seq < end:
            with self.env.begin() as txn:
                n = 0
                while seq < end and n < SCAN_KEYS:
                    v = txn.get(_p64(seq), db=self.db["commitments"])
                    if v is not None:
                        S, c, first, last = _COMMIT.unpack(v)
                    else:
                        p = txn.get(_p64(seq), db=self.db["proofs"])
                        if p is None:
                            log.warning("%s: segment %d has neither commitment nor proofs; left "
                                        "out of the index", self.path, seq)
                            seq += 1
                            n += 1
                            continue
                        c, S = _u64(p[:8]), bytes(p[8:SEG_HEAD])
                        first, last = fastpath.t_range(bytes(p[SEG_HEAD:]))
                    out.append((seq, c, first, last, bytes(S), self.index.segment_leaf(seq)))
                    seq += 1
                    n += 1
        return out

    def coverage_chunks(self, plan, entries, sent, make_body):
        """Yield the coverage chunk bodies of an answer: the ring fields, the index entries
        (``sent``: the seg_seqs sent in full) about 1 MiB per chunk, the capture gaps in the last
        one. ``make_body(k, coverage, last)`` builds the k-th coverage chunk's body. Anchor refs
        are read in a short transaction per ``SCAN_KEYS`` entries, closed before a yield."""
        fixed = dict(plan.ring, index_first_seq=plan.first_seq)
        part, size, k = [], 0, 0
        i = 0
        while True:
            batch = entries[i:i + SCAN_KEYS]
            i += len(batch)
            if batch:
                with self.env.begin() as txn:
                    refs = [self._anchor_ref(txn, e[5]) for e in batch]
            for e, ref in zip(batch, refs if batch else ()):
                seq, c, first, last, S, _ = e
                if seq < fixed["anchored_segments"] and not ref.anchored:
                    # its proof left the index or the store while answering (the ring wrapped,
                    # the store pruned): an honest answer must not contradict its own coverage
                    raise StoreError(f"{self.path}: the anchor proof of segment {seq} (anchored) "
                                     "is gone since this answer began; ask again")
                part.append(ev.IndexEntry(seq, c, first, last, S, seq in sent, ref))
                size += ev.INDEX_ENTRY_SIZE + 25 + 32 * len(ref.path)
                if size >= ev.CHUNK_RECORD_BYTES:
                    yield make_body(k, ev.Coverage(**fixed, index=tuple(part)), False)
                    part, size, k = [], 0, k + 1
            if i >= len(entries):
                break
        yield make_body(k, ev.Coverage(**fixed, index=tuple(part), gaps=tuple(plan.gaps)), True)

    def held_segments(self, seg_seqs):
        """``[(seg_seq, count)]`` of the named segments the ring holds, in seg_seq order."""
        out = []
        seqs = list(seg_seqs)
        for i in range(0, len(seqs), SCAN_KEYS):
            with self.env.begin(db=self.db["proofs"], buffers=True) as txn:
                for seq in seqs[i:i + SCAN_KEYS]:
                    v = txn.get(_p64(seq))
                    if v is not None:
                        out.append((seq, _u64(bytes(v[:8]))))
        return out

    # -- counters and receipts --

    def counters(self):
        with self.env.begin(db=self.db["counters"]) as txn:
            return [ev.Counter(*struct.unpack(">QQ", k), *_COUNTER.unpack(v))
                    for k, v in txn.cursor()]

    def receipts(self, from_ns, to_ns, src, dst):
        """The receipts of flow (src, dst) with epoch_ns in [from_ns, to_ns], sorted by
        (epoch_ns, role), with their anchor refs."""
        flow = bytes(src) + bytes(dst)
        found = []                              # (key, value)
        start = _p64(from_ns)
        skip_equal = False
        while True:
            with self.env.begin(db=self.db["receipts"]) as txn:
                cur = txn.cursor()
                if not cur.set_range(start):
                    break
                n = 0
                done = True
                for k, v in cur:
                    if skip_equal and k == start:
                        continue
                    if _u64(k[:8]) > to_ns:
                        break
                    if k[9:41] == flow:
                        found.append((k, v))
                    n += 1
                    if n >= SCAN_KEYS:
                        start, skip_equal, done = k, True, False
                        break
            if done:
                break
        out = []
        hint = 0
        with self.env.begin() as txn:
            for k, v in found:
                epoch, role = struct.unpack_from(">QB", k)
                packets, nbytes, R = _RECEIPT_VAL.unpack(v)
                leaf, hint = self.index.receipt_leaf(txn, R, hint)
                out.append(ev.Receipt(epoch, role, bytes(src), bytes(dst), packets, nbytes, R,
                                      self._anchor_ref(txn, leaf)))
        return out


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
                ring = self._store_call("coverage", self.evidence.ring_fields, self.threshold_ns)
            except RequestError as exc:
                self._refuse(context, exc)
            plan = AnswerPlan([], 0, 0, ring, [])
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
        groups = [receipts[i:i + RECEIPTS_PER_CHUNK]
                  for i in range(0, len(receipts), RECEIPTS_PER_CHUNK)] or [[]]
        for seq, group in enumerate(groups):
            body = ev.encode_chunk(ev.KIND_RECEIPTS, self.node_id, Q, seq,
                                   seq == len(groups) - 1, self.clock(), group)
            yield self._sign(body)
        self._answered()


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
