"""Reading evidence out of a device's store for the Interrogation Protocol's answers.

``EvidenceStore(store)`` reads records, segments, receipts, counters, the proof ring's coverage and
the capture gaps of the daemon's own ``Store`` (one LMDB environment per process) for the gRPC
servicer (``beatd.interrogation``). Every read is a short read transaction -- one per chunk of
about 1 MiB, one per few thousand keys when scanning -- so a slow or stalled client never pins old
pages for long and never blocks the writer (LMDB readers do not block the writer; the transaction
is closed before a chunk is handed to gRPC). The store's format is unchanged; two in-memory
indexes are kept, grown incrementally at each request:

- ``OutboxIndex``: the outbox leaf of every segment (``seg_seq`` -> ``leaf_seq``: the k-th segment
  leaf is seg_seq k) and of every receipt (by ``R``), from one scan of the outbox that continues
  where it stopped, from the store's pruned base (8 bytes per segment, trimmed below the proof
  ring; 16 bytes per receipt, trimmed below the pruned base);
- ``AnchorIndex``: where each anchored batch starts in the outbox and its tree size, so that a
  leaf's inclusion path is read from its batch's stored levels (``beatd.store.outbox``) in the
  chunk's own transaction.

Only batches marked anchored (on the ledger) give an anchor ref; a leaf in a batch still pending,
or in none, travels as not anchored (``batch_seq = NONE``).
"""
import bisect
import logging
import threading
from array import array

import fastpath
from beat_rpc import evidence as ev
from ledger_client.merkle import levels_proof
from ledger_client.outbox import ANCHORED

from .errors import StoreError
from .layout import (COMMIT, COMMITMENTS, COUNTER, COUNTER_KEY, COUNTERS, LEAF_RECEIPT,
                     LEAF_SEGMENT, M_NEXT_SEG_SEQ, M_OPEN_RECORDS, M_OUTBOX_BASE,
                     M_PROOF_RING_OLDEST_SEQ, M_PROOF_RING_OLDEST_T_NS, M_PROOF_RING_SEGMENTS,
                     M_PROOF_RING_WRAPS, M_PRUNED_SEGMENTS, META, OUTBOX, PROOFS, RECEIPT_HEAD,
                     RECEIPT_VAL, RECEIPTS, SEG_HEAD, levels_key, p64, pack_leaf, u64,
                     unpack_batch)

__all__ = ["EvidenceStore", "AnswerPlan", "OutboxIndex", "AnchorIndex", "SCAN_KEYS", "SCAN_LEAVES"]

log = logging.getLogger("beatd.interrogation")

