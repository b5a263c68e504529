"""The canonical evidence codec of the Interrogation Protocol (docs/interrogation.md).

What a device signs and the governance checks, byte for byte: the request digest ``Q``, the chunk
bodies of the four chunk kinds (proof segments, counter report, receipts, coverage) and the Ed25519
signature over a body. Records travel packed: a ``Segment`` holds its records as one bytes object
of ``n * 48`` bytes, never one Python object per record.

Decoders never crash on bad input: anything that is not a well-formed body raises
``MalformedEvidence`` naming the part and the offset. ``open_chunk`` checks a signed chunk (the
signature, then the header's node_id, kind, Q and chunk_seq) before decoding it, and
``AnswerReader`` checks a whole answer (chunk_seq 0, 1, 2, ... and the last chunk arriving, items in
order across chunks; for a segments answer, the coverage chunks last). None of this checks ``S``,
``R``, the anchors or the coverage against the segments: that is governance/verify.py's job, on top
of these types.

Chunk kinds (the byte after the magic): 1 proof segments, 2 counter report, 3 receipts, 4 coverage.
Request kinds (the byte ``Q`` binds): 1 GetProofSegments, 2 GetCounterReport, 3 GetReceipts, 5
GetSegments (segments named by ``seg_seq``; ``Q`` binds the sorted ``seg_seq``s, 8 bytes each, where
the flow tags go), 6 GetGapRecords, 7 GetReceipts naming several flows (``Q`` binds the sorted
flows, ``src || dst`` 32 bytes each, where the flow tags go; answered with kind-3 chunks, receipts
in ``(src, dst, epoch_ns, role)`` order). A segments answer (request kind 1 or 5) is kind-1
chunks, then one or more
kind-4 chunks, the last of which carries the last flag.
"""
import dataclasses
import struct

from beat_common.gap_record import (GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, GAP_REASONS,
                                    IFNAME_SIZE, gap_leaf, pack_gap_record)
from beat_common.spec import NONE, RECORD_SIZE
from fastpath.hashes import digest_function
from ledger_client.keys import verify as _ed25519_verify

__all__ = ["NONE", "RECORD_SIZE", "KIND_SEGMENTS", "KIND_COUNTERS", "KIND_RECEIPTS",
           "KIND_COVERAGE", "KIND_GET_SEGMENTS", "KIND_NAMES", "REQUEST_KIND_NAMES", "HEADER_SIZE",
           "CHUNK_RECORD_BYTES", "COVERAGE_FIXED_SIZE", "INDEX_ENTRY_SIZE", "GAP_SIZE",
           "GAP_KERNEL_DROPS", "GAP_CAPTURE_STOPPED", "GAP_REASONS", "AnchorRef", "UNANCHORED",
           "Segment", "Counter", "Receipt", "IndexEntry", "CaptureGap", "Coverage", "ChunkHeader",
           "KIND_GAP_RECORDS", "GapRecord",
           "EvidenceError", "MalformedEvidence", "BadSignature", "WrongAnswer", "IncompleteAnswer",
           "KIND_RECEIPTS_OF_FLOWS", "FLOW_SIZE", "flows_request_digest", "normalise_flows",
           "flow_name", "receipt_key",
           "request_digest", "segments_request_digest", "normalise_flow_tags",
           "normalise_seg_seqs", "encode_anchor_ref", "encode_chunk", "decode_header",
           "decode_chunk", "sign_body", "verify_signature", "open_chunk", "AnswerReader"]

U64_MAX = NONE
FT_SIZE = 8
ADDR_SIZE = 16
NONCE_SIZE = 16
HASH_SIZE = 32
SIGNATURE_SIZE = 64
KIND_SEGMENTS, KIND_COUNTERS, KIND_RECEIPTS = 1, 2, 3
KIND_COVERAGE = 4                   # a chunk kind only: what the device holds for the request
KIND_GET_SEGMENTS = 5               # a request kind only: GetSegments (segments named by seg_seq)
KIND_GAP_RECORDS = 6                # chunk and request kind: gap records (docs/gap-records.md)
KIND_RECEIPTS_OF_FLOWS = 7          # a request kind only: GetReceipts naming several flows
FLOW_SIZE = 32                      # a flow as kind 7's Q binds it: src(16) || dst(16)
KIND_NAMES = {KIND_SEGMENTS: "proof segments", KIND_COUNTERS: "counter report",
              KIND_RECEIPTS: "receipts", KIND_COVERAGE: "coverage",
              KIND_GAP_RECORDS: "gap records"}                               # chunk kinds
REQUEST_KIND_NAMES = {KIND_SEGMENTS: "proof segments", KIND_COUNTERS: "counter report",
                      KIND_RECEIPTS: "receipts", KIND_GET_SEGMENTS: "segments by seg_seq",
                      KIND_GAP_RECORDS: "gap records",
                      KIND_RECEIPTS_OF_FLOWS: "receipts of flows"}
# the gap reasons and the interface field: the gap records' (beat_common.gap_record)
ROLES = (1, 2)                      # receipts: 1 ingress, 2 egress (docs/formats.md)
MAGIC = b"BEAT-EV-v1"
REQUEST_TAG = b"BEAT-RQ-v1"
FLAG_LAST = 0x01
CHUNK_RECORD_BYTES = 1 << 20        # a chunk holds whole segments up to about this many bytes

