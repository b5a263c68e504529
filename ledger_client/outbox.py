"""The ledger outbox on the device store: leaves in, batches (pending anchors + leaf proofs) out.

The device store (``beatd.store.Store``, docs/store.md) keeps the leaves in order in its ``outbox``
database (``leaf_seq`` u64 BE -> ``type(1) value(32)``). This module only *reads* the store's
databases and adds two of its own in the same LMDB environment (docs/ledger.md, "Outbox and
batcher"):

``anchors``: ``batch_seq`` u64 BE -> ``status(1) tree_size(8) root(32) first_t_ns(8)
last_t_ns(8) first_leaf_seq(8) seg_leaves_end(8) built_at(8, IEEE double) ref(utf-8, rest)``.
``status`` 0 = pending (built, not yet on the ledger), 1 = anchored. ``first_leaf_seq`` and
``tree_size`` say which leaves the batch holds (``first_leaf_seq .. + tree_size - 1``);
``seg_leaves_end`` counts the segment leaves (type 2) in the outbox up to the end of this batch,
which maps the next segment leaf to its ``seg_seq`` (the store writes segment leaves in ``seg_seq``
order, from 0). Anchored batches are always a prefix of the batch_seqs (submission is in order).

``leaf_proofs``: ``leaf_seq`` u64 BE -> ``batch_seq(8) index(8) proof`` (32 bytes per element, RFC
9162 audit path, bottom-up).

Time span of a batch (``first_t_ns``/``last_t_ns``): the min/max over its leaves of the segment
commitments' ``first_t_ns``/``last_t_ns`` (``commitments`` db) and of the receipts' ``epoch_ns``
(``receipts`` db). A leaf whose time cannot be found (it should not happen) is left out of the
span and logged; a batch with no time at all gets 0, 0.
"""
import dataclasses
import logging
import struct
from typing import Optional

from .types import Anchor

log = logging.getLogger("beat.ledger.outbox")

ANCHORS_DB = b"anchors"
LEAF_PROOFS_DB = b"leaf_proofs"
PENDING, ANCHORED = 0, 1
LEAF_RECEIPT, LEAF_SEGMENT = 1, 2

_U64 = struct.Struct(">Q")
_REC = struct.Struct(">BQ32sQQQQd")
_PROOF_HEAD = struct.Struct(">QQ")
_COMMIT = struct.Struct(">32sQQQ")          # the store's commitments value: S count first last


def _p64(n):
    return _U64.pack(n)


def _u64(b):
    return _U64.unpack(b)[0]


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """One batch as the outbox keeps it."""
    batch_seq: int
    tree_size: int
    root: bytes
    first_t_ns: int
    last_t_ns: int
    first_leaf_seq: int
    seg_leaves_end: int
    built_at: float
    status: int = PENDING
    ref: Optional[str] = None

    @property
    def end_leaf_seq(self):
        """The first leaf_seq after this batch."""
        return self.first_leaf_seq + self.tree_size

    def pack(self):
        return _REC.pack(self.status, self.tree_size, self.root, self.first_t_ns, self.last_t_ns,
                         self.first_leaf_seq, self.seg_leaves_end, self.built_at) + (
                             (self.ref or "").encode())

    @classmethod
    def unpack(cls, batch_seq, value):
        value = bytes(value)
        st, size, root, first, last, leaf0, segs, built = _REC.unpack_from(value)
        ref = value[_REC.size:].decode() or None
        return cls(batch_seq, size, root, first, last, leaf0, segs, built, st, ref)

    def anchor(self, node_id):
        return Anchor(node_id, self.batch_seq, self.tree_size, self.root, self.first_t_ns,
                      self.last_t_ns, self.ref)


