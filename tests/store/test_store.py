"""beatd.store: the LMDB stores (proof ring, commitments, counters, receipts, outbox, meta)."""
import struct

import pytest

import fastpath
from beatd.store import (Store, StoreCorruptError, StoreError, StoreFullError, StoreMismatchError)
from fastpath.output import NONE, STAT_NAMES, Output

H = "sha3-256"
NODE = 5
SEG_BYTES = lambda n: 8 + 40 + 48 * n   # noqa: E731  (a proofs entry: key, count, S, records)


def rec(t, prev=0, nxt=NONE, pd=b"\x11" * 16, ft=b"\x22" * 8):
    return struct.pack(">QQQ", t, prev, nxt) + pd + ft


class Gen:
    """Builds consistent Outputs, like a pipeline with segment_records records per segment."""

    def __init__(self, seg_seq=0, segment_records=4, node_id=NODE, t=1_000_000_000):
        self.seg_seq = seg_seq
        self.segment_records = segment_records
        self.node_id = node_id
        self.t = t
        self.open = []

    def output(self, n_records, receipts=(), pair=(0, NONE), t_step=1_000_000, closed_before=0):
        segments = []
        records = []
        first = self.t
        for _ in range(n_records):
            r = rec(self.t, *pair)
            self.t += t_step
            records.append(r)
            self.open.append(r)
            if len(self.open) == self.segment_records:
                data = b"".join(self.open)
                segments.append((self.seg_seq, len(self.open),
                                 fastpath.segment_value(H, self.node_id, self.seg_seq, data), data))
                self.seg_seq += 1
                self.open = []
        stats = dict.fromkeys(STAT_NAMES, 0)
        stats.update(records=n_records, segments=len(segments), receipts=len(receipts),
                     frames=n_records, ip=n_records, ingress=n_records, ingress_only=n_records)
        counters = b""
        if n_records:
            counters = struct.pack(">QQQQQQ", *pair, n_records, 100 * n_records, first, self.t - t_step)
        rc = b"".join(
            struct.pack(">QB16s16sQQ", ep, role, src, dst, pk, by)
            + fastpath.receipt_value(H, self.node_id, role, src, dst, ep, pk, by)
            for ep, role, src, dst, pk, by in sorted(receipts))
        return Output(b"".join(records), segments, rc, counters, stats, self.seg_seq,
                      b"".join(self.open), b"", closed_before)


def open_store(path, ring_size=1 << 20, **kw):
    return Store(path, NODE, H, ring_size, **kw)


def test_fresh_store_is_empty_and_consistent(tmp_path):
    with open_store(tmp_path / "s") as s:
        assert s.verify() == []
        assert s.resume_state() == {"next_seg_seq": 0, "open_records": b"", "open_receipts": b"",
                                    "closed_before": 0}
        assert list(s.iter_records()) == [] and s.counters() == {} and s.outbox() == []
        st = s.proof_ring_status(10**18, 1)
        assert st["segments"] == 0 and st["wraps"] == 0 and not st["short"]
        assert st["open_records"] == 0 and st["open_oldest_t_ns"] is None


def test_commit_and_read_back(tmp_path):
    g = Gen()
    with open_store(tmp_path / "s") as s:
        out = g.output(10)
        s.commit(out)
        assert s.verify() == []
        segs = s.segments()
        assert [x[0] for x in segs] == [0, 1] and all(x[1] == 4 for x in segs)
        assert b"".join(s.iter_records()) == out.records
        assert s.resume_state()["next_seg_seq"] == 2
        assert s.resume_state()["open_records"] == out.records[8 * 48:]
        assert [(seq, typ, v) for seq, typ, v in s.outbox()] == [(0, 2, segs[0][2]), (1, 2, segs[1][2])]
        assert s.counters() == {(0, NONE): (10, 1000, 1_000_000_000, 1_009_000_000)}
        assert s.stats()["records"] == 10
        # the two records of the open segment: counted, the older one's time given
        st = s.proof_ring_status(10**18, 1)
        open_t = [struct.unpack_from(">Q", out.records, 48 * i)[0] for i in (8, 9)]
        assert st["open_records"] == 2 and st["open_oldest_t_ns"] == min(open_t)


