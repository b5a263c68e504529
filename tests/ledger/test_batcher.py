"""ledger_client.batcher / outbox on a real beatd.store.Store, against an in-memory backend with the
SPEC's anchor semantics (idempotent per (node_id, batch_seq), a gap is OrderError, another root for
an existing batch_seq is ConflictError) that can be switched down (Unavailable) or lose its
answers. Checked: every leaf in exactly one anchored batch, batch_seqs 0..k without a gap, each
stored proof verifies with merkle.verify_inclusion against its anchor's root (and fails when a byte
changes), outages and restarts lose and double nothing."""
import dataclasses
import random
import struct

import lmdb
import pytest

import fastpath
from beatd.store import Store
from fastpath.output import NONE, STAT_NAMES, Output
from ledger_client import merkle
from ledger_client.batcher import Batcher
from ledger_client.errors import ConflictError, OrderError, PermissionDenied, Unavailable
from beatd.store.layout import ANCHORS_DB, LEAF_PROOFS_DB
from ledger_client.outbox import ANCHORED, PENDING

NODE = 7
PERIOD = 10.0


class MemLedger:
    """The Backend protocol's anchor part, in memory, with SPEC semantics."""

    def __init__(self, hash_name):
        self.hash_name = hash_name
        self.store = {}
        self.down = False
        self.lose_answer = 0        # record the anchor, then raise Unavailable (an ack lost)
        self.calls = 0
        self.fail_with = None       # an exception to raise (ConflictError, ...)

    def anchor(self, a, *, signer):
        self.calls += 1
        assert signer == "device-key"
        if self.down:
            raise Unavailable(f"anchor {a.node_id}/{a.batch_seq}: ledger unreachable")
        if self.fail_with is not None:
            raise self.fail_with
        key = (a.node_id, a.batch_seq)
        if key in self.store:
            if self.store[key].content() != a.content():
                raise ConflictError(f"anchor {key}: another root for an existing batch_seq")
            return "exists"
        if a.batch_seq != self.next_batch_seq(a.node_id):
            raise OrderError(f"anchor {key}: expected batch_seq {self.next_batch_seq(a.node_id)}")
        self.store[key] = dataclasses.replace(a, ref=f"mem#{len(self.store)}")
        if self.lose_answer:
            self.lose_answer -= 1
            raise Unavailable(f"anchor {key}: the answer was lost")
        return "anchored"

    def get_anchor(self, node_id, batch_seq):
        if self.down:
            raise Unavailable("get_anchor: ledger unreachable")
        return self.store.get((node_id, batch_seq))

    def anchors(self, node_id=None, from_seq=0):
        return [a for (n, s), a in sorted(self.store.items())
                if (node_id is None or n == node_id) and s >= from_seq]

    def next_batch_seq(self, node_id):
        return sum(1 for n, _ in self.store if n == node_id)


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def time(self):
        return self.t


class Feed:
    """Commits consistent Outputs (segments of 3 records, receipts) to a store, as a resumed
    pipeline would; remembers each leaf's expected time: (first_t, last_t) of its segment or
    (epoch, epoch) of its receipt."""

    def __init__(self, store, hash_name, seg_records=3):
        self.store, self.h, self.seg_records = store, hash_name, seg_records
        state = store.resume_state()
        self.seg_seq = state["next_seg_seq"]
        self.open = [state["open_records"][o:o + 48]
                     for o in range(0, len(state["open_records"]), 48)]
        # continue after what the store holds (a Feed on a reopened store)
        self.t = max([1_700_000_000_000_000_000] + [c[4] + 1 for c in store.commitments()])
        self.epoch = max([self.t] + [r[0] for r in store.receipts()])
        self.leaf_times = {}        # leaf value -> (first_t, last_t)
        self.rng = random.Random(f"{store.path}/{self.seg_seq}/{self.epoch}")

    def commit(self, n_records, n_receipts=0):
        segments = []
        for _ in range(n_records):
            pd = self.rng.randbytes(16)
            self.open.append(struct.pack(">QQQ", self.t, 0, NONE) + pd + b"\x01" * 8)
            self.t += self.rng.randrange(1, 5_000_000)
            if len(self.open) == self.seg_records:
                data = b"".join(self.open)
                s = fastpath.segment_value(self.h, NODE, self.seg_seq, data)
                segments.append((self.seg_seq, len(self.open), s, data))
                ts = [struct.unpack_from(">Q", r)[0] for r in self.open]
                self.leaf_times[b"\x02" + s] = (min(ts), max(ts))
                self.seg_seq += 1
                self.open = []
        receipts = []
        for _ in range(n_receipts):
            self.epoch += 1_000_000_000
            src, dst = self.rng.randbytes(16), self.rng.randbytes(16)
            r = fastpath.receipt_value(self.h, NODE, 1, src, dst, self.epoch, 3, 300)
            receipts.append(struct.pack(">QB16s16sQQ", self.epoch, 1, src, dst, 3, 300) + r)
            self.leaf_times[b"\x01" + r] = (self.epoch, self.epoch)
        stats = dict.fromkeys(STAT_NAMES, 0)
        made = len(segments) * self.seg_records
        stats.update(records=made, segments=len(segments), receipts=len(receipts))
        counters = struct.pack(">QQQQQQ", 0, NONE, made, 100 * made, 1, 2) if made else b""
        out = Output(b"", segments, b"".join(sorted(receipts)), counters, stats, self.seg_seq,
                     b"".join(self.open), b"", 0)
        self.store.commit(out)


