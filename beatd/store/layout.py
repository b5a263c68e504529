"""The layout of a device's LMDB environment: every named database, every meta key and the encoding
of every key and value, in one place (docs/store.md, "Layout").

Every module that reads or writes the environment (the commit path, pruning, the capture gaps, the
ledger outbox, the evidence reader) takes the names and encodings from here; no other module spells
a database name or a meta key (tests/store/test_store_layout.py checks it). Every integer key is a
big-endian u64 so that LMDB's byte order is numeric order.

Two rings: "the ring" is the capture ring (AF_PACKET, ``[capture]``); the store's bounded database
of proof segments is "the proof ring" (``[store] ring_size``). Its meta keys keep their stored names
(``ring_*``): they are the on-disk format.
"""
import json
import struct

from beat_common.gap_record import (GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS,  # noqa: F401
                                    GAP_RECORD_SIZE)
from beat_common.spec import (LEAF_GAP, LEAF_RECEIPT, LEAF_SEGMENT, LEAF_SIZE,  # noqa: F401
                              RECORD_SIZE)
from ledger_client.outbox import BatchRecord

FORMAT_VERSION = 1
# how commits reach the disk (``[store] sync``): see Store
SYNC_MODES = ("periodic", "always", "never")

# -- named databases ----------------------------------------------------------------------------

PROOFS = "proofs"              # the proof ring: seg_seq -> count(8) S(32) records (48 B each)
COMMITMENTS = "commitments"    # seg_seq -> S(32) count(8) first_t_ns(8) last_t_ns(8)
COUNTERS = "counters"          # prev_id(8) next_id(8) -> packets bytes first_t_ns last_t_ns
RECEIPTS = "receipts"          # epoch_ns(8) role(1) src(16) dst(16) -> packets(8) bytes(8) R(32)
OUTBOX = "outbox"              # leaf_seq -> type(1) value(32): the ledger leaves, in order
META = "meta"                  # the meta keys below -> their values
CAPTURE_GAPS = "capture_gaps"  # from_ns(8) reason(1) interface(16) -> to_ns(8) frames_dropped(8)
#                                (the merged view, for status; not evidence)
GAP_RECORDS = "gap_records"    # leaf_seq(8) -> a gap record (41 bytes, docs/gap-records.md): the
#                                immutable statements, each with its outbox leaf 3 || G
ANCHORS = "anchors"            # batch_seq -> a BatchRecord (pack_batch)
LEAF_PROOFS = "leaf_proofs"    # b"L" batch_seq -> the batch's tree levels; (former) leaf_seq ->
#                                batch_seq(8) index(8) proof

STORE_DBS = (PROOFS, COMMITMENTS, COUNTERS, RECEIPTS, OUTBOX, META, CAPTURE_GAPS)  # made at open
OUTBOX_DBS = (ANCHORS, LEAF_PROOFS)    # made by the ledger outbox (a full store must still open)
GAP_DBS = (GAP_RECORDS,)               # made with the first gap record
DB_NAMES = STORE_DBS + OUTBOX_DBS + GAP_DBS
MAX_DBS = len(DB_NAMES)                # the environment's max_dbs: no other database fits
ANCHORS_DB, LEAF_PROOFS_DB = ANCHORS.encode(), LEAF_PROOFS.encode()   # as LMDB names them


def db_name(name):
    """The LMDB name of one of DB_NAMES."""
    if name not in DB_NAMES:
        raise KeyError(f"{name!r} is not a database of the store (one of {', '.join(DB_NAMES)})")
    return name.encode()


# -- meta keys ----------------------------------------------------------------------------------

M_FORMAT_VERSION = b"format_version"
M_NODE_ID = b"node_id"
M_HASH = b"hash"                          # utf-8 hash name
M_NEXT_SEG_SEQ = b"next_seg_seq"
M_OPEN_RECORDS = b"open_records"          # the open segment's records
M_OPEN_RECEIPTS = b"open_receipts"        # the open receipts (OPEN_RECEIPT_SIZE each)
M_CLOSED_BEFORE = b"closed_before"
M_NEXT_LEAF_SEQ = b"next_leaf_seq"
M_STATS = b"stats"                        # JSON: the pipeline's statistics, accumulated
# the proof ring
M_PROOF_RING_WRAPS = b"ring_wraps"        # segments dropped from the proof ring
M_PROOF_RING_OLDEST_SEQ = b"ring_oldest_seq"
M_PROOF_RING_OLDEST_T_NS = b"ring_oldest_t_ns"
M_PROOF_RING_BYTES = b"ring_bytes"
M_PROOF_RING_SEGMENTS = b"ring_segments"
# pruning (absent in a store that never pruned: 0)
M_PRUNE_BATCH = b"prune_batch"
M_OUTBOX_BASE = b"outbox_base"
M_PRUNED_SEGMENTS = b"pruned_segments"
M_PRUNED_RECORDS = b"pruned_records"
M_PRUNED_RECEIPTS = b"pruned_receipts"
PRUNE_META = tuple(k.decode() for k in (M_PRUNE_BATCH, M_OUTBOX_BASE, M_PRUNED_SEGMENTS,
                                        M_PRUNED_RECORDS, M_PRUNED_RECEIPTS))
