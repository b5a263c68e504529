"""The adversary of issue 14's gap records on the device's side (beatd/store, beatd/gap_journal,
beat_common/gap_record; docs/gap-records.md): what an honest device writes must stay the statement
it made (immutable, bound to its node_id, kept until anchored), a flood must not make it write
unbounded statements nor lose the frames it counted, and a liar's malformed records must not pass
the codec. Real LMDB stores in tmp_path."""
import pytest

from beat_common.gap_record import (GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, GAP_RECORD_SIZE,
                                    gap_leaf, pack_gap_record, unpack_gap_record)
from beatd.gap_journal import GapJournal
from beatd.store import Store, layout

H = "sha3-256"
SEC = 10**9
T0 = 1_700_000_000 * SEC
NODE = 7
RING = 64 * 1024


def open_store(path):
    return Store(str(path), NODE, H, RING)


def test_extending_a_gap_writes_a_new_record_and_keeps_the_first_one(tmp_path):
    """A gap that goes on is a second statement; the first one, and its outbox leaf, stay as
    they were (a device cannot widen what it declared)."""
    st = open_store(tmp_path / "s")
    first = (T0, T0 + SEC, 10, GAP_KERNEL_DROPS, "eth1")
    st.record_capture([first], alive_t_ns=T0 + SEC)
    (seq1, rec1), = st.gap_records()
    st.record_capture([(T0 + SEC, T0 + 2 * SEC, 5, GAP_KERNEL_DROPS, "eth1")],
                      alive_t_ns=T0 + 2 * SEC)
    recs = st.gap_records()
    assert len(recs) == 2 and recs[0] == (seq1, rec1) and rec1 == pack_gap_record(*first)
    leaves = {}
    with st.env.begin() as txn:
        for seq, _ in recs:
            leaves[seq] = bytes(txn.get(layout.p64(seq), db=st.db[layout.OUTBOX]))
    for seq, rec in recs:
        assert leaves[seq] == gap_leaf(H, NODE, rec)
    assert not [p for p in st.verify() if "gap" in p], st.verify()
    st.close()


def test_a_gap_record_changed_in_the_store_is_found_by_verify(tmp_path):
    """A record rewritten after its leaf was written (widened): the store's own check sees that
    its G is not the leaf's (the governance sees it as a leaf not in the anchor)."""
    st = open_store(tmp_path / "s")
    st.record_capture([(T0, T0 + SEC, 10, GAP_KERNEL_DROPS, "eth1")], alive_t_ns=T0 + SEC)
    (seq, _), = st.gap_records()
    with st.env.begin(write=True) as txn:
        txn.put(layout.p64(seq), pack_gap_record(T0 - 60 * SEC, T0 + SEC, 10, GAP_KERNEL_DROPS,
                                                 "eth1"), db=st.gap_db())
    problems = st.verify()
    assert any(f"gap_records[{seq}]" in p and "not the outbox leaf" in p for p in problems), \
        problems
    st.close()