@pytest.fixture(params=["sha3-256", "blake2b-256"])
def h(request):
    return request.param


def open_store(path, h):
    return Store(path, NODE, h, 1 << 22)


def make(store, ledger, clock, h, **kw):
    kw.setdefault("rng", random.Random(1))
    return Batcher(store, ledger, NODE, h, "device-key", PERIOD, clock=clock, **kw)


def check_all_anchored(store, ledger, h, feed=None):
    """Every leaf in exactly one anchored batch; batch_seqs 0..k; every proof verifies."""
    leaves = store.outbox()
    anchors = ledger.anchors(NODE)
    assert [a.batch_seq for a in anchors] == list(range(len(anchors)))
    assert sum(a.tree_size for a in anchors) == len(leaves)
    b = Batcher(store, ledger, NODE, h, "device-key", PERIOD)
    seen = set()
    for leaf_seq, kind, value in leaves:
        got = b.proof(leaf_seq)
        assert got is not None, leaf_seq
        anchor, index, proof = got
        on_ledger = ledger.get_anchor(NODE, anchor.batch_seq)
        assert on_ledger.content() == anchor.content()
        assert anchor.ref == on_ledger.ref
        assert (anchor.batch_seq, index) not in seen
        seen.add((anchor.batch_seq, index))
        leaf = bytes([kind]) + value
        assert merkle.verify_inclusion(h, leaf, index, on_ledger.tree_size, proof, on_ledger.root)
        if feed is not None:
            first, last = feed.leaf_times[leaf]
            assert anchor.first_t_ns <= first <= last <= anchor.last_t_ns
    # each anchor's root is the tree of exactly its leaves, in order; its span is theirs
    start = 0
    for a in anchors:
        mine = [bytes([k]) + v for _, k, v in leaves[start:start + a.tree_size]]
        assert merkle.root(h, mine) == a.root
        if feed is not None:
            assert a.first_t_ns == min(feed.leaf_times[x][0] for x in mine)
            assert a.last_t_ns == max(feed.leaf_times[x][1] for x in mine)
        start += a.tree_size
    st = b.stats()
    assert st["leaves_waiting"] == 0 and st["pending_anchors"] == 0
    assert st["last_anchored_batch_seq"] == (len(anchors) - 1 if anchors else None)
    return anchors