_HEADER = struct.Struct(">10sBQ32sIBQI")    # magic kind node_id Q chunk_seq flags t_ns count
_REF = struct.Struct(">QQQB")               # batch_seq leaf_index tree_size k
_SEG = struct.Struct(">QI32s")              # seg_seq n S
_COUNTER = struct.Struct(">QQQQQQ")         # prev next packets bytes first_t last_t
_RECEIPT = struct.Struct(">QB16s16sQQ32s")  # epoch role src dst packets bytes R
_REQ = struct.Struct(">BQQI")               # kind from_ns to_ns n_ft
_COVERAGE = struct.Struct(">10Q")           # ring_oldest_seq next_seg_seq anchored_segments
#                                             ring_wraps oldest_t_ns newest_t_ns
#                                             anchored_until_t_ns open_first_t_ns threshold_ns
#                                             index_first_seq
_ENTRY = struct.Struct(">QIQQ32sB")         # seg_seq n first_t_ns last_t_ns S flags
_GAP = struct.Struct(">QQQB16s")            # from_ns to_ns frames_dropped reason interface
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
HEADER_SIZE = _HEADER.size                  # 68
COVERAGE_FIXED_SIZE = _COVERAGE.size        # 80
INDEX_ENTRY_SIZE = _ENTRY.size              # 61, then the anchor ref
GAP_SIZE = _GAP.size                        # 41
ENTRY_SENT = 0x01                           # index entry flags: bit 0 "sent in full"


# -- errors -------------------------------------------------------------------------------------

class EvidenceError(Exception):
    """Evidence that cannot be accepted; the message says what is wrong with which part."""


class MalformedEvidence(EvidenceError):
    """A body that is not a well-formed chunk of docs/interrogation.md."""


class BadSignature(EvidenceError):
    """A chunk whose signature does not verify with the node's registered public key."""


class WrongAnswer(EvidenceError):
    """A well-signed chunk that answers something else: another node, kind or request (Q), or a
    chunk out of sequence, or items out of order."""


class IncompleteAnswer(EvidenceError):
    """The answer ended before its last chunk (or went on after it)."""


# -- types --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class AnchorRef:
    """A leaf's place in an anchor: ``batch_seq`` (``NONE``: not anchored yet), the leaf's index in
    that anchor's tree, the tree size the device claims, and the RFC 9162 inclusion path (a tuple
    of 32-byte hashes). The governance takes the root and the tree size from the ledger."""
    batch_seq: int
    leaf_index: int
    tree_size: int
    path: tuple

    @property
    def anchored(self):
        return self.batch_seq != NONE


UNANCHORED = AnchorRef(NONE, 0, 0, ())


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A whole proof segment: ``records`` is ``n * 48`` bytes, packed, in capture order."""
    seg_seq: int
    S: bytes
    anchor: AnchorRef
    records: bytes  # n*48 bytes, packed

    @property
    def count(self):
        return len(self.records) // RECORD_SIZE

    @property
    def leaf(self):
        """The anchored leaf data ``0x02 || S``."""
        return b"\x02" + bytes(self.S)


@dataclasses.dataclass(frozen=True, slots=True)
class Counter:
    prev_id: int
    next_id: int
    packets: int
    bytes: int
    first_t_ns: int
    last_t_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    epoch_ns: int
    role: int
    src: bytes
    dst: bytes
    packets: int
    bytes: int
    R: bytes
    anchor: AnchorRef

    @property
    def leaf(self):
        """The anchored leaf data ``0x01 || R``."""
        return b"\x01" + bytes(self.R)


@dataclasses.dataclass(frozen=True, slots=True)
class IndexEntry:
    """One segment of a coverage's index: what the device says it holds, signed. ``sent``: the
    segment was sent in full in this answer (its kind-1 chunk came before the coverage)."""
    seg_seq: int
    count: int
    first_t_ns: int
    last_t_ns: int
    S: bytes
    sent: bool
    anchor: AnchorRef

    @property
    def leaf(self):
        """The anchored leaf data ``0x02 || S``."""
        return b"\x02" + bytes(self.S)

    def overlaps(self, from_ns, to_ns):
        """Whether the segment's records (as the entry says) reach into [from_ns, to_ns]."""
        return self.count > 0 and self.first_t_ns <= to_ns and self.last_t_ns >= from_ns


@dataclasses.dataclass(frozen=True, slots=True)
class CaptureGap:
    """A time the device says it may have missed packets: ``reason`` 1 kernel drops (on
    ``interface``, ``frames_dropped`` frames) or 2 capture stopped (the daemon was not running;
    ``interface`` empty = every one, ``frames_dropped`` 0 = unknown)."""
    from_ns: int
    to_ns: int
    frames_dropped: int
    reason: int
    interface: str

    @property
    def reason_name(self):
        return GAP_REASONS.get(self.reason, str(self.reason))

    def overlaps(self, from_ns, to_ns):
        return self.from_ns <= to_ns and self.to_ns >= from_ns


@dataclasses.dataclass(frozen=True, slots=True)
class GapRecord:
    """A gap record (docs/gap-records.md) as served: the device's immutable statement that it
    was blind in ``[from_ns, to_ns]``, with its leaf's place in an anchor (chunk kind 6)."""
    from_ns: int
    to_ns: int
    frames_dropped: int
    reason: int
    interface: str
    anchor: AnchorRef

    @property
    def reason_name(self):
        return GAP_REASONS.get(self.reason, str(self.reason))

    @property
    def record(self):
        """The 41-byte record."""
        return pack_gap_record(self.from_ns, self.to_ns, self.frames_dropped, self.reason,
                               self.interface)

    def leaf(self, hash_name, node_id):
        """The anchored leaf data ``0x03 || G``."""
        return gap_leaf(hash_name, node_id, self.record)

    def overlaps(self, from_ns, to_ns):
        return self.from_ns <= to_ns and self.to_ns >= from_ns


