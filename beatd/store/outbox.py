"""The ledger outbox in the device's store: leaves in, batches (pending anchors + leaf proofs) out.

The store keeps the leaves in order in its ``outbox`` database (``leaf_seq`` u64 BE -> ``type(1)
value(32)``); the outbox reads them and keeps two databases of its own in the same LMDB environment
(``layout``; docs/ledger.md, "Outbox and batcher"):

``anchors``: ``batch_seq`` -> a ``BatchRecord`` (``layout.pack_batch``): ``status`` 0 = pending
(built, not yet on the ledger), 1 = anchored; ``first_leaf_seq`` and ``tree_size`` say which leaves
the batch holds; ``seg_leaves_end`` counts the segment leaves in the outbox up to the end of this
batch, which maps the next segment leaf to its ``seg_seq`` (the store writes segment leaves in
``seg_seq`` order, from 0). Anchored batches are always a prefix of the batch_seqs.

``leaf_proofs``: the batches' Merkle tree levels, ONE value per batch (``layout.levels_key``) ->
every level of the batch's tree concatenated, level 0 (the ``tree_size`` leaf hashes) first, up to
the root (``fastpath.merkle_levels``; about 64 bytes per leaf). A leaf's inclusion proof is
computed on request from its batch's levels: the batch is found by a binary search over the
``anchors`` records, the index is ``leaf_seq - first_leaf_seq``, and only the ``log2(tree_size)``
sibling hashes are read. The environment has room for exactly the layout's databases
(``layout.MAX_DBS``): the levels live under a 9-byte key, which cannot collide with the 8-byte
``leaf_seq`` keys of the former format (one proof per leaf: ``leaf_seq`` -> ``batch_seq(8)
index(8) proof``); such entries, in a store written before, are still read.

Time span of a batch (``first_t_ns``/``last_t_ns``): the min/max over its leaves of the segment
commitments' ``first_t_ns``/``last_t_ns``, of the receipts' ``epoch_ns`` and of the gap records'
``to_ns`` (when the statement was made; its ``from_ns`` may be long before, 0 for a new store). A
leaf whose time cannot be found (it should not happen) is left out of the span and logged; a batch
with no time at all gets 0, 0.

The ledger client (``ledger_client.batcher``) uses it through the interface
``ledger_client.outbox.Outbox`` and never imports this module.
"""
import dataclasses
import logging
from itertools import islice
from operator import itemgetter

from ledger_client.outbox import ANCHORED, PENDING

from .layout import (ANCHORS, COMMIT, COMMITMENTS, LEAF_GAP, LEAF_PROOFS,
                     LEAF_RECEIPT, LEAF_SEGMENT, M_NEXT_LEAF_SEQ, META, OUTBOX, PROOF_HEAD,
                     RECEIPTS, levels_key, p64,
                     pack_batch, u64, unpack_batch)

__all__ = ["Outbox"]

log = logging.getLogger("beat.ledger.outbox")