def test_every_leaf_in_exactly_one_anchor(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        assert b.tick() == {"built": None, "submitted": []}      # the period has not passed
        for i in range(6):
            feed.commit(10 + 7 * i, n_receipts=i)
            clock.t += PERIOD
            r = b.tick()
            assert r["built"] == i and r["submitted"] == [i]
        clock.t += PERIOD
        assert b.tick() == {"built": None, "submitted": []}       # nothing waiting: no anchor
        anchors = check_all_anchored(store, ledger, h, feed)
        assert len(anchors) == 6 and ledger.calls == 6
        assert store.verify() == []
        st = b.stats()
        assert st["retries"] == 0 and st["last_error"] is None and st["batches_built"] == 6


def test_outage_loses_and_doubles_nothing(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(9, 2)
        clock.t += PERIOD
        assert b.tick()["submitted"] == [0]
        ledger.down = True
        for i in range(8):                      # new leaves keep coming during the outage
            feed.commit(5 + i, 1)
            clock.t += PERIOD
            r = b.tick()
            assert r["built"] == i + 1 and r["submitted"] == []
        st = b.stats()
        assert st["pending_anchors"] == 8 and st["last_anchored_batch_seq"] == 0
        assert st["retries"] >= 1 and "Unavailable" in st["last_error"]
        assert st["leaves_waiting"] == 0
        assert len(ledger.store) == 1
        ledger.down = False
        clock.t += 31                           # past any backoff (max 30 s)
        r = b.tick()
        assert r["submitted"] == list(range(1, 9))
        check_all_anchored(store, ledger, h, feed)
        assert len(ledger.store) == 9


def test_backoff_is_exponential_with_jitter_and_capped(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        Feed(store, h).commit(6)
        b = make(store, ledger, clock, h, base_backoff_s=1.0, max_backoff_s=30.0)
        ledger.down = True
        clock.t += PERIOD
        b.tick()
        delays = []
        for _ in range(12):
            wait = b.stats()["next_retry_in_s"]
            delays.append(wait)
            calls = ledger.calls
            clock.t += wait * 0.99
            b.tick()
            assert ledger.calls == calls        # still backing off: no call
            clock.t += wait * 0.02
            b.tick()
            assert ledger.calls == calls + 1    # retried once
        for i, d in enumerate(delays):
            nominal = min(30.0, 2.0 ** i)
            assert nominal / 2 <= d <= nominal, (i, d)
        assert max(delays) <= 30.0 and len(set(delays)) > 3
        assert b.stats()["retries"] == 13
        ledger.down = False
        clock.t += 30
        assert b.tick()["submitted"] == [0]
        assert b.stats()["next_retry_in_s"] == 0.0


def test_lost_answer_is_resubmitted_and_counts_as_done(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(12, 3)
        ledger.lose_answer = 1
        clock.t += PERIOD
        assert b.tick()["submitted"] == []      # on the ledger, but we do not know it
        assert len(ledger.store) == 1 and b.stats()["pending_anchors"] == 1
        clock.t += 31
        assert b.tick()["submitted"] == [0]     # "exists" = done
        check_all_anchored(store, ledger, h, feed)


def test_restart_continues_where_the_last_left_off(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    path = tmp_path / "s"
    with open_store(path, h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(10, 1)
        clock.t += PERIOD
        assert b.tick()["submitted"] == [0]
        ledger.down = True
        feed.commit(7, 2)
        clock.t += PERIOD
        assert b.tick()["built"] == 1
        feed.commit(4)                          # committed, not batched yet
        leaf_times = feed.leaf_times
    ledger.down = False
    with open_store(path, h) as store:          # a new process
        feed = Feed(store, h)
        feed.leaf_times = leaf_times
        b = make(store, ledger, clock, h)
        st = b.stats()
        assert st["pending_anchors"] == 1 and st["next_batch_seq"] == 2
        assert st["leaves_waiting"] > 0
        r = b.tick()                            # the period since batch 1 has not passed
        assert r == {"built": None, "submitted": [1]}
        feed.commit(5, 1)
        clock.t += PERIOD
        assert b.tick() == {"built": 2, "submitted": [2]}
        anchors = check_all_anchored(store, ledger, h, feed)
        assert len(anchors) == 3
        assert store.stats().get("receipt_duplicate", 0) == 0


def test_restart_after_anchored_but_not_marked(tmp_path, h):
    """A crash after the ledger took the anchor but before the store said so: "exists"."""
    ledger, clock = MemLedger(h), Clock()
    path = tmp_path / "s"
    with open_store(path, h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(8, 2)
        clock.t += PERIOD
        b.build()
        rec = b.outbox.last_batch()
        ledger.anchor(rec.anchor(NODE), signer="device-key")      # it reached the ledger
    with open_store(path, h) as store:
        b = make(store, ledger, clock, h)
        assert b.stats()["pending_anchors"] == 1
        assert b.tick()["submitted"] == [0]
        check_all_anchored(store, ledger, h, feed)
        assert b.outbox.batch(0).status == ANCHORED


def test_two_batchers_cannot_double_a_batch(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b1, b2 = make(store, ledger, clock, h), make(store, ledger, clock, h)
        feed.commit(9)
        assert b1.build().batch_seq == 0
        feed.commit(9)
        assert b2.build().batch_seq == 1        # it reads the store, not its own memory
        with pytest.raises(RuntimeError, match="does not follow"):
            b1.outbox.write_batch(b1.outbox.batch(1), [])
        b1.submit()
        b2.submit()
        check_all_anchored(store, ledger, h, feed)


@pytest.mark.parametrize("error", [ConflictError("anchor: another root"),
                                   OrderError("anchor: gap"),
                                   PermissionDenied("anchor: not this node's key")])
def test_real_errors_stop_submission(tmp_path, error):
    h = "sha3-256"
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(6, 1)
        ledger.fail_with = error
        clock.t += PERIOD
        assert b.tick()["submitted"] == []
        st = b.stats()
        assert st["halted"] and type(error).__name__ in st["last_error"]
        calls = ledger.calls
        for _ in range(3):                      # building goes on, submitting does not
            feed.commit(3)
            clock.t += PERIOD
            assert b.tick()["submitted"] == []
        assert ledger.calls == calls and b.stats()["pending_anchors"] == 4
        ledger.fail_with = None
        b.resume()
        assert b.tick()["submitted"] == [0, 1, 2, 3]
        check_all_anchored(store, ledger, h, feed)


def test_conflict_with_the_ledger_is_detected(tmp_path):
    """The ledger already holds another root for (node, 0) (e.g. the store was wiped)."""
    h = "sha3-256"
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "a", h) as other:
        Feed(other, h).commit(5)
        ob = make(other, ledger, clock, h)
        clock.t += PERIOD
        assert ob.tick()["submitted"] == [0]
    with open_store(tmp_path / "b", h) as store:
        f = Feed(store, h)
        f.rng = random.Random(99)
        f.commit(7)
        b = make(store, ledger, clock, h)
        clock.t += PERIOD
        assert b.tick()["submitted"] == []
        assert "ConflictError" in b.stats()["last_error"] and b.stats()["halted"]


def test_max_leaves_splits_and_triggers_early(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h, seg_records=1)
        b = make(store, ledger, clock, h, max_leaves=4)
        feed.commit(10)                         # 10 leaves waiting, period not passed
        assert b.tick()["built"] == 0           # >= max_leaves waiting: build now
        assert b.tick()["built"] == 1
        assert b.tick()["built"] is None        # 2 waiting: wait for the period
        clock.t += PERIOD
        assert b.tick()["built"] == 2
        anchors = check_all_anchored(store, ledger, h, feed)
        assert [a.tree_size for a in anchors] == [4, 4, 2]


def test_changed_byte_in_stored_proof_fails(tmp_path, h):
    """The batch's levels are stored once (leaf_proofs, key b"L" || batch_seq) and each proof is
    computed from them: a changed byte in any stored node of a leaf's proof, or in the stored
    first_leaf_seq its index is derived from, makes that proof fail."""
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(30, 5)
        clock.t += PERIOD
        b.tick()
        leaves = store.outbox()
        assert len(leaves) == 15
        db = store.env.open_db(LEAF_PROOFS_DB)
        db_anchors = store.env.open_db(ANCHORS_DB)
        sizes = merkle.level_sizes(len(leaves))
        offsets = [32 * sum(sizes[:k]) for k in range(len(sizes))]
        for leaf_seq, kind, value in leaves:
            anchor, index, proof = b.proof(leaf_seq)
            leaf = bytes([kind]) + value
            assert merkle.verify_inclusion(h, leaf, index, anchor.tree_size, proof, anchor.root)
            key = b"L" + struct.pack(">Q", anchor.batch_seq)
            with store.env.begin(db=db) as txn:
                original = bytes(txn.get(key))
            assert len(original) == 32 * sum(sizes)
            # the stored nodes this leaf's proof reads: its sibling on every level
            positions, i = [], index
            for k in range(len(sizes) - 1):
                if i ^ 1 < sizes[k]:
                    positions += range(offsets[k] + 32 * (i ^ 1), offsets[k] + 32 * (i ^ 1) + 32)
                i >>= 1
            assert len(positions) == 32 * len(proof)
            for pos in positions:                    # every byte of the stored proof
                bad = bytearray(original)
                bad[pos] ^= 0x04
                with store.env.begin(write=True, db=db) as txn:
                    txn.put(key, bytes(bad))
                anchor2, index2, proof2 = b.proof(leaf_seq)
                assert not merkle.verify_inclusion(h, leaf, index2, anchor.tree_size, proof2,
                                                   anchor.root), (leaf_seq, pos)
            with store.env.begin(write=True, db=db) as txn:
                txn.put(key, original)
            akey = struct.pack(">Q", anchor.batch_seq)
            with store.env.begin(db=db_anchors) as txn:
                rec = bytes(txn.get(akey))
            for pos in range(57, 65):                # the stored first_leaf_seq (-> the index)
                bad = bytearray(rec)
                bad[pos] ^= 0x01
                with store.env.begin(write=True, db=db_anchors) as txn:
                    txn.put(akey, bytes(bad))
                got = b.proof(leaf_seq)
                assert got is None or not merkle.verify_inclusion(
                    h, leaf, got[1], anchor.tree_size, got[2], anchor.root), (leaf_seq, pos)
            with store.env.begin(write=True, db=db_anchors) as txn:
                txn.put(akey, rec)
        check_all_anchored(store, ledger, h, feed)


def test_proof_of_an_unbatched_leaf_is_none_and_pending_anchor_has_no_ref(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        assert b.proof(0) is None
        feed.commit(6)
        assert b.proof(0) is None
        ledger.down = True
        clock.t += PERIOD
        b.tick()
        anchor, index, proof = b.proof(1)
        assert anchor.ref is None and anchor.batch_seq == 0 and index == 1
        assert b.outbox.batch(0).status == PENDING
        ledger.down = False
        clock.t += 31
        b.tick()
        assert b.proof(1)[0].ref == "mem#0"


def test_with_a_real_pipeline(tmp_path, h):
    """Leaves produced by fastpath.Pipeline from raw IPv4 frames, committed as beatd does."""
    ledger, clock = MemLedger(h), Clock()
    rng = random.Random(5)
    with open_store(tmp_path / "s", h) as store:
        p = fastpath.Pipeline(NODE, h, segment_records=16, receipt_epoch_ns=100_000_000,
                              anchor_period_ns=1_000_000_000)
        p.resume(**store.resume_state())
        b = make(store, ledger, clock, h)
        t = 1_700_000_000_000_000_000
        for round_ in range(6):
            buf, desc = bytearray(), bytearray()
            for _ in range(200):
                src, dst = bytes([10, 0, 0, rng.randrange(1, 5)]), bytes([10, 0, 1, 1])
                payload = rng.randbytes(8)
                hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload),
                                  rng.randrange(1 << 16), 0, 64, 17, 0, src, dst)
                frame = hdr + payload
                desc += fastpath.pack_desc(t, len(buf), len(frame), len(frame), 101)
                buf += frame
                t += rng.randrange(1, 3_000_000)
            p.feed(bytes(buf), bytes(desc))
            store.commit(p.take())
            if round_ == 2:
                ledger.down = True
            if round_ == 4:
                ledger.down = False
                clock.t += 31
            clock.t += PERIOD
            b.tick()
        p.flush()
        store.commit(p.take())
        clock.t += PERIOD
        b.tick()
        assert store.verify() == []
        kinds = {k for _, k, _ in store.outbox()}
        assert kinds == {1, 2}
        anchors = check_all_anchored(store, ledger, h)
        assert len(anchors) >= 5 and len(store.outbox()) > 50
        assert b.stats()["retries"] >= 2
        commits = {s: (first, last) for _, s, _, first, last in store.commitments()}
        epochs = {r: ep for ep, _, _, _, _, _, r in store.receipts()}
        start = 0
        leaves = store.outbox()
        for a in anchors:
            ts = []
            for _, k, v in leaves[start:start + a.tree_size]:
                ts += list(commits[v]) if k == 2 else [epochs[v]]
            assert (a.first_t_ns, a.last_t_ns) == (min(ts), max(ts))
            start += a.tree_size


def test_bad_parameters(tmp_path):
    h = "sha3-256"
    with open_store(tmp_path / "s", h) as store:
        for kw in ({"anchor_period_s": 0}, {"max_leaves": 0}):
            args = dict(anchor_period_s=PERIOD) | kw
            with pytest.raises(ValueError):
                Batcher(store, MemLedger(h), NODE, h, "k", **args)
        with pytest.raises(ValueError):
            Batcher(store, MemLedger(h), NODE + 1, h, "k", PERIOD)
        with pytest.raises(ValueError):
            Batcher(store, MemLedger("blake2b-256"), NODE, h, "k", PERIOD)
        with pytest.raises(ValueError):
            Batcher(store, MemLedger(h), NODE, "md5", "k", PERIOD)


def test_uses_only_two_extra_databases(tmp_path):
    """The store opens its environment with max_dbs = len(DB_NAMES): anchors, leaf_proofs (and
    gap_records, with the first gap record) fit; the store's own databases are untouched."""
    h = "sha3-256"
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        Feed(store, h).commit(9, 2)
        before = store.outbox()
        b = make(store, ledger, clock, h)
        clock.t += PERIOD
        b.tick()
        assert store.outbox() == before and store.verify() == []
        with store.env.begin() as txn:
            names = sorted(bytes(k) for k, _ in txn.cursor())
        assert names == sorted([b"anchors", b"capture_gaps", b"commitments", b"counters",
                                b"leaf_proofs", b"meta", b"outbox", b"proofs", b"receipts"])
        store.record_capture([(1, 2, 3, 1, "eth0")])     # the gap records' database: the last
        with store.env.begin() as txn:
            assert b"gap_records" in {bytes(k) for k, _ in txn.cursor()}
        with pytest.raises(lmdb.DbsFullError):
            store.env.open_db(b"one_more", create=True)


def test_levels_stored_once_per_batch_and_former_per_leaf_proofs_still_read(tmp_path):
    """One leaf_proofs value per batch (its levels, ~64 B per leaf); a store written in the
    former format (one proof per leaf, key leaf_seq) still answers proof()."""
    h = "sha3-256"
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(30, 5)
        clock.t += PERIOD
        b.tick()
        leaves = store.outbox()
        n = len(leaves)
        db = store.env.open_db(LEAF_PROOFS_DB)
        with store.env.begin(db=db) as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        assert [k for k, _ in items] == [b"L" + struct.pack(">Q", 0)]
        assert len(items[0][1]) == 32 * sum(merkle.level_sizes(n))
        assert b.outbox.levels(0) == items[0][1]
        tree = merkle.Tree(h, [bytes([k]) + v for _, k, v in leaves])
        with store.env.begin(write=True, db=db) as txn:
            txn.delete(items[0][0])
            for i, (seq, _, _) in enumerate(leaves):
                txn.put(struct.pack(">Q", seq),
                        struct.pack(">QQ", 0, i) + b"".join(tree.proof(i)))
        for i, (seq, kind, value) in enumerate(leaves):
            anchor, index, proof = b.proof(seq)
            assert (index, proof) == (i, tree.proof(i))
            assert merkle.verify_inclusion(h, bytes([kind]) + value, index, anchor.tree_size,
                                           proof, anchor.root)
        assert b.proof(n) is None


def test_retry_now_skips_the_backoff_but_not_a_halt(tmp_path, h):
    """The public retry (the daemon's last attempt at shutdown): the next submit() tries at once,
    whatever the backoff; a halted batcher stays halted until resume()."""
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h)
        feed.commit(6, 1)
        ledger.down = True
        assert b.build() is not None and b.submit() == []
        st = b.stats()
        assert st["failures"] == 1 and st["next_retry_in_s"] > 0
        ledger.down = False
        calls = ledger.calls
        assert b.submit() == [] and ledger.calls == calls       # backing off: no attempt
        b.retry_now()
        assert b.submit() == [0] and b.stats()["failures"] == 0
        feed.commit(3)
        ledger.fail_with = ConflictError("another root")
        assert b.build() is not None and b.submit() == [] and b.halted is not None
        ledger.fail_with = None
        b.retry_now()
        calls = ledger.calls
        assert b.submit() == [] and ledger.calls == calls       # halted: no attempt
        b.resume()
        assert b.submit() == [1]
        check_all_anchored(store, ledger, h, feed)


def test_build_takes_fewer_leaves_when_asked(tmp_path, h):
    ledger, clock = MemLedger(h), Clock()
    with open_store(tmp_path / "s", h) as store:
        feed = Feed(store, h)
        b = make(store, ledger, clock, h, max_leaves=100)
        feed.commit(30, 4)
        waiting = b.stats()["leaves_waiting"]
        rec = b.build(max_leaves=3)
        assert rec.tree_size == 3 and b.max_leaves == 100
        assert b.stats()["leaves_waiting"] == waiting - 3
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match="max_leaves"):
                b.build(max_leaves=bad)
        assert b.build().tree_size == waiting - 3
        error = b.failed("tick", OSError("no room"))
        assert error == "tick: OSError: no room" == b.stats()["last_error"]