# capture (absent until the daemon records it)
M_CAPTURE_ALIVE_T_NS = b"capture_alive_t_ns"

_META_TEXT = {M_HASH}
_META_JSON = {M_STATS}
_META_BLOB = {M_OPEN_RECORDS, M_OPEN_RECEIPTS}


def initial_meta(node_id, hash_name, stat_names):
    """The meta of a new store: ``[(key, value)]``."""
    return [(M_FORMAT_VERSION, p64(FORMAT_VERSION)), (M_NODE_ID, p64(node_id)),
            (M_HASH, hash_name.encode()), (M_NEXT_SEG_SEQ, p64(0)), (M_OPEN_RECORDS, b""),
            (M_OPEN_RECEIPTS, b""), (M_CLOSED_BEFORE, p64(0)), (M_NEXT_LEAF_SEQ, p64(0)),
            (M_STATS, json.dumps(dict.fromkeys(stat_names, 0)).encode()),
            (M_PROOF_RING_WRAPS, p64(0)), (M_PROOF_RING_OLDEST_SEQ, p64(0)),
            (M_PROOF_RING_OLDEST_T_NS, p64(0)), (M_PROOF_RING_BYTES, p64(0)),
            (M_PROOF_RING_SEGMENTS, p64(0))] + [(name.encode(), p64(0)) for name in PRUNE_META]


def decode_meta(key, value):
    """``(name, value)`` of one meta entry: the hash name a str, the stats a dict, the open blobs
    bytes, every other key an int."""
    key = bytes(key)
    if key in _META_TEXT:
        return key.decode(), bytes(value).decode()
    if key in _META_JSON:
        return key.decode(), json.loads(bytes(value))
    if key in _META_BLOB:
        return key.decode(), bytes(value)
    return key.decode(), u64(value)


def encode_stats(stats):
    return json.dumps(stats, separators=(",", ":")).encode()


def decode_stats(value):
    return json.loads(bytes(value))


# -- keys and values ----------------------------------------------------------------------------

U64 = struct.Struct(">Q")
SEG_HEAD = 40                           # a proofs value: count(8) S(32), then the records
RECEIPT_KEY_SIZE = 41                   # epoch_ns(8) role(1) src(16) dst(16)
COMMIT = struct.Struct(">32sQQQ")       # commitments value: S count first_t_ns last_t_ns
COUNTER_KEY = struct.Struct(">QQ")      # counters key: prev_id next_id
COUNTER = struct.Struct(">QQQQ")        # counters value: packets bytes first_t_ns last_t_ns
RECEIPT_HEAD = struct.Struct(">QB")     # receipts key's head: epoch_ns role
RECEIPT_VAL = struct.Struct(">QQ32s")   # receipts value: packets bytes R
T_NS = struct.Struct(">Q40x")           # the t_ns of a 48-byte record
GAP_KEY = struct.Struct(">QB16s")       # capture_gaps key: from_ns reason interface
GAP_VAL = struct.Struct(">QQ")          # capture_gaps value: to_ns frames_dropped
BATCH = struct.Struct(">BQ32sQQQQd")    # anchors value's head, then ref (utf-8, the rest)
PROOF_HEAD = struct.Struct(">QQ")       # leaf_proofs, the former per-leaf format: batch_seq index
LEVELS_PREFIX = b"L"                    # leaf_proofs: b"L" || batch_seq -> the batch's tree levels


def p64(n):
    return U64.pack(n)


def u64(b, default=0):
    return default if b is None else U64.unpack(b)[0]


def levels_key(batch_seq):
    """The leaf_proofs key of a batch's tree levels (9 bytes: never a former 8-byte key)."""
    return LEVELS_PREFIX + p64(batch_seq)


def pack_batch(rec):
    """An anchors value: status(1) tree_size(8) root(32) first_t_ns(8) last_t_ns(8)
    first_leaf_seq(8) seg_leaves_end(8) built_at(8, IEEE double) ref(utf-8, rest)."""
    return BATCH.pack(rec.status, rec.tree_size, rec.root, rec.first_t_ns, rec.last_t_ns,
                      rec.first_leaf_seq, rec.seg_leaves_end, rec.built_at) + (
                          (rec.ref or "").encode())


def unpack_batch(batch_seq, value):
    """The BatchRecord of an anchors entry."""
    value = bytes(value)
    st, size, root, first, last, leaf0, segs, built = BATCH.unpack_from(value)
    ref = value[BATCH.size:].decode() or None
    return BatchRecord(batch_seq, size, root, first, last, leaf0, segs, built, st, ref)


def pack_leaf(kind, value):
    """An outbox value (a ledger leaf): type(1) || value(32)."""
    return bytes((kind,)) + value