@dataclasses.dataclass(frozen=True, slots=True)
class Coverage:
    """What a device holds for a request, signed (chunk kind 4; docs/interrogation.md).

    The ring: ``ring_oldest_seq`` (the oldest segment still held), ``next_seg_seq`` (closed
    segments are below it), ``anchored_segments`` (segments 0..n-1 are in anchored batches),
    ``ring_wraps``; times: ``oldest_t_ns`` (the ring's oldest record, 0: empty),
    ``newest_t_ns`` (the newest closed segment's last record), ``anchored_until_t_ns``,
    ``open_first_t_ns`` (the open segment's first record: not in any answer; 0: none),
    ``threshold_ns``. The index: ``index`` (IndexEntry, contiguous from ``index_first_seq``: every
    segment held from the first to the last whose records overlap the window; empty, it says
    where the window falls: between ``index_first_seq - 1`` and ``index_first_seq``) and ``gaps``
    (CaptureGap overlapping the window). ``t_ns``: the device's clock when it made the (last)
    coverage chunk (its header's; not part of the coverage bytes)."""
    ring_oldest_seq: int
    next_seg_seq: int
    anchored_segments: int
    ring_wraps: int
    oldest_t_ns: int
    newest_t_ns: int
    anchored_until_t_ns: int
    open_first_t_ns: int
    threshold_ns: int
    index_first_seq: int
    index: tuple = ()
    gaps: tuple = ()
    t_ns: int = dataclasses.field(default=0, compare=False)

    FIXED = ("ring_oldest_seq", "next_seg_seq", "anchored_segments", "ring_wraps", "oldest_t_ns",
             "newest_t_ns", "anchored_until_t_ns", "open_first_t_ns", "threshold_ns",
             "index_first_seq")

    def fixed(self):
        """The fixed fields, as a tuple (the same in every coverage chunk of one answer)."""
        return tuple(getattr(self, f) for f in self.FIXED)

    @property
    def ring_empty(self):
        """The proof ring holds no segment (``ring_oldest_seq .. next_seg_seq - 1`` is empty).
        Not ``oldest_t_ns == 0``: a held segment can begin at 0 (a capture file's records at
        time 0) or hold no record at all (a store written by a device that withheld every
        record of a segment): "empty" then contradicted the records such a device gave."""
        return self.ring_oldest_seq >= self.next_seg_seq

    @property
    def ring_short(self):
        """The ring wrapped and covers less than ``threshold_ns`` back from ``t_ns``."""
        return self.ring_wraps > 0 and (self.ring_empty or
                                        self.t_ns - self.oldest_t_ns < self.threshold_ns)


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkHeader:
    kind: int
    node_id: int
    Q: bytes
    chunk_seq: int
    last: bool
    t_ns: int
    count: int


# -- request digest -----------------------------------------------------------------------------

def _show(value, limit=32):
    """A bytes value for a message: its length and (at most ``limit`` bytes of) hex."""
    b = bytes(value)
    hx = b[:limit].hex() + ("..." if len(b) > limit else "")
    return f"{len(b)} bytes ({hx or 'empty'})"


def _is_bytes(x):
    return isinstance(x, (bytes, bytearray, memoryview))


def _check_bytes(name, value, size):
    if not _is_bytes(value):
        raise ValueError(f"{name}: {type(value).__name__} is not bytes")
    if len(value) != size:
        raise ValueError(f"{name}: {_show(value)}, must be {size} bytes")
    return bytes(value)