def test_ring_wrap(tmp_path):
    g = Gen(segment_records=4)
    ring = 3 * SEG_BYTES(4)             # holds three segments
    with open_store(tmp_path / "s", ring_size=ring) as s:
        s.commit(g.output(12))          # 3 segments: full, no wrap
        st = s.proof_ring_status(g.t, 10**12)
        assert st["wraps"] == 0 and st["segments"] == 3 and not st["short"]
        oldest = st["oldest_t_ns"]
        for i in range(5):
            s.commit(g.output(4))       # one segment each: the oldest goes
            st = s.proof_ring_status(g.t, 10**12)
            assert st["bytes"] <= ring and st["segments"] == 3
            assert st["wraps"] == i + 1 and st["oldest_seg_seq"] == i + 1
            assert st["oldest_t_ns"] > oldest
            oldest = st["oldest_t_ns"]
            assert s.verify() == []
        assert [x[0] for x in s.segments()] == [5, 6, 7]
        assert len(s.commitments()) == 8                 # commitments outlive the ring
        assert len([leaf for leaf in s.outbox() if leaf[1] == 2]) == 8
        # short: the ring wrapped and covers less than the threshold
        covered = g.t - st["oldest_t_ns"]
        assert s.proof_ring_status(g.t, covered + 1)["short"]
        assert not s.proof_ring_status(g.t, covered)["short"]
        assert st["oldest_t_ns"] == s.commitments()[5][3]     # first t_ns of segment 5


def test_ring_never_holds_more_than_ring_size(tmp_path):
    g = Gen(segment_records=10)
    ring = SEG_BYTES(10) + 100
    with open_store(tmp_path / "s", ring_size=ring) as s:
        for _ in range(7):
            s.commit(g.output(23))
            assert s.proof_ring_status(g.t, 1)["bytes"] <= ring
            assert s.verify() == []


def test_persistence_across_reopen(tmp_path):
    g = Gen(segment_records=3)
    rc = [(0, 1, b"\x01" * 16, b"\x02" * 16, 3, 300), (0, 2, b"\x03" * 16, b"\x04" * 16, 1, 40)]
    with open_store(tmp_path / "s") as s:
        s.commit(g.output(7, receipts=rc, closed_before=1_000_000_000))
        before = (s.commitments(), s.outbox(), s.receipts(), s.counters(), s.resume_state(),
                  s.stats(), list(s.iter_records()))
    with open_store(tmp_path / "s") as s:
        assert (s.commitments(), s.outbox(), s.receipts(), s.counters(), s.resume_state(),
                s.stats(), list(s.iter_records())) == before
        assert s.verify() == []
        # outbox: the two segments then the two receipts, in the order produced
        assert [leaf[1] for leaf in s.outbox()] == [2, 2, 1, 1]
        assert s.resume_state()["closed_before"] == 1_000_000_000


def test_counters_add_up_across_restarts(tmp_path):
    g = Gen()
    for i in range(3):
        with open_store(tmp_path / "s") as s:
            g.seg_seq = s.resume_state()["next_seg_seq"]
            s.commit(g.output(5))
            s.commit(g.output(2, pair=(7, 0)))
    with open_store(tmp_path / "s") as s:
        c = s.counters()
        assert c[(0, NONE)][0] == 15 and c[(0, NONE)][1] == 1500
        assert c[(7, 0)][0] == 6
        assert c[(0, NONE)][2] == 1_000_000_000            # first t_ns of the very first batch
        assert s.stats()["records"] == 21
        assert s.verify() == []


def test_receipt_key_seen_again_keeps_the_first(tmp_path):
    # flush() can re-open an epoch it closed; the store keeps one receipt (one leaf) per key and
    # closes the epoch for good so that a resumed pipeline counts such packets late instead
    g = Gen()
    key = (2_000_000_000, 1, b"\x01" * 16, b"\x02" * 16)
    with open_store(tmp_path / "s") as s:
        s.commit(g.output(1, receipts=[key + (1, 10)]))
        s.commit(g.output(1, receipts=[key + (2, 20)]))
        assert [r[4:6] for r in s.receipts()] == [(1, 10)]
        assert [leaf[1] for leaf in s.outbox()] == [1]
        assert s.stats()["receipt_duplicate"] == 1
        assert s.resume_state()["closed_before"] > 2_000_000_000
        assert s.verify() == []


