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

``leaf_proofs``: the batches' Merkle tree levels, ONE value per batch: key ``b"L" || batch_seq``
(u64 BE) -> every level of the batch's tree concatenated, level 0 (the ``tree_size`` leaf hashes)
first, up to the root (``fastpath.merkle_levels``; 32 bytes per node, about 64 bytes per leaf).
A leaf's inclusion proof is computed on request from its batch's levels: the batch is found by a
binary search over the ``anchors`` records (their ``first_leaf_seq``/``tree_size``), the index is
``leaf_seq - first_leaf_seq``, and only the ``log2(tree_size)`` sibling hashes are read. The store
opens its environment with ``max_dbs`` = its own databases + 2, so no third database fits: the
levels live in the ``leaf_proofs`` database under a 9-byte key, which cannot collide with the
8-byte ``leaf_seq`` keys of the former format (one proof per leaf: ``leaf_seq`` u64 BE ->
``batch_seq(8) index(8) proof``); such entries, in a store written before, are still read.

Time span of a batch (``first_t_ns``/``last_t_ns``): the min/max over its leaves of the segment
commitments' ``first_t_ns``/``last_t_ns`` (``commitments`` db) and of the receipts' ``epoch_ns``
(``receipts`` db). A leaf whose time cannot be found (it should not happen) is left out of the
span and logged; a batch with no time at all gets 0, 0.
"""
import dataclasses
import logging
import struct
from itertools import islice
from operator import itemgetter
from typing import Optional

from .types import Anchor

log = logging.getLogger("beat.ledger.outbox")

ANCHORS_DB = b"anchors"
LEAF_PROOFS_DB = b"leaf_proofs"
PENDING, ANCHORED = 0, 1
LEAF_RECEIPT, LEAF_SEGMENT = 1, 2

_U64 = struct.Struct(">Q")
_REC = struct.Struct(">BQ32sQQQQd")
_PROOF_HEAD = struct.Struct(">QQ")          # the former per-leaf format (still read)
_LEVELS_KEY = b"L"
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
    """Reads the store's leaves; keeps batches and their tree levels in ``anchors`` and
    ``leaf_proofs``.

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
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_outbox) as cur:
                if not cur.set_range(_p64(from_seq)):
                    return []
                items = list(islice(cur.iternext(), limit))
        # the keys are unique and sorted: no gap iff the first and the last are where they belong
        if _u64(items[0][0]) != from_seq or _u64(items[-1][0]) != from_seq + len(items) - 1:
            for i, (k, _) in enumerate(items):
                if _u64(k) != from_seq + i:
                    raise RuntimeError(f"{self.path}: outbox leaf {from_seq + i} is missing "
                                       f"(found {_u64(k)}): the outbox has a gap")
        return list(zip(range(from_seq, from_seq + len(items)), map(itemgetter(1), items)))

    def span(self, leaves, seg_leaves_before):
        """``(first_t_ns, last_t_ns, seg_leaves_end)`` of these leaves (see the module doc)."""
        times = []
        seg_seq = seg_leaves_before
        receipts = {leaf[1:]: leaf_seq for leaf_seq, leaf in leaves if leaf[0] == LEAF_RECEIPT}
        with self.env.begin() as txn:
            for leaf_seq, leaf in leaves:
                kind, value = leaf[0], leaf[1:]
                if kind == LEAF_RECEIPT:
                    continue
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
                else:
                    log.warning("%s: outbox leaf %d has type %d", self.path, leaf_seq, kind)
            if receipts:
                # receipts are keyed by epoch first (u64 BE: byte order is time order); a batch's
                # are the newest: scan from the end, in chunks, until every R was seen
                pending = set(receipts)
                lo = hi = None
                with txn.cursor(db=self.db_receipts) as cur:
                    if cur.last():
                        it = cur.iterprev()
                        while pending:
                            chunk = list(islice(it, max(len(pending), 256)))
                            if not chunk:
                                break
                            hits = [(k[:8], r) for k, v in chunk if (r := v[16:48]) in pending]
                            if not hits:
                                continue
                            pending.difference_update(r for _, r in hits)
                            ks = [k for k, _ in hits]
                            kmin, kmax = min(ks), max(ks)
                            lo = kmin if lo is None or kmin < lo else lo
                            hi = kmax if hi is None or kmax > hi else hi
                if lo is not None:
                    times += (_u64(lo), _u64(hi))
                for r in pending:
                    log.warning("%s: outbox leaf %d: no receipt with this R; left out of the "
                                "batch's time span", self.path, receipts[r])
        if not times:
            return 0, 0, seg_seq
        return min(times), max(times), seg_seq

    def _batch_of(self, txn, leaf_seq):
        """The batch holding ``leaf_seq`` (``BatchRecord``), or ``None``: a binary search over
        the batch_seqs (dense from 0; ``first_leaf_seq`` grows with them)."""
        with txn.cursor(db=self.db_anchors) as cur:
            if not cur.last():
                return None
            hi = _u64(cur.key())
            last = BatchRecord.unpack(hi, cur.value())
            if leaf_seq >= last.end_leaf_seq:
                return None
            if leaf_seq >= last.first_leaf_seq:
                return last
            lo = 0
            while lo < hi:                 # the last batch with first_leaf_seq <= leaf_seq
                mid = (lo + hi + 1) >> 1
                if not cur.set_key(_p64(mid)):
                    raise RuntimeError(f"{self.path}: batch {mid} is missing from anchors")
                if BatchRecord.unpack(mid, cur.value()).first_leaf_seq <= leaf_seq:
                    lo = mid
                else:
                    hi = mid - 1
            if not cur.set_key(_p64(lo)):
                return None
            rec = BatchRecord.unpack(lo, cur.value())
            return rec if rec.first_leaf_seq <= leaf_seq < rec.end_leaf_seq else None

    def proof(self, leaf_seq):
        """``(batch_seq, index, proof)`` for a batched leaf, or ``None``: the proof is computed
        from the batch's stored levels (O(log n) reads)."""
        from .merkle import levels_proof
        with self.env.begin(buffers=True) as txn:
            rec = self._batch_of(txn, leaf_seq)
            if rec is None:
                return None
            index = leaf_seq - rec.first_leaf_seq
            levels = txn.get(_LEVELS_KEY + _p64(rec.batch_seq), db=self.db_proofs)
            if levels is not None:
                return rec.batch_seq, index, levels_proof(levels, rec.tree_size, index)
            v = txn.get(_p64(leaf_seq), db=self.db_proofs)       # the former per-leaf format
            if v is None:
                return None
            v = bytes(v)
        batch_seq, index = _PROOF_HEAD.unpack_from(v)
        body = v[_PROOF_HEAD.size:]
        return batch_seq, index, [body[o:o + 32] for o in range(0, len(body), 32)]

    def levels(self, batch_seq):
        """The stored levels of a batch's tree (all levels concatenated), or ``None``."""
        with self.env.begin() as txn:
            v = txn.get(_LEVELS_KEY + _p64(batch_seq), db=self.db_proofs)
            return None if v is None else bytes(v)

    # -- writing --------------------------------------------------------------------------------

    def write_batch(self, rec, levels):
        """Store a new pending batch and its tree's levels in one transaction.

        ``levels``: the batch's tree levels (``fastpath.merkle_levels``; a list of bytes, one per
        level, or already concatenated), for ``rec.tree_size`` leaves. Refused (``RuntimeError``,
        nothing written) unless the batch follows the stored ones exactly; ``ValueError`` when the
        levels do not have the sizes of a tree of ``rec.tree_size`` leaves.
        """
        from .merkle import level_sizes
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
            blob = levels if isinstance(levels, (bytes, bytearray)) else b"".join(levels)
            want = 32 * sum(level_sizes(rec.tree_size))
            if rec.tree_size < 1 or len(blob) != want:
                raise ValueError(f"{self.path}: batch {rec.batch_seq}: {len(blob)} bytes of levels "
                                 f"for {rec.tree_size} leaves (expected {want})")
            txn.put(_p64(rec.batch_seq), rec.pack(), db=self.db_anchors, append=True)
            txn.put(_LEVELS_KEY + _p64(rec.batch_seq), blob, db=self.db_proofs)

    def mark_anchored(self, batch_seq, ref=None):
        with self.env.begin(write=True) as txn:
            v = txn.get(_p64(batch_seq), db=self.db_anchors)
            if v is None:
                raise KeyError(f"{self.path}: no batch {batch_seq}")
            rec = dataclasses.replace(BatchRecord.unpack(batch_seq, v), status=ANCHORED,
                                      ref=ref)
            txn.put(_p64(batch_seq), rec.pack(), db=self.db_anchors)
        return rec