def test_unanchored_gap_records_are_never_pruned(tmp_path):
    """An honest device's statement waits for its anchor however old it gets (a ledger down for
    hours): pruning takes only anchored batches."""
    st = open_store(tmp_path / "s")
    gaps = [(T0 + k * SEC, T0 + k * SEC + SEC // 2, 3, GAP_KERNEL_DROPS, "eth1") for k in range(5)]
    st.record_capture(gaps, alive_t_ns=T0 + 5 * SEC, threshold_ns=SEC)
    st.prune(T0 + 10**6 * SEC, SEC)
    st.record_capture([], alive_t_ns=T0 + 10**6 * SEC, threshold_ns=SEC)
    assert [r for _, r in st.gap_records()] == [pack_gap_record(*g) for g in gaps]
    st.close()
    st = open_store(tmp_path / "s")             # and after a restart
    assert len(st.gap_records()) == 5
    st.close()


def test_a_gap_record_is_bound_to_its_node():
    """The same 41 bytes are another leaf for another node: a record anchored by one node
    cannot be served as another's."""
    rec = pack_gap_record(T0, T0 + SEC, 10, GAP_KERNEL_DROPS, "eth1")
    a, b = gap_leaf(H, 2, rec), gap_leaf(H, 5, rec)
    assert a[0] == 3 and b[0] == 3 and a != b and len(a) == 33


def test_a_flood_makes_few_statements_and_loses_no_frame():
    """A neighbour floods the router: the workers note a piece every 0.25 s per worker, four
    workers, for 10 s. One statement per interface and second at most; every frame counted is
    in a statement; every piece's time is inside one."""
    clock = [0.0]
    j = GapJournal(__import__("logging").getLogger("t"), clock=lambda: clock[0])
    pieces, written = [], []
    t = T0
    for step in range(40):
        batch = []
        for w in range(4):
            p = (t, t + SEC // 4, 1000 + w, GAP_KERNEL_DROPS, "eth1")
            batch.append(p)
        pieces += batch
        j.add(batch)
        written += j.due()
        clock[0] += 0.25
        t += SEC // 4
    written += j.due(force=True)
    assert len(written) <= 12, len(written)
    assert sum(g[2] for g in written) == sum(p[2] for p in pieces)
    for p in pieces:
        assert any(g[0] <= p[0] and p[1] <= g[1] for g in written), p
    for g in written:
        assert g[1] - g[0] <= 2 * SEC


@pytest.mark.parametrize("fields, says", [
    ((T0 + 1, T0, 1, GAP_KERNEL_DROPS, "eth1"), "from_ns is after to_ns"),
    ((T0, T0, 1, 0, "eth1"), "reason 0"),
    ((T0, T0, 1, 3, "eth1"), "reason 3"),
    ((T0, T0, 1, GAP_KERNEL_DROPS, "eth 1"), "printable"),
    ((T0, T0, 1, GAP_KERNEL_DROPS, "a" * 17), "16 printable"),
    ((-1, T0, 1, GAP_KERNEL_DROPS, "eth1"), "not a u64"),
    ((T0, 1 << 64, 1, GAP_KERNEL_DROPS, "eth1"), "not a u64"),
], ids=["inverted", "reason0", "reason3", "space", "long_ifname", "negative", "beyond_u64"])
def test_a_malformed_gap_record_is_refused_with_its_field(fields, says):
    with pytest.raises(ValueError, match=says):
        pack_gap_record(*fields)


@pytest.mark.parametrize("patch, says", [
    (lambda r: r[8:16] + r[0:8] + r[16:], "from_ns is after to_ns"),
    (lambda r: r[:24] + b"\x09" + r[25:], "reason 9"),
    (lambda r: r[:25] + b"e\x00h1" + r[29:], "printable"),
    (lambda r: r[:-1], f"not {GAP_RECORD_SIZE}"),
    (lambda r: r + b"\x00", f"not {GAP_RECORD_SIZE}"),
], ids=["inverted", "reason", "nul_inside", "short", "long"])
def test_a_liars_gap_record_bytes_do_not_unpack(patch, says):
    good = pack_gap_record(T0, T0 + 5, 1, GAP_KERNEL_DROPS, "eth1")
    assert unpack_gap_record(good) == (T0, T0 + 5, 1, GAP_KERNEL_DROPS, "eth1")
    with pytest.raises(ValueError, match=says):
        unpack_gap_record(patch(good))


def test_a_new_stores_first_start_gap_from_zero_is_a_record(tmp_path):
    """A new store states "capture stopped from 0": a record like any other (the governance
    must honour it only where the device anchored nothing and held no record)."""
    st = open_store(tmp_path / "s")
    st.record_capture([(0, T0, 0, GAP_CAPTURE_STOPPED, "")], alive_t_ns=T0)
    (_, rec), = st.gap_records(T0 - SEC, T0)
    assert unpack_gap_record(rec) == (0, T0, 0, GAP_CAPTURE_STOPPED, "")
    st.close()