def _check_u64(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise ValueError(f"{name}: {value!r} is not a u64")
    return value


def normalise_flow_tags(flow_tags):
    """The flow tags of a request as Q binds them: each 8 bytes, sorted, duplicates removed.
    ``ValueError`` naming the first one that is not 8 bytes."""
    tags = []
    for i, ft in enumerate(flow_tags or ()):
        tags.append(_check_bytes(f"flow_tags[{i}]", ft, FT_SIZE))
    return tuple(sorted(set(tags)))


def request_digest(hash_name, kind, from_ns, to_ns, flow_tags, src, dst, nonce):
    """``Q = H("BEAT-RQ-v1" || kind || from_ns || to_ns || n_ft || FT... || src || dst || nonce)``.

    ``flow_tags`` any iterable of 8-byte values (sorted and deduplicated here); ``src``/``dst``
    16 bytes or ``None`` (zero); ``nonce`` 16 bytes. ``ValueError`` names a bad field and value.
    """
    if kind == KIND_RECEIPTS_OF_FLOWS:
        raise ValueError(f"kind: {kind} (receipts of flows) binds flows, not flow tags: "
                         "flows_request_digest")
    if kind not in REQUEST_KIND_NAMES:
        kinds = sorted(k for k in REQUEST_KIND_NAMES if k != KIND_RECEIPTS_OF_FLOWS)
        raise ValueError(f"kind: {kind!r} is not one of {kinds}")
    tags = normalise_flow_tags(flow_tags)
    return _digest(hash_name, kind, from_ns, to_ns, tags, src, dst, nonce)


def _digest(hash_name, kind, from_ns, to_ns, items, src, dst, nonce):
    """``request_digest``'s bytes with ``items`` (checked, sorted) where the flow tags go."""
    _check_u64("from_ns", from_ns)
    _check_u64("to_ns", to_ns)
    src = bytes(ADDR_SIZE) if src is None else _check_bytes("src", src, ADDR_SIZE)
    dst = bytes(ADDR_SIZE) if dst is None else _check_bytes("dst", dst, ADDR_SIZE)
    nonce = _check_bytes("nonce", nonce, NONCE_SIZE)
    H = digest_function(hash_name)
    return H(b"".join((REQUEST_TAG, _REQ.pack(kind, from_ns, to_ns, len(items))) +
                      tuple(items) + (src, dst, nonce)))


def normalise_flows(flows):
    """The flows of a receipts-of-flows request (kind 7) as Q binds them: each ``src || dst``
    (32 bytes), sorted, duplicates removed. A flow is given as ``(src, dst)`` (16 bytes each) or
    as its 32 bytes. ``ValueError`` naming the first bad one."""
    out = set()
    for i, f in enumerate(flows or ()):
        if _is_bytes(f):
            out.add(_check_bytes(f"flows[{i}]", f, FLOW_SIZE))
            continue
        try:
            src, dst = f
        except (TypeError, ValueError):
            raise ValueError(f"flows[{i}]: {type(f).__name__} is not (src, dst) nor 32 bytes") \
                from None
        out.add(_check_bytes(f"flows[{i}].src", src, ADDR_SIZE) +
                _check_bytes(f"flows[{i}].dst", dst, ADDR_SIZE))
    return tuple(sorted(out))


def flow_name(flow):
    """A flow (32 bytes, or ``(src, dst)``) for a message: ``src -> dst`` in hex."""
    f = bytes(flow) if _is_bytes(flow) else bytes(flow[0]) + bytes(flow[1])
    return f"{f[:ADDR_SIZE].hex()} -> {f[ADDR_SIZE:].hex()}"


def flows_request_digest(hash_name, from_ns, to_ns, flows, nonce):
    """Q of a GetReceipts request naming several flows (request kind 7): ``request_digest``'s
    layout with the flows (``normalise_flows``: 32 bytes each, ``src || dst``, sorted, duplicates
    removed) where the flow tags go, ``n_ft`` their number, zero src/dst, and the nonce."""
    return _digest(hash_name, KIND_RECEIPTS_OF_FLOWS, from_ns, to_ns, normalise_flows(flows),
                   None, None, nonce)


def normalise_seg_seqs(seg_seqs):
    """The seg_seqs of a GetSegments request as Q binds them: sorted, duplicates removed.
    ``ValueError`` naming the first one that is not a u64."""
    seqs = set()
    for i, s in enumerate(seg_seqs or ()):
        seqs.add(_check_u64(f"seg_seqs[{i}]", s))
    return tuple(sorted(seqs))


def segments_request_digest(hash_name, seg_seqs, nonce):
    """Q of a GetSegments request (request kind 5): ``request_digest`` with ``from_ns = to_ns =
    0``, the sorted, deduplicated seg_seqs (8 bytes each, big-endian) where the flow tags go, zero
    src/dst, and the nonce."""
    seqs = normalise_seg_seqs(seg_seqs)
    return request_digest(hash_name, KIND_GET_SEGMENTS, 0, 0, [_U64.pack(s) for s in seqs],
                          None, None, nonce)


# -- encoding -----------------------------------------------------------------------------------

def encode_anchor_ref(ref):
    """``batch_seq || leaf_index || tree_size || k || path...`` (25 + 32k bytes)."""
    path = ref.path
    if len(path) > 255:
        raise ValueError(f"anchor ref: a path of {len(path)} hashes (at most 255)")
    if ref.batch_seq == NONE and (ref.leaf_index or ref.tree_size or path):
        raise ValueError("anchor ref: an unanchored leaf has leaf_index = tree_size = 0 and no "
                         f"path, got {ref.leaf_index}, {ref.tree_size}, {len(path)} hashes")
    for h in path:
        if len(h) != HASH_SIZE:
            raise ValueError(f"anchor ref: a path hash of {len(h)} bytes (32)")
    return _REF.pack(ref.batch_seq, ref.leaf_index, ref.tree_size, len(path)) + b"".join(path)


def _segment_parts(seg, parts):
    records = seg.records
    n, rest = divmod(len(records), RECORD_SIZE)
    if rest:
        raise ValueError(f"segment {seg.seg_seq}: {len(records)} bytes of records, not a "
                         f"multiple of {RECORD_SIZE}")
    if len(seg.S) != HASH_SIZE:
        raise ValueError(f"segment {seg.seg_seq}: S of {len(seg.S)} bytes (32)")
    parts.append(_SEG.pack(seg.seg_seq, n, bytes(seg.S)))
    parts.append(encode_anchor_ref(seg.anchor))
    parts.append(records)


def _counter_parts(c, parts):
    parts.append(_COUNTER.pack(c.prev_id, c.next_id, c.packets, c.bytes, c.first_t_ns,
                               c.last_t_ns))


def _receipt_parts(r, parts):
    if r.role not in ROLES:
        raise ValueError(f"receipt {r.epoch_ns}: role {r.role} is not 1 or 2")
    parts.append(_RECEIPT.pack(r.epoch_ns, r.role, bytes(r.src), bytes(r.dst), r.packets, r.bytes,
                               bytes(r.R)))
    parts.append(encode_anchor_ref(r.anchor))


def _interface_bytes(name):
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    if len(raw) > IFNAME_SIZE or b"\x00" in raw or any(not 0x21 <= c <= 0x7e for c in raw):
        raise ValueError(f"capture gap: interface {name!r} is not up to {IFNAME_SIZE} printable "
                         "ASCII characters")
    return raw.ljust(IFNAME_SIZE, b"\x00")


def encode_gap(gap):
    """``from_ns || to_ns || frames_dropped || reason || interface(16, zero padded)``."""
    if gap.reason not in GAP_REASONS:
        raise ValueError(f"capture gap [{gap.from_ns}, {gap.to_ns}]: reason {gap.reason!r} is "
                         f"not one of {sorted(GAP_REASONS)}")
    if gap.from_ns > gap.to_ns:
        raise ValueError(f"capture gap [{gap.from_ns}, {gap.to_ns}]: from_ns after to_ns")
    return _GAP.pack(gap.from_ns, gap.to_ns, gap.frames_dropped, gap.reason,
                     _interface_bytes(gap.interface))


def _coverage_parts(cov, parts):
    parts.append(_COVERAGE.pack(*cov.fixed()))
    for e in cov.index:
        if len(e.S) != HASH_SIZE:
            raise ValueError(f"index entry {e.seg_seq}: S of {len(e.S)} bytes (32)")
        if e.count > 0xFFFFFFFF:
            raise ValueError(f"index entry {e.seg_seq}: {e.count} records (at most 2^32 - 1)")
        parts.append(_ENTRY.pack(e.seg_seq, e.count, e.first_t_ns, e.last_t_ns, bytes(e.S),
                                 ENTRY_SENT if e.sent else 0))
        parts.append(encode_anchor_ref(e.anchor))
    parts.append(_U32.pack(len(cov.gaps)))
    parts.extend(encode_gap(g) for g in cov.gaps)


def _gap_record_parts(g, parts):
    parts.append(encode_gap(g))
    parts.append(encode_anchor_ref(g.anchor))


_ENCODERS = {KIND_SEGMENTS: _segment_parts, KIND_COUNTERS: _counter_parts,
             KIND_RECEIPTS: _receipt_parts, KIND_GAP_RECORDS: _gap_record_parts}


def encode_chunk(kind, node_id, Q, chunk_seq, last, t_ns, items):
    """One chunk body: the common header, then ``items`` (Segments, Counters or Receipts, as
    ``kind`` says) in the order given. A Segment's ``records`` may be any bytes-like object (a
    memoryview into the store is copied once, into the body). For kind 4 (coverage), ``items`` is
    one ``Coverage`` (its ``index`` entries and ``gaps``; ``count`` = the number of index
    entries)."""
    if kind == KIND_COVERAGE:
        if not isinstance(items, Coverage):
            raise ValueError(f"kind 4 (coverage): items must be one Coverage, not "
                             f"{type(items).__name__}")
        if len(Q) != HASH_SIZE:
            raise ValueError(f"Q: {_show(Q)}, must be 32 bytes")
        parts = [_HEADER.pack(MAGIC, kind, node_id, bytes(Q), chunk_seq,
                              FLAG_LAST if last else 0, t_ns, len(items.index))]
        _coverage_parts(items, parts)
        return b"".join(parts)
    enc = _ENCODERS.get(kind)
    if enc is None:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(KIND_NAMES)}")
    if len(Q) != HASH_SIZE:
        raise ValueError(f"Q: {_show(Q)}, must be 32 bytes")
    parts = [_HEADER.pack(MAGIC, kind, node_id, bytes(Q), chunk_seq, FLAG_LAST if last else 0,
                          t_ns, len(items))]
    for item in items:
        enc(item, parts)
    return b"".join(parts)