class Outbox:
    """Reads the store's leaves; keeps batches and leaf proofs in ``anchors`` and ``leaf_proofs``.

    Only the batcher writes here, one process per store (two batchers on one store would be
    caught: ``write_batch`` refuses a batch that does not follow the stored ones).
    """

    def __init__(self, store):
        self.store = store
        self.env = store.env
        self.path = store.path
        self.db_outbox = store.db["outbox"]
        self.db_commitments = store.db["commitments"]
        self.db_receipts = store.db["receipts"]
        self.db_meta = store.db["meta"]
        with self.env.begin(write=True) as txn:
            self.db_anchors = self.env.open_db(ANCHORS_DB, txn=txn, create=True)
            self.db_proofs = self.env.open_db(LEAF_PROOFS_DB, txn=txn, create=True)

    # -- reading --------------------------------------------------------------------------------

    def next_leaf_seq(self):
        """The leaf_seq the store will write next (= number of leaves ever produced)."""
        with self.env.begin() as txn:
            v = txn.get(b"next_leaf_seq", db=self.db_meta)
            return _u64(v) if v is not None else 0

    def last_batch(self):
        """The newest batch, or ``None``."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.last():
                    return None
                return BatchRecord.unpack(_u64(cur.key()), cur.value())

    def batch(self, batch_seq):
        with self.env.begin() as txn:
            v = txn.get(_p64(batch_seq), db=self.db_anchors)
            return None if v is None else BatchRecord.unpack(batch_seq, v)

    def batches(self, from_seq=0):
        """Every batch from ``from_seq`` on, in batch_seq order."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.set_range(_p64(from_seq)):
                    return []
                return [BatchRecord.unpack(_u64(k), v) for k, v in cur]

    def first_pending(self):
        """The batch_seq of the oldest pending batch (anchored ones are a prefix), or the next."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.last():
                    return 0
                seq = _u64(cur.key())
                while BatchRecord.unpack(seq, cur.value()).status == PENDING:
                    if not cur.prev():
                        return seq
                    seq = _u64(cur.key())
                return seq + 1

    def leaves(self, from_seq, limit):
        """Up to ``limit`` leaves ``(leaf_seq, leaf_bytes)`` from ``from_seq``, contiguous."""
        out = []
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_outbox) as cur:
                if not cur.set_range(_p64(from_seq)):
                    return out
                for k, v in cur:
                    seq = _u64(k)
                    if seq != from_seq + len(out):
                        raise RuntimeError(f"{self.path}: outbox leaf {from_seq + len(out)} is "
                                           f"missing (found {seq}): the outbox has a gap")
                    out.append((seq, bytes(v)))
                    if len(out) >= limit:
                        break
        return out

    def span(self, leaves, seg_leaves_before):
        """``(first_t_ns, last_t_ns, seg_leaves_end)`` of these leaves (see the module doc)."""
        times = []
        seg_seq = seg_leaves_before
        receipts = {}
        with self.env.begin() as txn:
            for leaf_seq, leaf in leaves:
                kind, value = leaf[0], leaf[1:]
                if kind == LEAF_SEGMENT:
                    c = txn.get(_p64(seg_seq), db=self.db_commitments)
                    found = c is not None and bytes(c[:32]) == value
                    if not found:          # the k-th segment leaf should be seg_seq k: search
                        for k, v in txn.cursor(db=self.db_commitments):
                            if bytes(v[:32]) == value:
                                c, found = v, True
                                break
                    if found:
                        _, _, first, last = _COMMIT.unpack(c)
                        times += (first, last)
                    else:
                        log.warning("%s: outbox leaf %d: no segment commitment with this S; "
                                    "left out of the batch's time span", self.path, leaf_seq)
                    seg_seq += 1
                elif kind == LEAF_RECEIPT:
                    receipts[value] = leaf_seq
                else:
                    log.warning("%s: outbox leaf %d has type %d", self.path, leaf_seq, kind)
            if receipts:
                # receipts are keyed by epoch first; a batch's are the newest: scan from the end
                with txn.cursor(db=self.db_receipts) as cur:
                    if cur.last():
                        for k, v in cur.iterprev():
                            r = bytes(v[16:48])
                            if r in receipts:
                                del receipts[r]
                                times.append(_u64(k[:8]))
                                if not receipts:
                                    break
                for r, leaf_seq in receipts.items():
                    log.warning("%s: outbox leaf %d: no receipt with this R; left out of the "
                                "batch's time span", self.path, leaf_seq)
        if not times:
            return 0, 0, seg_seq
        return min(times), max(times), seg_seq

    def proof(self, leaf_seq):
        """``(batch_seq, index, proof)`` for a batched leaf, or ``None``."""
        with self.env.begin() as txn:
            v = txn.get(_p64(leaf_seq), db=self.db_proofs)
        if v is None:
            return None
        v = bytes(v)
        batch_seq, index = _PROOF_HEAD.unpack_from(v)
        body = v[_PROOF_HEAD.size:]
        return batch_seq, index, [body[o:o + 32] for o in range(0, len(body), 32)]

    # -- writing --------------------------------------------------------------------------------

    def write_batch(self, rec, proofs):
        """Store a new pending batch and its leaves' proofs in one transaction.

        ``proofs``: ``(leaf_seq, index, [hash, ...])`` for every leaf of the batch. Refused
        (``RuntimeError``, nothing written) unless the batch follows the stored ones exactly.
        """
        with self.env.begin(write=True) as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if cur.last():
                    prev = BatchRecord.unpack(_u64(cur.key()), cur.value())
                    want_seq, want_leaf = prev.batch_seq + 1, prev.end_leaf_seq
                else:
                    want_seq, want_leaf = 0, 0
            if rec.batch_seq != want_seq or rec.first_leaf_seq != want_leaf:
                raise RuntimeError(
                    f"{self.path}: batch {rec.batch_seq} from leaf {rec.first_leaf_seq} does not "
                    f"follow the stored batches (expected batch {want_seq} from leaf {want_leaf}): "
                    "is another batcher running on this store?")
            txn.put(_p64(rec.batch_seq), rec.pack(), db=self.db_anchors, append=True)
            for leaf_seq, index, proof in proofs:
                txn.put(_p64(leaf_seq), _PROOF_HEAD.pack(rec.batch_seq, index) + b"".join(proof),
                        db=self.db_proofs, append=True)

    def mark_anchored(self, batch_seq, ref=None):
        with self.env.begin(write=True) as txn:
            v = txn.get(_p64(batch_seq), db=self.db_anchors)
            if v is None:
                raise KeyError(f"{self.path}: no batch {batch_seq}")
            rec = dataclasses.replace(BatchRecord.unpack(batch_seq, v), status=ANCHORED,
                                      ref=ref)
            txn.put(_p64(batch_seq), rec.pack(), db=self.db_anchors)
        return rec