def test_out_of_order_segment_is_refused_and_nothing_written(tmp_path):
    g = Gen()
    with open_store(tmp_path / "s") as s:
        s.commit(g.output(4))
        before = (s.meta(), s.outbox())
        g.seg_seq = 0                   # a pipeline that was not resumed
        with pytest.raises(StoreCorruptError, match="segment 0 does not follow the stored ones"):
            s.commit(g.output(4))
        assert (s.meta(), s.outbox()) == before and s.verify() == []


def test_wrong_node_or_hash_refused(tmp_path):
    with open_store(tmp_path / "s"):
        pass
    with pytest.raises(StoreMismatchError, match="belongs to node_id 5, not 6"):
        Store(tmp_path / "s", 6, H, 1 << 20)
    with pytest.raises(StoreMismatchError, match="hash sha3-256, not blake2b-256"):
        Store(tmp_path / "s", NODE, "blake2b-256", 1 << 20)


def test_map_full_is_a_store_error_and_keeps_what_was_committed(tmp_path):
    g = Gen(segment_records=100)
    path = tmp_path / "s"
    with open_store(path, ring_size=1 << 30, map_size=256 << 10) as s:
        s.commit(g.output(250))
        before = (s.segments(), s.commitments(), s.outbox(), s.counters(), s.meta())
        with pytest.raises(StoreFullError) as e:
            s.commit(g.output(20_000))      # ~1 MB of records: does not fit in 256 KiB
        assert isinstance(e.value, StoreError)
        assert str(path) in str(e.value) and "map_size" in str(e.value)
        assert (s.segments(), s.commitments(), s.outbox(), s.counters(), s.meta()) == before
        assert s.verify() == []
    with open_store(path, ring_size=1 << 30, map_size=256 << 10) as s:
        assert s.segments() == before[0] and s.verify() == []


def test_not_an_lmdb_store(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "data.mdb").write_bytes(b"this is not lmdb" * 512)
    with pytest.raises(StoreError) as e:
        open_store(d)
    assert str(d) in str(e.value)


@pytest.mark.parametrize("sync", ["always", "never", "periodic"])
def test_sync_modes(tmp_path, sync):
    g = Gen()
    with open_store(tmp_path / "s", sync=sync, sync_interval_s=0.0) as s:
        s.commit(g.output(9))
    with open_store(tmp_path / "s") as s:
        assert s.stats()["records"] == 9 and s.verify() == []


def test_verify_finds_tampering(tmp_path):
    g = Gen()
    with open_store(tmp_path / "s") as s:
        s.commit(g.output(8))
        with s.env.begin(write=True) as txn:
            key = struct.pack(">Q", 1)
            v = bytearray(txn.get(key, db=s.db["proofs"]))
            v[-1] ^= 1
            txn.put(key, bytes(v), db=s.db["proofs"])
        problems = s.verify()
        assert any("proofs[1]: S does not recompute" in p for p in problems)


def test_with_the_pipeline(tmp_path):
    """The real pipeline's Outputs, committed and resumed across a restart."""
    frames = []
    for i in range(300):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, i, 0, 64, 17, 0, bytes([10, 0, 0, i % 7]),
                         bytes([10, 1, 0, 1])) + struct.pack(">HHHH", 1000 + i, 53, 8, 0)
        frames.append((1_700_000_000_000_000_000 + i * 7_000_000, ip))
    buf = b"".join(f for _, f in frames)
    descs, off = [], 0
    for t, f in frames:
        descs.append(fastpath.pack_desc(t, off, len(f), len(f), 101))
        off += len(f)
    total = 0
    for half in (slice(0, 150), slice(150, 300)):
        with Store(tmp_path / "s", 3, H, 1 << 20) as s:
            p = fastpath.Pipeline(3, H, segment_records=16)
            p.resume(**s.resume_state())
            p.feed(buf, b"".join(descs[half]))
            s.commit(p.take())
            p.flush()
            s.commit(p.take())
            total += p.totals()["records"]
            assert s.verify() == []
    with Store(tmp_path / "s", 3, H, 1 << 20) as s:
        assert len(list(s.iter_records())) == total == 300
        assert sum(c[0] for c in s.counters().values()) == 300


# -- capture gaps -----------------------------------------------------------------------------------