# -- decoding -----------------------------------------------------------------------------------

def _need(body, off, size, what):
    if len(body) - off < size:
        raise MalformedEvidence(f"{what}: needs {size} bytes at offset {off}, the body has "
                                f"{len(body) - off} left (truncated)")


def decode_header(body):
    """The ChunkHeader of a body (``MalformedEvidence`` when it is not one)."""
    if not _is_bytes(body):
        raise MalformedEvidence(f"chunk body: {type(body).__name__} is not bytes")
    _need(body, 0, HEADER_SIZE, "chunk header")
    magic, kind, node_id, Q, chunk_seq, flags, t_ns, count = _HEADER.unpack_from(body, 0)
    if magic != MAGIC:
        raise MalformedEvidence(f"chunk header: magic {magic!r}, expected {MAGIC!r}")
    if kind not in KIND_NAMES:
        raise MalformedEvidence(f"chunk header: kind {kind} is not one of {sorted(KIND_NAMES)}")
    if flags & ~FLAG_LAST:
        raise MalformedEvidence(f"chunk header: flags 0x{flags:02x} has bits other than bit 0 "
                                "(last) set")
    return ChunkHeader(kind, node_id, Q, chunk_seq, bool(flags & FLAG_LAST), t_ns, count)


def _anchor_ref(body, off, what):
    _need(body, off, _REF.size, f"{what} anchor ref")
    batch_seq, index, size, k = _REF.unpack_from(body, off)
    off += _REF.size
    _need(body, off, HASH_SIZE * k, f"{what} anchor path of {k} hashes")
    if batch_seq == NONE:
        if index or size or k:
            raise MalformedEvidence(f"{what} anchor ref: unanchored (batch_seq NONE) but "
                                    f"leaf_index {index}, tree_size {size}, {k} path hashes")
        return UNANCHORED, off
    if not index < size:
        raise MalformedEvidence(f"{what} anchor ref: leaf_index {index} is not below tree_size "
                                f"{size} (batch {batch_seq})")
    path = tuple(body[o:o + HASH_SIZE] for o in range(off, off + HASH_SIZE * k, HASH_SIZE))
    return AnchorRef(batch_seq, index, size, path), off + HASH_SIZE * k