SCAN_KEYS = 4096                     # keys per read transaction when scanning
SCAN_LEAVES = 65536                  # outbox leaves per read transaction when indexing


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
        base = txn.get(M_OUTBOX_BASE, db=self.db_meta)
        if base is None:
            return 0, 0
        return u64(base), u64(txn.get(M_PRUNED_SEGMENTS, db=self.db_meta))

    def _drop_receipts_below(self, base):
        n = bisect.bisect_left(self._rc_leaf, base)
        if n:
            del self._rc_leaf[:n]
            del self._rc_prefix[:8 * n]

    def refresh(self, keep_from_seg=None):
        """Index the leaves written since the last call; drop segment entries below
        ``keep_from_seg`` (the proof ring's oldest seg_seq) when many are there, and the entries of
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
                    if not cur.set_range(p64(self.next_leaf)):
                        break
                    n = 0
                    for k, v in cur:
                        leaf = u64(k)
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
            # segments below the proof ring are trimmed only SCAN_LEAVES behind it: an answer that
            # planned its index on an older proof ring still finds its segments' leaves
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
        want = pack_leaf(LEAF_RECEIPT, bytes(R))
        with self._lock:
            blob = self._rc_prefix
            for start in ((hint, 0) if hint else (0,)):
                i = blob.find(prefix, start * 8)
                while i != -1:
                    if i % 8 == 0:
                        pos = i // 8
                        leaf = self._rc_leaf[pos]
                        v = txn.get(p64(leaf), db=self.db)
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
            if not cur.set_key(p64(len(self.starts))):
                return
            for k, v in cur:
                rec = unpack_batch(u64(k), v)
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
    __slots__ = ("selected", "first_seq", "count", "proof_ring", "gaps")

    def __init__(self, selected, first_seq, count, proof_ring, gaps):
        self.selected = selected
        self.first_seq = first_seq
        self.count = count
        self.proof_ring = proof_ring
        self.gaps = gaps


class EvidenceStore:
    """Evidence from a device store (``beatd.store.Store``, the daemon's own object: one LMDB
    environment per process), read in short transactions."""

    def __init__(self, store):
        self.store = store
        self.path = store.path
        self.env = store.env
        self.db = store.db
        self.outbox = store.ledger_outbox()   # opens (creates if missing) anchors, leaf_proofs
        self.index = OutboxIndex(self.env, self.db[OUTBOX], self.path, self.db[META])
        self.anchors = AnchorIndex(self.env, self.outbox.db_anchors)
        self.wrapped_during_answer = 0        # segments dropped by the proof ring while being answered

    def refresh(self):
        """Bring the indexes up to the store's latest commit."""
        with self.env.begin(db=self.db[META]) as txn:
            oldest = txn.get(M_PROOF_RING_OLDEST_SEQ)
        self.index.refresh(u64(oldest) if oldest is not None else None)
        self.anchors.refresh()

    # -- anchor refs --

    def _anchor_ref(self, txn, leaf_seq):
        if leaf_seq is None:
            return ev.UNANCHORED
        loc = self.anchors.locate(leaf_seq)
        if loc is None:
            return ev.UNANCHORED
        batch_seq, index, size = loc
        levels = txn.get(levels_key(batch_seq), db=self.outbox.db_proofs)
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
            meta = self.db[META]
            ring_segments = u64(txn.get(M_PROOF_RING_SEGMENTS, db=meta))
            oldest_t = u64(txn.get(M_PROOF_RING_OLDEST_T_NS, db=meta)) if ring_segments else 0
            next_seg = u64(txn.get(M_NEXT_SEG_SEQ, db=meta))
            newest_t = 0
            if ring_segments:
                c = txn.get(p64(next_seg - 1), db=self.db[COMMITMENTS])
                if c is not None:
                    newest_t = COMMIT.unpack(c)[3]
            anchored = self.anchors.anchored_segments()
            open_records = txn.get(M_OPEN_RECORDS, db=meta)
            open_min = fastpath.t_range(open_records)[0] if open_records else None
        until = self._anchored_until(anchored, open_min)
        short = self.store.proof_ring_status(now_ns, threshold_ns)["short"]
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
            with self.env.begin(db=self.db[COMMITMENTS]) as txn:
                cur = txn.cursor()
                if seq == 0:
                    if cur.set_key(p64(anchored - 1)):
                        newest = COMMIT.unpack(cur.value())[3]
                    seq = anchored
                if not cur.set_range(p64(seq)):
                    break
                n = 0
                for k, v in cur:
                    _, count, first, _ = COMMIT.unpack(v)
                    if count and (earliest is None or first < earliest):
                        earliest = first
                    n += 1
                    if n >= SCAN_KEYS:
                        seq = u64(k) + 1
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
            with self.env.begin(db=self.db[PROOFS], buffers=True) as txn:
                read = 0
                while i < len(selected) and read < budget:
                    seq, count = selected[i]
                    v = txn.get(p64(seq))
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
        proof ring is left out (and counted); a chunk left empty by that is skipped, unless last.
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
                    v = txn.get(p64(seq), db=self.db[PROOFS])
                    if v is None:              # the proof ring wrapped past it since the selection
                        self.wrapped_during_answer += 1
                        log.warning("%s: segment %d left the proof ring while being answered",
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

    def proof_ring_fields(self, threshold_ns):
        """The coverage's proof ring fields now (all but ``index_first_seq``): a dict."""
        with self.env.begin() as txn:
            meta = self.db[META]
            ring_oldest = u64(txn.get(M_PROOF_RING_OLDEST_SEQ, db=meta))
            next_seg = u64(txn.get(M_NEXT_SEG_SEQ, db=meta))
            ring_segments = u64(txn.get(M_PROOF_RING_SEGMENTS, db=meta))
            wraps = u64(txn.get(M_PROOF_RING_WRAPS, db=meta))
            oldest_t = u64(txn.get(M_PROOF_RING_OLDEST_T_NS, db=meta)) if ring_segments else 0
            newest_t = 0
            if ring_segments:
                c = txn.get(p64(next_seg - 1), db=self.db[COMMITMENTS])
                if c is not None:
                    newest_t = COMMIT.unpack(c)[3]
            open_records = txn.get(M_OPEN_RECORDS, db=meta)
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
        the window, or ``next_seg_seq``), the proof ring fields and the capture gaps of the window.
        The index's entries are read by ``index_entries`` once the limits passed."""
        proof_ring = self.proof_ring_fields(threshold_ns)
        seq, end = proof_ring["ring_oldest_seq"], proof_ring["next_seg_seq"]
        overlapping = []
        after = None                           # the first held segment starting after to_ns
        while seq < end:
            with self.env.begin(db=self.db[COMMITMENTS]) as txn:
                cur = txn.cursor()
                if not cur.set_range(p64(seq)):
                    break
                n = 0
                for k, v in cur:
                    seq = u64(k)
                    if seq >= end:
                        break
                    _, count, first, last = COMMIT.unpack(v)
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
        return AnswerPlan(selected, first_seq, count, proof_ring, gaps)

    def index_entries(self, first_seq, count):
        """``[(seg_seq, count, first_t_ns, last_t_ns, S, leaf_seq or None)]`` of segments
        first_seq .. first_seq + count - 1, from the commitments (or, for one whose commitment
        is gone, the proof ring), in short read transactions. The outbox leaf is taken now: the
        index's anchor refs are read from it when the coverage chunk is made."""
        out = []
        seq, end = first_seq, first_seq + count
        while seq < end:
            with self.env.begin() as txn:
                n = 0
                while seq < end and n < SCAN_KEYS:
                    v = txn.get(p64(seq), db=self.db[COMMITMENTS])
                    if v is not None:
                        S, c, first, last = COMMIT.unpack(v)
                    else:
                        p = txn.get(p64(seq), db=self.db[PROOFS])
                        if p is None:
                            log.warning("%s: segment %d has neither commitment nor proofs; left "
                                        "out of the index", self.path, seq)
                            seq += 1
                            n += 1
                            continue
                        c, S = u64(p[:8]), bytes(p[8:SEG_HEAD])
                        first, last = fastpath.t_range(bytes(p[SEG_HEAD:]))
                    out.append((seq, c, first, last, bytes(S), self.index.segment_leaf(seq)))
                    seq += 1
                    n += 1
        return out

    def coverage_chunks(self, plan, entries, sent, make_body):
        """Yield the coverage chunk bodies of an answer: the proof ring fields, the index entries
        (``sent``: the seg_seqs sent in full) about 1 MiB per chunk, the capture gaps in the last
        one. ``make_body(k, coverage, last)`` builds the k-th coverage chunk's body. Anchor refs
        are read in a short transaction per ``SCAN_KEYS`` entries, closed before a yield."""
        fixed = dict(plan.proof_ring, index_first_seq=plan.first_seq)
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
                    # its proof left the index or the store while answering (the proof ring wrapped,
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
        """``[(seg_seq, count)]`` of the named segments the proof ring holds, in seg_seq order."""
        out = []
        seqs = list(seg_seqs)
        for i in range(0, len(seqs), SCAN_KEYS):
            with self.env.begin(db=self.db[PROOFS], buffers=True) as txn:
                for seq in seqs[i:i + SCAN_KEYS]:
                    v = txn.get(p64(seq))
                    if v is not None:
                        out.append((seq, u64(bytes(v[:8]))))
        return out

    # -- gap records --

    def gap_records(self, from_ns, to_ns):
        """The gap records overlapping [from_ns, to_ns] (docs/gap-records.md), each with its
        anchor ref, sorted as an answer holds them (``ev.gap_record_key``), each statement once."""
        from beat_common.gap_record import unpack_gap_record
        found = self.store.gap_records(from_ns, to_ns)
        out = {}
        with self.env.begin() as txn:
            for leaf_seq, rec in found:
                f, t, n, reason, iface = unpack_gap_record(rec)
                g = ev.GapRecord(f, t, n, reason, iface, self._anchor_ref(txn, leaf_seq))
                key = ev.gap_record_key(g)
                if key not in out or (not out[key].anchor.anchored and g.anchor.anchored):
                    out[key] = g
        return [out[k] for k in sorted(out)]

    # -- counters and receipts --

    def counters(self):
        with self.env.begin(db=self.db[COUNTERS]) as txn:
            return [ev.Counter(*COUNTER_KEY.unpack(k), *COUNTER.unpack(v))
                    for k, v in txn.cursor()]

    def receipts(self, from_ns, to_ns, src, dst):
        """The receipts of flow (src, dst) with epoch_ns in [from_ns, to_ns], sorted by
        (epoch_ns, role), with their anchor refs."""
        flow = bytes(src) + bytes(dst)
        found = []                              # (key, value)
        # each epoch present in the window: its two keys of this flow looked up, not every
        # flow's keys read (a key is epoch || role || src || dst)
        epoch = from_ns
        while epoch is not None:
            with self.env.begin(db=self.db[RECEIPTS]) as txn:
                cur = txn.cursor()
                for _ in range(SCAN_KEYS):      # epochs per read transaction
                    if not cur.set_range(p64(epoch)):
                        epoch = None
                        break
                    e = u64(cur.key()[:8])
                    if e > to_ns:
                        epoch = None
                        break
                    for role in ev.ROLES:
                        k = RECEIPT_HEAD.pack(e, role) + flow
                        v = txn.get(k)
                        if v is not None:
                            found.append((k, v))
                    epoch = e + 1 if e < to_ns else None
                    if epoch is None:
                        break
        out = []
        hint = 0
        with self.env.begin() as txn:
            for k, v in found:
                epoch, role = RECEIPT_HEAD.unpack_from(k)
                packets, nbytes, R = RECEIPT_VAL.unpack(v)
                leaf, hint = self.index.receipt_leaf(txn, R, hint)
                out.append(ev.Receipt(epoch, role, bytes(src), bytes(dst), packets, nbytes, R,
                                      self._anchor_ref(txn, leaf)))
        return out