def test_capture_gaps_recorded_merged_and_read_by_window(tmp_path):
    from beatd.store import GAP_CAPTURE_STOPPED as STOPPED, GAP_KERNEL_DROPS as DROPS
    with open_store(tmp_path / "s") as s:
        assert s.capture_gaps() == [] and s.capture_alive_t_ns() is None
        assert s.capture_gap_status() == {"count": 0, "last": None}
        s.record_capture([(100, 200, 5, DROPS, "any"), (50, 60, 0, STOPPED, "")], alive_t_ns=210)
        assert s.capture_alive_t_ns() == 210
        # contiguous or overlapping drops on the same interface extend the gap (frames added);
        # another interface or reason is a gap of its own
        s.record_capture([(200, 250, 3, DROPS, "any"), (240, 260, 1, DROPS, "eth1")])
        s.record_capture([(230, 300, 2, DROPS, "any")], alive_t_ns=300)
        assert s.capture_gaps() == [(50, 60, 0, STOPPED, ""), (100, 300, 10, DROPS, "any"),
                                    (240, 260, 1, DROPS, "eth1")]
        # a later, separate episode on "any" is a new gap
        s.record_capture([(400, 410, 4, DROPS, "any")])
        assert s.capture_gaps(255, 399) == [(100, 300, 10, DROPS, "any"),
                                            (240, 260, 1, DROPS, "eth1")]
        assert s.capture_gaps(301, 399) == []
        assert s.capture_gaps(410, 410) == [(400, 410, 4, DROPS, "any")]
        st = s.capture_gap_status()
        assert st["count"] == 4 and st["last"] == {"from_ns": 400, "to_ns": 410,
                                                   "frames_dropped": 4, "reason": "kernel drops",
                                                   "interface": "any"}
        with pytest.raises(ValueError, match=r"capture gap \[5, 4\] reason 1: not a gap"):
            s.record_capture([(5, 4, 1, DROPS, "any")])
    with open_store(tmp_path / "s") as s:                    # durable
        assert len(s.capture_gaps()) == 4 and s.capture_alive_t_ns() == 300
        assert "capture_alive_t_ns" in s.meta() and s.verify() == []


def test_capture_gaps_stay_bounded(tmp_path):
    from beatd.store import GAP_CAPTURE_STOPPED as STOPPED, GAP_KERNEL_DROPS as DROPS
    T = 10**12
    with open_store(tmp_path / "s", ring_size=SEG_BYTES(4) * 3) as s:
        gen = Gen(t=T)
        s.commit(gen.output(8))                              # the ring's oldest record: T
        s.record_capture([(T - 500, T - 400, 1, DROPS, "any"), (T - 300, T + 5, 1, DROPS, "x"),
                          (T + 10, T + 20, 1, DROPS, "any")])
        # older than the threshold AND than the ring's oldest record: pruned; a gap reaching
        # into what the ring holds is kept, whatever the threshold
        s.record_capture(alive_t_ns=T + 100, threshold_ns=50)
        assert [g[:2] for g in s.capture_gaps()] == [(T - 300, T + 5), (T + 10, T + 20)]
        s.commit(gen.output(40))                             # the ring wraps past T + 5
        assert s.proof_ring_status(0, 0)["oldest_t_ns"] > T + 20
        s.record_capture(alive_t_ns=T + 100, threshold_ns=10**15)
        assert len(s.capture_gaps()) == 2                    # within the threshold: kept
        s.record_capture(alive_t_ns=T + 10**9, threshold_ns=10**6)
        assert s.capture_gaps() == []
        # a cap: the oldest gaps merge into wider ones, nothing is lost from the statement
        gaps = [(T + 100 * i, T + 100 * i + 10, 1, DROPS, f"if{i % 3}") for i in range(50)]
        s.record_capture(gaps, max_gaps=10)
        got = s.capture_gaps()
        assert len(got) == 10
        assert got[0][0] == T and sum(g[2] for g in got) == 50
        assert max(g[1] for g in got) == T + 4910
        covered = lambda t: any(a <= t <= b for a, b, *_ in got)          # noqa: E731
        assert all(covered(a) and covered(b) for a, b, *_ in gaps)
        assert got[0][4] == ""                               # merged across interfaces: every one
        s.record_capture([(T + 1, T + 2, 0, STOPPED, "")], max_gaps=10)
        assert len(s.capture_gaps()) == 10