def _decode_segments(body, off, count):
    out = []
    prev = -1
    for i in range(count):
        what = f"segment {i}"
        _need(body, off, _SEG.size, what)
        seg_seq, n, S = _SEG.unpack_from(body, off)
        off += _SEG.size
        what = f"segment {i} (seg_seq {seg_seq})"
        if seg_seq <= prev:
            raise MalformedEvidence(f"{what}: not after seg_seq {prev} (segments go in seg_seq "
                                    "order)")
        prev = seg_seq
        anchor, off = _anchor_ref(body, off, what)
        size = n * RECORD_SIZE
        _need(body, off, size, f"{what}: {n} records")
        out.append(Segment(seg_seq, S, anchor, body[off:off + size]))
        off += size
    return out, off


def _decode_counters(body, off, count):
    _need(body, off, count * _COUNTER.size, f"{count} counters")
    out = [Counter(*v) for v in _COUNTER.iter_unpack(body[off:off + count * _COUNTER.size])]
    for i in range(1, len(out)):
        a, b = out[i - 1], out[i]
        if (a.prev_id, a.next_id) >= (b.prev_id, b.next_id):
            raise MalformedEvidence(f"counter {i} ({b.prev_id}, {b.next_id}): not after "
                                    f"({a.prev_id}, {a.next_id}) (sorted by prev_id, next_id)")
    return out, off + count * _COUNTER.size


def _decode_receipts(body, off, count):
    out = []
    prev = None
    for i in range(count):
        _need(body, off, _RECEIPT.size, f"receipt {i}")
        epoch, role, src, dst, packets, nbytes, R = _RECEIPT.unpack_from(body, off)
        off += _RECEIPT.size
        what = f"receipt {i} (epoch_ns {epoch}, role {role})"
        if role not in ROLES:
            raise MalformedEvidence(f"{what}: role {role} is not 1 (ingress) or 2 (egress)")
        key = (src, dst, epoch, role)
        if prev is not None and key[:2] == prev[:2] and key <= prev:
            raise MalformedEvidence(f"{what} of flow {flow_name(key[:2])}: not after epoch_ns "
                                    f"{prev[2]}, role {prev[3]} (one flow's receipts go by "
                                    "epoch_ns, role)")
        prev = key
        anchor, off = _anchor_ref(body, off, what)
        out.append(Receipt(epoch, role, src, dst, packets, nbytes, R, anchor))
    return out, off


def _decode_gap(body, off, i):
    what = f"capture gap {i}"
    _need(body, off, _GAP.size, what)
    from_ns, to_ns, frames, reason, iface = _GAP.unpack_from(body, off)
    what = f"capture gap {i} [{from_ns}, {to_ns}]"
    if reason not in GAP_REASONS:
        raise MalformedEvidence(f"{what}: reason {reason} is not 1 (kernel drops) or 2 (capture "
                                f"stopped) (offset {off + 24})")
    if from_ns > to_ns:
        raise MalformedEvidence(f"{what}: from_ns is after to_ns (offset {off})")
    name = iface.rstrip(b"\x00")
    if b"\x00" in name or any(not 0x21 <= c <= 0x7e for c in name):
        raise MalformedEvidence(f"{what}: interface {iface.hex()} is not printable ASCII padded "
                                f"with zero bytes (offset {off + 25})")
    return CaptureGap(from_ns, to_ns, frames, reason, name.decode("ascii")), off + _GAP.size


def _decode_coverage(body, off, count):
    _need(body, off, _COVERAGE.size, "coverage fields")
    fixed = _COVERAGE.unpack_from(body, off)
    ring_oldest, next_seg, anchored = fixed[0], fixed[1], fixed[2]
    if ring_oldest > next_seg:
        raise MalformedEvidence(f"coverage fields: ring_oldest_seq {ring_oldest} is after "
                                f"next_seg_seq {next_seg} (offset {off})")
    if anchored > next_seg:
        raise MalformedEvidence(f"coverage fields: anchored_segments {anchored} is more than "
                                f"next_seg_seq {next_seg} (offset {off + 16})")
    off += _COVERAGE.size
    index = []
    prev = None
    for i in range(count):
        what = f"index entry {i}"
        _need(body, off, _ENTRY.size, what)
        seg_seq, n, first, last, S, flags = _ENTRY.unpack_from(body, off)
        what = f"index entry {i} (seg_seq {seg_seq})"
        if prev is not None and seg_seq <= prev:
            raise MalformedEvidence(f"{what}: not after seg_seq {prev} (the index goes in seg_seq "
                                    f"order) (offset {off})")
        if flags & ~ENTRY_SENT:
            raise MalformedEvidence(f"{what}: flags 0x{flags:02x} has bits other than bit 0 (sent "
                                    f"in full) set (offset {off + 60})")
        if first > last:
            raise MalformedEvidence(f"{what}: first_t_ns {first} is after last_t_ns {last} "
                                    f"(offset {off + 12})")
        if n == 0 and (first or last or flags):
            raise MalformedEvidence(f"{what}: no records, but first_t_ns {first}, last_t_ns "
                                    f"{last}, flags 0x{flags:02x} (all must be 0) (offset {off})")
        prev = seg_seq
        anchor, off = _anchor_ref(body, off + _ENTRY.size, what)
        index.append(IndexEntry(seg_seq, n, first, last, S, bool(flags & ENTRY_SENT), anchor))
    _need(body, off, 4, "coverage gap count")
    n_gaps = _U32.unpack_from(body, off)[0]
    off += 4
    _need(body, off, n_gaps * _GAP.size, f"coverage: {n_gaps} capture gaps")
    gaps = []
    for i in range(n_gaps):
        gap, off2 = _decode_gap(body, off, i)
        if gaps and _gap_key(gap) <= _gap_key(gaps[-1]):
            raise MalformedEvidence(f"capture gap {i} [{gap.from_ns}, {gap.to_ns}]: not after gap "
                                    f"{i - 1} (sorted by from_ns, to_ns, reason, interface) "
                                    f"(offset {off})")
        gaps.append(gap)
        off = off2
    return Coverage(*fixed, index=tuple(index), gaps=tuple(gaps)), off


