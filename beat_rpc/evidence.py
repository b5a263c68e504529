"""The canonical evidence codec of the Interrogation Protocol (docs/interrogation.md).

What a device signs and the governance checks, byte for byte: the request digest ``Q``, the chunk
bodies of the three evidence kinds (proof segments, counter report, receipts) and the Ed25519
signature over a body. Records travel packed: a ``Segment`` holds its records as one bytes object
of ``n * 48`` bytes, never one Python object per record.

Decoders never crash on bad input: anything that is not a well-formed body raises
``MalformedEvidence`` naming the part and the offset. ``open_chunk`` checks a signed chunk (the
signature, then the header's node_id, kind, Q and chunk_seq) before decoding it, and
``AnswerReader`` checks a whole answer (chunk_seq 0, 1, 2, ... and the last chunk arriving, items in
order across chunks). None of this checks ``S``, ``R`` or the anchors: that is the verdict's job
(governance/verify.py), on top of these types.
"""
import dataclasses
import struct

from fastpath.hashes import digest_function
from ledger_client.keys import verify as _ed25519_verify

__all__ = ["NONE", "RECORD_SIZE", "KIND_SEGMENTS", "KIND_COUNTERS", "KIND_RECEIPTS", "KIND_NAMES",
           "HEADER_SIZE", "CHUNK_RECORD_BYTES", "AnchorRef", "UNANCHORED", "Segment", "Counter",
           "Receipt", "ChunkHeader", "EvidenceError", "MalformedEvidence", "BadSignature",
           "WrongAnswer", "IncompleteAnswer", "request_digest", "normalise_flow_tags",
           "encode_anchor_ref", "encode_chunk", "decode_header", "decode_chunk", "sign_body", "verify_signature",
           "open_chunk", "AnswerReader"]

NONE = (1 << 64) - 1
U64_MAX = NONE
RECORD_SIZE = 48
FT_SIZE = 8
ADDR_SIZE = 16
NONCE_SIZE = 16
HASH_SIZE = 32
SIGNATURE_SIZE = 64
KIND_SEGMENTS, KIND_COUNTERS, KIND_RECEIPTS = 1, 2, 3
KIND_NAMES = {KIND_SEGMENTS: "proof segments", KIND_COUNTERS: "counter report",
              KIND_RECEIPTS: "receipts"}
ROLES = (1, 2)                      # receipts: 1 ingress, 2 egress (SPEC.md)
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
HEADER_SIZE = _HEADER.size                  # 68


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
    if kind not in KIND_NAMES:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(KIND_NAMES)}")
    _check_u64("from_ns", from_ns)
    _check_u64("to_ns", to_ns)
    tags = normalise_flow_tags(flow_tags)
    src = bytes(ADDR_SIZE) if src is None else _check_bytes("src", src, ADDR_SIZE)
    dst = bytes(ADDR_SIZE) if dst is None else _check_bytes("dst", dst, ADDR_SIZE)
    nonce = _check_bytes("nonce", nonce, NONCE_SIZE)
    H = digest_function(hash_name)
    return H(b"".join((REQUEST_TAG, _REQ.pack(kind, from_ns, to_ns, len(tags))) + tags +
                      (src, dst, nonce)))


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


_ENCODERS = {KIND_SEGMENTS: _segment_parts, KIND_COUNTERS: _counter_parts,
             KIND_RECEIPTS: _receipt_parts}


def encode_chunk(kind, node_id, Q, chunk_seq, last, t_ns, items):
    """One chunk body: the common header, then ``items`` (Segments, Counters or Receipts, as
    ``kind`` says) in the order given. A Segment's ``records`` may be any bytes-like object (a
    memoryview into the store is copied once, into the body)."""
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
        if prev is not None and (epoch, role) <= prev:
            raise MalformedEvidence(f"{what}: not after epoch_ns {prev[0]}, role {prev[1]} "
                                    "(sorted by epoch_ns, role)")
        prev = (epoch, role)
        anchor, off = _anchor_ref(body, off, what)
        out.append(Receipt(epoch, role, src, dst, packets, nbytes, R, anchor))
    return out, off


_DECODERS = {KIND_SEGMENTS: _decode_segments, KIND_COUNTERS: _decode_counters,
             KIND_RECEIPTS: _decode_receipts}


def decode_chunk(body):
    """``(ChunkHeader, items)`` of a body: a list of Segments, Counters or Receipts. Every
    length is checked before it is read; trailing bytes, a count that does not match, unknown
    flags or kinds, unsorted items, a bad anchor ref: ``MalformedEvidence``."""
    header = decode_header(body)
    body = bytes(body)
    items, off = _DECODERS[header.kind](body, HEADER_SIZE, header.count)
    if off != len(body):
        raise MalformedEvidence(f"chunk {header.chunk_seq}: {len(body) - off} bytes after its "
                                f"{header.count} items")
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
    if header.kind != kind:
        raise WrongAnswer(f"chunk {chunk_seq} of node {node_id}: kind {header.kind} "
                          f"({KIND_NAMES[header.kind]}), asked {kind} ({KIND_NAMES[kind]})")
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
    ``finish()`` raises ``IncompleteAnswer`` unless the last chunk arrived."""

    def __init__(self, pubkey, node_id, kind, Q):
        self.pubkey = bytes(pubkey)
        self.node_id = node_id
        self.kind = kind
        self.Q = bytes(Q)
        self.chunks = 0
        self.done = False
        self._prev = None

    def feed(self, body, signature):
        if self.done:
            raise IncompleteAnswer(f"node {self.node_id}: a chunk ({self.chunks}) after the last "
                                   "one")
        header, items = open_chunk(body, signature, self.pubkey, node_id=self.node_id,
                                   kind=self.kind, Q=self.Q, chunk_seq=self.chunks)
        if items:
            first, last = self._order_key(items[0]), self._order_key(items[-1])
            if self._prev is not None and first <= self._prev:
                raise WrongAnswer(f"chunk {self.chunks} of node {self.node_id}: starts at "
                                  f"{first}, not after {self._prev} of the chunk before")
            self._prev = last
        self.chunks += 1
        self.done = header.last
        return items

    def _order_key(self, item):
        if self.kind == KIND_SEGMENTS:
            return item.seg_seq
        if self.kind == KIND_COUNTERS:
            return (item.prev_id, item.next_id)
        return (item.epoch_ns, item.role)

    def finish(self):
        if not self.done:
            raise IncompleteAnswer(f"node {self.node_id}: the answer ended after {self.chunks} "
                                   "chunks without its last chunk (cut short)")
