"""Store.prune (docs/store.md, "Pruning"): only whole anchored batches older than the threshold
whose segments have left the proof ring go, oldest first, a bounded number of leaves per call,
with their receipts, segment commitments and tree levels; nothing pending or unbatched ever does.
The store's invariants (Store.verify) hold after every call, across a reopen, and the Batcher and
the Interrogation server's OutboxIndex carry on from the pruned base.

The stores are written by the real pipeline (raw IPv4 from outside: one role-1 receipt per flow
and epoch) and anchored by the real Batcher on the in-memory ledger of test_batcher."""
import random
import struct

import pytest

import fastpath
from beatd.store import PRUNE_LEAVES, Outbox, Store
from beatd.store.evidence import EvidenceStore
from ledger_client.batcher import Batcher
from ledger_client.outbox import ANCHORED
from test_batcher import Clock, MemLedger

NODE = 7
H = "sha3-256"
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
SEG_RECORDS = 16
SEG_BYTES = 8 + 40 + 48 * SEG_RECORDS


def ipv4(src, ident):
    udp = struct.pack(">HHHH", 1000, 9, 12, 0) + b"pr" + struct.pack(">H", ident & 0xFFFF)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0,
                       src, bytes((10, 9, 0, 1))) + udp


class Router:
    """A store fed by the pipeline, one batch built (and submitted) per second of traffic."""

    def __init__(self, path, ring_segments=6, flows=12, packets=40):
        self.store = Store(path, NODE, H, ring_segments * SEG_BYTES)
        self.pipe = fastpath.Pipeline(NODE, H, join_window_ns=SEC // 1000, receipt_epoch_ns=SEC,
                                      segment_records=SEG_RECORDS, anchor_period_ns=SEC)
        self.pipe.resume(**self.store.resume_state())
        self.ledger, self.clock = MemLedger(H), Clock()
        self.batcher = Batcher(self.store, self.ledger, NODE, H, "device-key", 1.0,
                               clock=self.clock, rng=random.Random(1))
        self.flows, self.packets = flows, packets
        self.second = 0
        self.ident = 0

    def run(self, seconds):
        for _ in range(seconds):
            t = T0 + self.second * SEC
            for half in (0, 1):
                buf, desc = b"", b""
                for k in range(self.packets // 2):
                    src = bytes((10, 0, self.second % 200, (k + half) % self.flows))
                    ip = ipv4(src, self.ident)
                    self.ident += 1
                    desc += fastpath.pack_desc(t + half * SEC // 2 + k * 1000, len(buf), len(ip),
                                               len(ip), 101, 1)
                    buf += ip
                self.pipe.feed(buf, desc)
                self.store.commit(self.pipe.take())
            self.pipe.advance(t + SEC + SEC // 100)     # the epoch closes, its receipts with it
            self.pipe.close_segment()                   # the anchor period closes the segment
            self.store.commit(self.pipe.take())
            self.clock.t += 1.0
            self.batcher.tick()
            self.second += 1

    def batches(self):
        return Outbox(self.store).batches()

    def close(self):
        self.store.close()


def may_go(store, rec, cutoff):
    """The rule, from the store's own readers: anchored, older than the cutoff, segments out of
    the ring."""
    ring = store.proof_ring_status(0, 0)
    oldest = ring["oldest_seg_seq"] if ring["segments"] else store.meta()["next_seg_seq"]
    return rec.status == ANCHORED and rec.last_t_ns < cutoff and rec.seg_leaves_end <= oldest


def snapshot(store):
    return store.outbox(), store.receipts(), store.commitments(), store.segments()


def leaves_of(rec, outbox):
    return [x for x in outbox if rec.first_leaf_seq <= x[0] < rec.end_leaf_seq]


def test_only_anchored_batches_older_than_the_threshold_go(tmp_path):
    r = Router(tmp_path / "s")
    r.run(6)
    r.ledger.down = True                       # the last batches stay pending
    r.run(6)
    r.pipe.feed(*_one_more(r))                 # and some leaves in no batch at all
    r.store.commit(r.pipe.take())
    batches = r.batches()
    assert [b.status for b in batches] == [ANCHORED] * 6 + [0] * 6
    assert r.store.proof_ring_status(0, 0)["wraps"] > 0
    # pending batches whose segments have left the ring: only being pending keeps them
    oldest = r.store.proof_ring_status(0, 0)["oldest_seg_seq"]
    assert [b.batch_seq for b in batches[6:] if b.seg_leaves_end <= oldest][:2] == [6, 7]
    before = snapshot(r.store)
    threshold = 3600 * SEC
    # nothing is older than the threshold yet
    assert r.store.prune(batches[0].last_t_ns + threshold, threshold)["leaves"] == 0
    assert snapshot(r.store) == before
    # batches 0 and 1 are: exactly they go
    cutoff = batches[1].last_t_ns + 1
    assert all(may_go(r.store, b, cutoff) for b in batches[:2])
    done = r.store.prune(cutoff + threshold, threshold)
    assert done["batches"] == 2 and done["leaves"] == batches[1].end_leaf_seq
    outbox, receipts, commitments, segments = snapshot(r.store)
    assert outbox == [x for x in before[0] if x[0] >= batches[2].first_leaf_seq]
    gone = {v for rec in batches[:2] for _, t, v in leaves_of(rec, before[0]) if t == 1}
    assert gone and [x for x in before[1] if x[6] not in gone] == receipts
    seg_gone = sum(1 for rec in batches[:2] for _, t, _ in leaves_of(rec, before[0]) if t == 2)
    assert [c[0] for c in commitments] == [c[0] for c in before[2]][seg_gone:]
    assert segments == before[3]               # the ring is not touched
    assert r.store.verify() == []
    # however old: only the anchored ones, and only those whose segments left the ring
    r.store.prune(1 << 63, 0, max_leaves=1 << 20)
    kept = [b for b in batches if not may_go(r.store, b, 1 << 63)]
    assert [b.batch_seq for b in kept] == list(range(6, 12))
    assert r.store.meta()["prune_batch"] == 6
    assert r.store.outbox()[0][0] == kept[0].first_leaf_seq
    assert r.store.outbox() == [x for x in before[0] if x[0] >= kept[0].first_leaf_seq] + \
        [x for x in r.store.outbox() if x[0] >= before[0][-1][0] + 1]
    assert r.store.verify() == []
    m = r.store.meta()
    assert m["pruned_receipts"] > 0
    # the ledger is back: they are anchored, and can go in turn
    r.ledger.down = False
    r.batcher.resume()
    r.run(4)
    r.store.prune(1 << 63, 0, max_leaves=1 << 20)
    assert r.store.meta()["prune_batch"] > batches[-1].batch_seq
    assert r.store.verify() == []
    r.close()


def _one_more(r):
    ip = ipv4(bytes((10, 0, 250, 1)), 60000)
    t = T0 + r.second * SEC + 5
    return ip, fastpath.pack_desc(t, 0, len(ip), len(ip), 101, 1)


def test_batches_whose_segments_are_in_the_ring_stay(tmp_path):
    """Their anchor proofs serve the segments the ring still holds."""
    r = Router(tmp_path / "s", ring_segments=10_000)
    r.run(5)
    assert r.store.proof_ring_status(0, 0)["wraps"] == 0
    before = snapshot(r.store)
    assert r.store.prune(1 << 63, 0)["leaves"] == 0
    assert snapshot(r.store) == before
    r.close()


def test_bounded_work_per_call_and_consistent_between_calls(tmp_path):
    a, b = Router(tmp_path / "a", packets=200, flows=60), Router(tmp_path / "b", packets=200,
                                                                   flows=60)
    for x in (a, b):
        x.run(6)
    assert a.batches()[0].tree_size > 7
    calls = 0
    while True:
        done = a.store.prune(1 << 63, 0, max_leaves=7)
        assert done["leaves"] <= 7
        assert a.store.verify() == []          # also with a batch half pruned
        if not done["leaves"]:
            break
        calls += 1
    b.store.prune(1 << 63, 0, max_leaves=1 << 20)
    assert calls > len(a.batches()) and snapshot(a.store) == snapshot(b.store)
    assert a.store.meta()["outbox_base"] == b.store.meta()["outbox_base"] > 0
    assert PRUNE_LEAVES >= 1024
    a.close()
    b.close()


def test_pruning_survives_a_restart(tmp_path):
    r = Router(tmp_path / "s")
    r.run(6)
    r.store.prune(1 << 63, 0, max_leaves=1 << 20)
    pruned = {k: r.store.meta()[k] for k in ("prune_batch", "outbox_base", "pruned_segments",
                                              "pruned_records", "pruned_receipts")}
    assert all(pruned.values())
    r.close()
    # a restart: store, pipeline and batcher from what the store says
    r2 = Router(tmp_path / "s")
    r2.second = r.second
    assert {k: r2.store.meta()[k] for k in pruned} == pruned
    assert r2.store.verify() == []
    r2.run(5)
    assert [x.status for x in r2.batches()].count(ANCHORED) == len(r2.batches())
    r2.store.prune(1 << 63, 0, max_leaves=1 << 20)
    assert r2.store.meta()["prune_batch"] > pruned["prune_batch"]
    assert r2.store.verify() == []
    r2.close()


def test_the_outbox_index_starts_at_the_pruned_base(tmp_path, monkeypatch):
    from beatd.store import evidence
    monkeypatch.setattr(evidence, "SCAN_LEAVES", 8)
    r = Router(tmp_path / "s")
    r.run(5)
    early = EvidenceStore(r.store)             # indexed from leaf 0, before any pruning
    early.refresh()
    r.store.prune(1 << 63, 0, max_leaves=1 << 20)
    r.run(3)
    late = EvidenceStore(r.store)              # made after pruning: starts at the base
    outbox = r.store.outbox()
    base = r.store.meta()["outbox_base"]
    assert base > 0 and outbox[0][0] == base
    seg_leaf = {}
    k = r.store.meta()["pruned_segments"]
    for leaf, t, _ in outbox:
        if t == 2:
            seg_leaf[k] = leaf
            k += 1
    for ev_store in (early, late):
        ev_store.refresh()
        idx = ev_store.index
        assert idx.next_leaf == outbox[-1][0] + 1
        for seq, _, _, _ in r.store.segments():
            assert idx.segment_leaf(seq) == seg_leaf[seq]
        with r.store.env.begin() as txn:
            for leaf, t, v in outbox:
                if t == 1:
                    assert idx.receipt_leaf(txn, v)[0] == leaf
        assert all(x >= base for x in idx._rc_leaf)
    r.close()