def gap_record_key(g):
    """The order of gap records in an answer: (from_ns, to_ns, reason, interface,
    frames_dropped), strictly increasing (a device states one gap once)."""
    return (g.from_ns, g.to_ns, g.reason, g.interface, g.frames_dropped)


def _decode_gap_records(body, off, count):
    out = []
    for i in range(count):
        gap, off2 = _decode_gap(body, off, i)
        g_what = f"gap record {i} [{gap.from_ns}, {gap.to_ns}]"
        anchor, off2 = _anchor_ref(body, off2, g_what)
        g = GapRecord(gap.from_ns, gap.to_ns, gap.frames_dropped, gap.reason, gap.interface,
                      anchor)
        if out and gap_record_key(g) <= gap_record_key(out[-1]):
            raise MalformedEvidence(f"{g_what}: not after gap record {i - 1} (sorted by from_ns, "
                                    f"to_ns, reason, interface, frames_dropped) (offset {off})")
        out.append(g)
        off = off2
    return out, off


_DECODERS = {KIND_SEGMENTS: _decode_segments, KIND_COUNTERS: _decode_counters,
             KIND_RECEIPTS: _decode_receipts, KIND_COVERAGE: _decode_coverage,
             KIND_GAP_RECORDS: _decode_gap_records}


def decode_chunk(body):
    """``(ChunkHeader, items)`` of a body: a list of Segments, Counters or Receipts, or for kind
    4 one ``Coverage`` (its ``t_ns`` the header's). Every length is checked before it is read;
    trailing bytes, a count that does not match, unknown flags, kinds or gap reasons, unsorted
    items, a bad anchor ref: ``MalformedEvidence`` naming the part (and where it can, the
    offset)."""
    header = decode_header(body)
    body = bytes(body)
    items, off = _DECODERS[header.kind](body, HEADER_SIZE, header.count)
    if off != len(body):
        raise MalformedEvidence(f"chunk {header.chunk_seq}: {len(body) - off} bytes after its "
                                f"{header.count} items (offset {off})")
    if header.kind == KIND_COVERAGE:
        items = dataclasses.replace(items, t_ns=header.t_ns)
    return header, items


# -- signatures ---------------------------------------------------------------------------------

def sign_body(key, body):
    """``Ed25519(device key, body)`` with a ``ledger_client.keys.DeviceKey``: 64 bytes."""
    return key.sign(body)


def verify_signature(pubkey, body, signature):
    """True when ``signature`` is the Ed25519 signature of ``body`` by the 32-byte ``pubkey``."""
    return _ed25519_verify(pubkey, body, signature)


def open_chunk(body, signature, pubkey, *, node_id, kind, Q, chunk_seq):
    """Check a signed chunk and decode it: ``(ChunkHeader, items)``.

    In this order: the signature (``BadSignature``), the body (``MalformedEvidence``), then the
    header against what was asked (``WrongAnswer``: another node_id, kind, Q or chunk_seq).
    ``kind``: the chunk kind expected, or a tuple of the kinds accepted.
    """
    if not _is_bytes(signature) or len(signature) != SIGNATURE_SIZE:
        size = len(signature) if _is_bytes(signature) else type(signature).__name__
        raise BadSignature(f"chunk {chunk_seq} of node {node_id}: a signature of {size} bytes "
                           f"(Ed25519: {SIGNATURE_SIZE})")
    if not _is_bytes(body) or not verify_signature(pubkey, body, signature):
        raise BadSignature(f"chunk {chunk_seq} of node {node_id}: the signature does not verify "
                           f"with public key {bytes(pubkey).hex()}")
    header, items = decode_chunk(body)
    if header.node_id != node_id:
        raise WrongAnswer(f"chunk {chunk_seq}: signed for node_id {header.node_id}, asked node "
                          f"{node_id}")
    kinds = (kind,) if isinstance(kind, int) else tuple(kind)
    if header.kind not in kinds:
        asked = " or ".join(f"{k} ({KIND_NAMES[k]})" for k in kinds)
        raise WrongAnswer(f"chunk {chunk_seq} of node {node_id}: kind {header.kind} "
                          f"({KIND_NAMES[header.kind]}), asked {asked}")
    if header.Q != Q:
        raise WrongAnswer(f"chunk {chunk_seq} of node {node_id}: answers request "
                          f"{header.Q.hex()}, asked {bytes(Q).hex()} (replayed or for another "
                          "window)")
    if header.chunk_seq != chunk_seq:
        raise WrongAnswer(f"chunk of node {node_id}: chunk_seq {header.chunk_seq} where "
                          f"{chunk_seq} was due")
    return header, items