class Outbox:
    """Reads the store's leaves; keeps batches and their tree levels in ``anchors`` and
    ``leaf_proofs`` (``ledger_client.outbox.Outbox``: what the batcher uses). Made by
    ``Store.ledger_outbox()``.

    Only the batcher writes here, one process per store (two batchers on one store would be
    caught: ``write_batch`` refuses a batch that does not follow the stored ones).
    """

    def __init__(self, store):
        self.store = store
        self.env = store.env
        self.path = store.path
        self.node_id = store.node_id
        self.hash_name = store.hash_name
        self.db_outbox = store.db[OUTBOX]
        self.db_commitments = store.db[COMMITMENTS]
        self.db_receipts = store.db[RECEIPTS]
        self.db_meta = store.db[META]
        store._open_ledger_dbs(create=True)
        self.db_anchors = store.db[ANCHORS]
        self.db_proofs = store.db[LEAF_PROOFS]

    # -- reading --------------------------------------------------------------------------------

    def next_leaf_seq(self):
        """The leaf_seq the store will write next (= number of leaves ever produced)."""
        with self.env.begin() as txn:
            v = txn.get(M_NEXT_LEAF_SEQ, db=self.db_meta)
            return u64(v) if v is not None else 0

    def last_batch(self):
        """The newest batch, or ``None``."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.last():
                    return None
                return unpack_batch(u64(cur.key()), cur.value())

    def batch(self, batch_seq):
        with self.env.begin() as txn:
            v = txn.get(p64(batch_seq), db=self.db_anchors)
            return None if v is None else unpack_batch(batch_seq, v)

    def batches(self, from_seq=0):
        """Every batch from ``from_seq`` on, in batch_seq order."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.set_range(p64(from_seq)):
                    return []
                return [unpack_batch(u64(k), v) for k, v in cur]

    def first_pending(self):
        """The batch_seq of the oldest pending batch (anchored ones are a prefix), or the next."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if not cur.last():
                    return 0
                seq = u64(cur.key())
                while unpack_batch(seq, cur.value()).status == PENDING:
                    if not cur.prev():
                        return seq
                    seq = u64(cur.key())
                return seq + 1

    def leaves(self, from_seq, limit):
        """Up to ``limit`` leaves ``(leaf_seq, leaf_bytes)`` from ``from_seq``, contiguous."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db_outbox) as cur:
                if not cur.set_range(p64(from_seq)):
                    return []
                items = list(islice(cur.iternext(), limit))
        # the keys are unique and sorted: no gap iff the first and the last are where they belong
        if u64(items[0][0]) != from_seq or u64(items[-1][0]) != from_seq + len(items) - 1:
            for i, (k, _) in enumerate(items):
                if u64(k) != from_seq + i:
                    raise RuntimeError(f"{self.path}: outbox leaf {from_seq + i} is missing "
                                       f"(found {u64(k)}): the outbox has a gap")
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
                    c = txn.get(p64(seg_seq), db=self.db_commitments)
                    found = c is not None and bytes(c[:32]) == value
                    if not found:          # the k-th segment leaf should be seg_seq k: search
                        for k, v in txn.cursor(db=self.db_commitments):
                            if bytes(v[:32]) == value:
                                c, found = v, True
                                break
                    if found:
                        _, _, first, last = COMMIT.unpack(c)
                        times += (first, last)
                    else:
                        log.warning("%s: outbox leaf %d: no segment commitment with this S; "
                                    "left out of the batch's time span", self.path, leaf_seq)
                    seg_seq += 1
                elif kind == LEAF_GAP:
                    db_gaps = self.store.gap_db()
                    g = None if db_gaps is None else txn.get(p64(leaf_seq), db=db_gaps)
                    if g is not None:
                        to_ns = u64(bytes(g[8:16]))
                        times += (to_ns, to_ns)
                    else:
                        log.warning("%s: outbox leaf %d: no gap record; left out of the batch's "
                                    "time span", self.path, leaf_seq)
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
                    times += (u64(lo), u64(hi))
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
            hi = u64(cur.key())
            last = unpack_batch(hi, cur.value())
            if leaf_seq >= last.end_leaf_seq:
                return None
            if leaf_seq >= last.first_leaf_seq:
                return last
            lo = 0
            while lo < hi:                 # the last batch with first_leaf_seq <= leaf_seq
                mid = (lo + hi + 1) >> 1
                if not cur.set_key(p64(mid)):
                    raise RuntimeError(f"{self.path}: batch {mid} is missing from anchors")
                if unpack_batch(mid, cur.value()).first_leaf_seq <= leaf_seq:
                    lo = mid
                else:
                    hi = mid - 1
            if not cur.set_key(p64(lo)):
                return None
            rec = unpack_batch(lo, cur.value())
            return rec if rec.first_leaf_seq <= leaf_seq < rec.end_leaf_seq else None

    def proof(self, leaf_seq):
        """``(batch_seq, index, proof)`` for a batched leaf, or ``None``: the proof is computed
        from the batch's stored levels (O(log n) reads)."""
        from ledger_client.merkle import levels_proof
        with self.env.begin(buffers=True) as txn:
            rec = self._batch_of(txn, leaf_seq)
            if rec is None:
                return None
            index = leaf_seq - rec.first_leaf_seq
            levels = txn.get(levels_key(rec.batch_seq), db=self.db_proofs)
            if levels is not None:
                return rec.batch_seq, index, levels_proof(levels, rec.tree_size, index)
            v = txn.get(p64(leaf_seq), db=self.db_proofs)       # the former per-leaf format
            if v is None:
                return None
            v = bytes(v)
        batch_seq, index = PROOF_HEAD.unpack_from(v)
        body = v[PROOF_HEAD.size:]
        return batch_seq, index, [body[o:o + 32] for o in range(0, len(body), 32)]

    def levels(self, batch_seq):
        """The stored levels of a batch's tree (all levels concatenated), or ``None``."""
        with self.env.begin() as txn:
            v = txn.get(levels_key(batch_seq), db=self.db_proofs)
            return None if v is None else bytes(v)

    # -- writing --------------------------------------------------------------------------------

    def write_batch(self, rec, levels):
        """Store a new pending batch and its tree's levels in one transaction.

        ``levels``: the batch's tree levels (``fastpath.merkle_levels``; a list of bytes, one per
        level, or already concatenated), for ``rec.tree_size`` leaves. Refused (``RuntimeError``,
        nothing written) unless the batch follows the stored ones exactly; ``ValueError`` when the
        levels do not have the sizes of a tree of ``rec.tree_size`` leaves.
        """
        from ledger_client.merkle import level_sizes
        with self.env.begin(write=True) as txn:
            with txn.cursor(db=self.db_anchors) as cur:
                if cur.last():
                    prev = unpack_batch(u64(cur.key()), cur.value())
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
            txn.put(p64(rec.batch_seq), pack_batch(rec), db=self.db_anchors, append=True)
            txn.put(levels_key(rec.batch_seq), blob, db=self.db_proofs)

    def mark_anchored(self, batch_seq, ref=None):
        with self.env.begin(write=True) as txn:
            v = txn.get(p64(batch_seq), db=self.db_anchors)
            if v is None:
                raise KeyError(f"{self.path}: no batch {batch_seq}")
            rec = dataclasses.replace(unpack_batch(batch_seq, v), status=ANCHORED,
                                      ref=ref)
            txn.put(p64(batch_seq), pack_batch(rec), db=self.db_anchors)
        return rec
