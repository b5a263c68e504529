"""``verify(store)``: every stored S recomputed and the store's invariants checked."""
import fastpath
from fastpath.output import OPEN_RECEIPT_SIZE

from ledger_client.outbox import ANCHORED

from beat_common.gap_record import gap_value

from .layout import (COMMIT, COMMITMENTS, COUNTER, COUNTERS, LEAF_GAP, LEAF_RECEIPT,
                     LEAF_SEGMENT, M_NEXT_LEAF_SEQ, M_NEXT_SEG_SEQ, M_OPEN_RECEIPTS,
                     M_OPEN_RECORDS, M_PROOF_RING_BYTES, M_PROOF_RING_OLDEST_SEQ,
                     M_PROOF_RING_OLDEST_T_NS, M_PROOF_RING_SEGMENTS, M_PROOF_RING_WRAPS, M_STATS,
                     OUTBOX, PROOFS, PRUNE_META, RECEIPT_VAL, RECEIPTS, RECORD_SIZE, SEG_HEAD, T_NS,
                     u64, unpack_batch)


def verify(store):
    """A list of problems (empty: the store keeps its rules): the proof ring, the commitments,
    the outbox, pruning and the statistics against each other."""
    problems = []
    store._open_ledger_dbs()
    with store._read() as txn:
        m = store._meta(txn)
        segs = [(u64(k), bytes(v)) for k, v in txn.cursor(db=store.db[PROOFS])]
        commits = {u64(k): COMMIT.unpack(v)
                   for k, v in txn.cursor(db=store.db[COMMITMENTS])}
        leaves = [(u64(k), bytes(v)) for k, v in txn.cursor(db=store.db[OUTBOX])]
        gap_db = store.gap_db()
        gap_records = {} if gap_db is None else {u64(k): bytes(v)
                                                 for k, v in txn.cursor(db=gap_db)}
        receipts = [(bytes(k), RECEIPT_VAL.unpack(v))
                    for k, v in txn.cursor(db=store.db[RECEIPTS])]
        counter_packets = sum(COUNTER.unpack(v)[0]
                              for v in txn.cursor(db=store.db[COUNTERS]).iternext(values=True,
                                                                                  keys=False))
        batches = []
        if store.db_anchors is not None:
            batches = [unpack_batch(u64(k), v)
                       for k, v in txn.cursor(db=store.db_anchors)]
    nxt = m[M_NEXT_SEG_SEQ]
    pruned = {name: m.get(name.encode(), 0) for name in PRUNE_META}
    base, pseg = pruned["outbox_base"], pruned["pruned_segments"]
    # proof ring
    ring_bytes = 0
    for i, (seq, v) in enumerate(segs):
        if i and seq != segs[i - 1][0] + 1:
            problems.append(f"proofs: segment {segs[i - 1][0]} is followed by {seq}")
        count, value, records = u64(v[:8]), v[8:SEG_HEAD], v[SEG_HEAD:]
        ring_bytes += 8 + len(v)
        if len(records) != count * RECORD_SIZE:
            problems.append(f"proofs[{seq}]: count {count} but {len(records)} bytes of records")
        s = fastpath.segment_value(store.hash_name, store.node_id, seq, records)
        if bytes(s) != value:
            problems.append(f"proofs[{seq}]: S does not recompute from its records")
        c = commits.get(seq)
        if c is None:
            problems.append(f"proofs[{seq}]: no commitment")
        else:
            ts = [t for (t,) in T_NS.iter_unpack(records)]
            if c != (value, count, min(ts, default=0), max(ts, default=0)):
                problems.append(f"commitments[{seq}] does not match proofs[{seq}]")
    if segs:
        if segs[-1][0] != nxt - 1:
            problems.append(f"proofs: newest segment {segs[-1][0]}, next_seg_seq {nxt}")
        if segs[0][0] != m[M_PROOF_RING_OLDEST_SEQ]:
            problems.append(f"meta: ring_oldest_seq {m['ring_oldest_seq']}, oldest stored "
                            f"{segs[0][0]}")
        if commits.get(segs[0][0], (0, 0, None))[2] != m[M_PROOF_RING_OLDEST_T_NS]:
            problems.append("meta: ring_oldest_t_ns is not the oldest segment's first t_ns")
    if ring_bytes != m[M_PROOF_RING_BYTES] or len(segs) != m[M_PROOF_RING_SEGMENTS]:
        problems.append(f"meta: ring holds {len(segs)} segments, {ring_bytes} bytes; meta says "
                        f"{m['ring_segments']}, {m['ring_bytes']}")
    if ring_bytes > store.ring_size:
        problems.append(f"proofs: {ring_bytes} bytes, more than ring_size {store.ring_size}")
    if m[M_PROOF_RING_WRAPS] + len(segs) != nxt:
        problems.append(f"meta: {m['ring_wraps']} segments dropped + {len(segs)} held != "
                        f"{nxt} made")
    # commitments: every segment made since the pruned ones, pruned_segments..next-1
    if sorted(commits) != list(range(pseg, nxt)):
        problems.append(f"commitments: {len(commits)} held for segments {pseg}..{nxt - 1}")
    # outbox: contiguous leaves from the pruned base, one per commitment and per receipt
    if [seq for seq, _ in leaves] != list(range(base, m[M_NEXT_LEAF_SEQ])):
        problems.append(f"outbox: leaves are not {base}..{m['next_leaf_seq'] - 1} without a "
                        "gap")
    seg_leaves, rc_leaves = {}, {}
    for seq, v in leaves:
        if v[0] == LEAF_GAP and len(v) == 33:
            rec = gap_records.pop(seq, None)
            if rec is None:
                problems.append(f"outbox[{seq}]: a gap leaf without its gap record")
            elif gap_value(store.hash_name, store.node_id, rec) != v[1:]:
                problems.append(f"gap_records[{seq}]: its G is not the outbox leaf's")
            continue
        target = {LEAF_SEGMENT: seg_leaves, LEAF_RECEIPT: rc_leaves}.get(v[0])
        if target is None or len(v) != 33:
            problems.append(f"outbox[{seq}]: bad leaf type {v[0]} or length {len(v)}")
            continue
        target[v[1:]] = target.get(v[1:], 0) + 1
    for seq, c in commits.items():
        if seg_leaves.pop(c[0], 0) != 1:
            problems.append(f"commitments[{seq}]: not exactly one outbox leaf")
    if seg_leaves:
        problems.append(f"outbox: {len(seg_leaves)} segment leaves with no commitment")
    for key, (_, _, r) in receipts:
        if rc_leaves.pop(r, 0) != 1:
            problems.append(f"receipts[{key.hex()}]: not exactly one outbox leaf")
    if rc_leaves:
        problems.append(f"outbox: {len(rc_leaves)} receipt leaves with no receipt")
    if gap_records:
        problems.append(f"gap_records: {len(gap_records)} record(s) without their outbox leaf "
                        f"(first at leaf_seq {min(gap_records)})")
    # pruning: only leaves of anchored batches, a prefix of them, with the segments they held
    for rec in batches:
        if rec.first_leaf_seq >= base:
            break
        if rec.status != ANCHORED:
            problems.append(f"outbox: leaves {rec.first_leaf_seq}..{base - 1} pruned, but "
                            f"batch {rec.batch_seq} holding some is not anchored")
        if rec.end_leaf_seq <= base and rec.batch_seq >= pruned["prune_batch"]:
            problems.append(f"meta: prune_batch {pruned['prune_batch']}, but batch "
                            f"{rec.batch_seq} is pruned whole")
    if base and (not batches or batches[-1].end_leaf_seq < base):
        problems.append(f"meta: outbox_base {base} is past the last batch")
    if segs and segs[0][0] < pseg:
        problems.append(f"proofs: segment {segs[0][0]} held, but segments below {pseg} were "
                        "pruned")
    # counts
    stats = m[M_STATS]
    records_made = (pruned["pruned_records"] + sum(c[1] for c in commits.values())
                    + len(m[M_OPEN_RECORDS]) // RECORD_SIZE)
    if stats.get("records", 0) != records_made:
        problems.append(f"stats: {stats.get('records')} records released, segments hold "
                        f"{records_made} (pruned ones included)")
    if counter_packets != stats.get("records", 0):
        problems.append(f"counters: {counter_packets} packets, {stats.get('records')} records")
    if stats.get("segments", 0) != nxt:
        problems.append(f"stats: {stats.get('segments')} segments, {nxt} made")
    if stats.get("receipts", 0) != (len(receipts) + stats.get("receipt_duplicate", 0)
                                    + pruned["pruned_receipts"]):
        problems.append(f"stats: {stats.get('receipts')} receipts, {len(receipts)} stored, "
                        f"{pruned['pruned_receipts']} pruned")
    if len(m[M_OPEN_RECORDS]) % RECORD_SIZE or len(m[M_OPEN_RECEIPTS]) % OPEN_RECEIPT_SIZE:
        problems.append("meta: open segment or open receipts of a bad length")
    return problems