class AnswerReader:
    """Checks one answer chunk by chunk: ``feed(body, signature)`` returns the chunk's items (each
    chunk opened with ``open_chunk``, chunk_seq counting from 0, items in order across chunks);
    ``finish()`` raises ``IncompleteAnswer`` unless the last chunk arrived.

    A segments answer (``kind`` 1, ``coverage`` True, the default for kind 1: GetProofSegments
    and GetSegments) is kind-1 chunks followed by kind-4 chunks, the last flag on the last kind-4
    chunk: a kind-1 chunk after a coverage chunk, or with the last flag, is a ``WrongAnswer``;
    coverage chunks must repeat the same fixed fields, their index entries and gaps go on in order
    across chunks. ``feed`` returns ``[]`` for a coverage chunk; ``coverage`` is the whole
    ``Coverage`` once ``finish()`` passed (its ``t_ns`` the last coverage chunk's)."""

    def __init__(self, pubkey, node_id, kind, Q, coverage=None, by_flow=False):
        self.pubkey = bytes(pubkey)
        self.node_id = node_id
        self.kind = kind
        self.by_flow = bool(by_flow)
        self.Q = bytes(Q)
        self.with_coverage = (kind == KIND_SEGMENTS) if coverage is None else bool(coverage)
        self.chunks = 0
        self.done = False
        self._prev = None
        self._cov = None                 # (first part, [index entries], [gaps])
        self._cov_t = 0                  # the last coverage chunk's t_ns
        self.coverage = None

    def feed(self, body, signature):
        if self.done:
            raise IncompleteAnswer(f"node {self.node_id}: a chunk ({self.chunks}) after the last "
                                   "one")
        kinds = (self.kind, KIND_COVERAGE) if self.with_coverage else self.kind
        header, items = open_chunk(body, signature, self.pubkey, node_id=self.node_id,
                                   kind=kinds, Q=self.Q, chunk_seq=self.chunks)
        if header.kind == KIND_COVERAGE:
            self._coverage_part(items)
            items = []
        else:
            if self._cov is not None:
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: "
                                  f"{KIND_NAMES[header.kind]} after the coverage (the coverage "
                                  "chunks come last)")
            if self.with_coverage and header.last:
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: the answer ends "
                                  "without its coverage (kind 4) chunk")
            if items:
                first, last = self._order_key(items[0]), self._order_key(items[-1])
                if self._prev is not None and first <= self._prev:
                    raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: starts at "
                                      f"{first}, not after {self._prev} of the chunk before")
                if header.kind == KIND_RECEIPTS:
                    self._receipts_in_order(items)
                self._prev = last
        self.chunks += 1
        self.done = header.last
        return items

    def _coverage_part(self, part):
        if self._cov is None:
            self._cov = (part, list(part.index), list(part.gaps))
        else:
            first, index, gaps = self._cov
            if part.fixed() != first.fixed():
                diff = [f for f in Coverage.FIXED if getattr(part, f) != getattr(first, f)]
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: coverage fields "
                                  f"{', '.join(diff)} differ from the answer's first coverage "
                                  "chunk")
            if part.index and index and part.index[0].seg_seq <= index[-1].seg_seq:
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: index starts at "
                                  f"seg_seq {part.index[0].seg_seq}, not after "
                                  f"{index[-1].seg_seq} of the chunk before")
            if part.gaps and gaps and _gap_key(part.gaps[0]) <= _gap_key(gaps[-1]):
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: capture gaps "
                                  "not after those of the chunk before")
            index.extend(part.index)
            gaps.extend(part.gaps)
        self._cov_t = part.t_ns

    def _receipts_in_order(self, items):
        """Receipts strictly by (epoch_ns, role), or with ``by_flow`` (a receipts-of-flows
        answer, request kind 7) by (src, dst, epoch_ns, role), within the chunk."""
        key = self._order_key
        prev = key(items[0])
        for i in range(1, len(items)):
            k = key(items[i])
            if k <= prev:
                rc = items[i]
                order = "flow, epoch_ns, role" if self.by_flow else "epoch_ns, role"
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: receipt {i} "
                                  f"(flow {flow_name((rc.src, rc.dst))}, epoch_ns "
                                  f"{rc.epoch_ns}, role {rc.role}) is not after the one before "
                                  f"(the answer goes by {order})")
            prev = k

    def _order_key(self, item):
        if self.kind == KIND_SEGMENTS:
            return item.seg_seq
        if self.kind == KIND_COUNTERS:
            return (item.prev_id, item.next_id)
        if self.kind == KIND_GAP_RECORDS:
            return gap_record_key(item)
        if self.by_flow:
            return receipt_key(item)
        return (item.epoch_ns, item.role)

    def finish(self):
        if not self.done:
            raise IncompleteAnswer(f"node {self.node_id}: the answer ended after {self.chunks} "
                                   "chunks without its last chunk (cut short)")
        if self._cov is not None:
            first, index, gaps = self._cov
            self.coverage = dataclasses.replace(first, index=tuple(index), gaps=tuple(gaps),
                                                t_ns=self._cov_t)


def receipt_key(rc):
    """The order of receipts in a receipts-of-flows answer (request kind 7): ``(src, dst,
    epoch_ns, role)``, strictly increasing (the flows in the order its Q binds them, each flow's
    receipts by epoch_ns and role, as a kind-3 answer has them)."""
    return (bytes(rc.src), bytes(rc.dst), rc.epoch_ns, rc.role)


def _gap_key(g):
    return (g.from_ns, g.to_ns, g.reason, g.interface)
