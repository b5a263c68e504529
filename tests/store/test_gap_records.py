"""Gap records (docs/gap-records.md): the record and its commitment against the golden vectors
(tests/data/vectors/gap-records.json, written from the format text by its generator), the
store's immutable records and their type-3 outbox leaves, anchored by the batcher on a real local
ledger, their inclusion proofs verifying, the batch's span, pruning with the anchored batch, and
the store's check catching a record changed after its leaf was written."""
import json
import os
import time

import lmdb
import pytest

from beat_common.gap_record import (GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, GAP_RECORD_SIZE,
                                    gap_leaf, gap_value, pack_gap_record, unpack_gap_record)
from beat_common.spec import LEAF_GAP
from beatd.store import Store
from beatd.store import layout
from ledger_client import merkle
from ledger_client.backend import open_backend
from ledger_client.batcher import Batcher
from ledger_client.keys import DeviceKey
from ledger_client.types import Node

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(os.path.dirname(HERE), "data", "vectors", "gap-records.json")


@pytest.fixture(scope="module")
def vectors():
    with open(VECTORS) as f:
        return json.load(f)


def test_the_record_and_G_are_the_golden_vectors(vectors):
    node = vectors["node_id"]
    assert len(vectors["records"]) >= 4
    for row in vectors["records"]:
        rec = pack_gap_record(row["from_ns"], row["to_ns"], row["frames_dropped"], row["reason"],
                              row["interface"])
        assert len(rec) == GAP_RECORD_SIZE == 41
        assert rec.hex() == row["record"], row["name"]
        assert unpack_gap_record(rec) == (row["from_ns"], row["to_ns"], row["frames_dropped"],
                                          row["reason"], row["interface"])
        for h in vectors["hashes"]:
            assert gap_value(h, node, rec).hex() == row["G"][h], (row["name"], h)
            assert gap_leaf(h, node, rec).hex() == row["leaf"][h]
            assert gap_leaf(h, node, rec)[0] == LEAF_GAP == 3
    # another node's statement of the same gap is another commitment
    rec = bytes.fromhex(vectors["records"][0]["record"])
    assert gap_value("sha3-256", node + 1, rec) != gap_value("sha3-256", node, rec)


def test_an_anchor_with_gap_leaves_is_the_golden_tree(vectors):
    """The ledger client's Merkle code over receipts, segments and gap leaves together gives the
    reference's root, and every reference path verifies (a type-3 leaf is only a leaf to it)."""
    for a in vectors["anchors"]:
        h = a["hash"]
        leaves = [bytes.fromhex(x) for x in a["leaves"]]
        assert [lf[0] for lf in leaves] == [1, 2, 3, 3, 3, 3]
        assert merkle.root(h, leaves).hex() == a["root"]
        for m, path in enumerate(a["paths"]):
            assert merkle.verify_inclusion(h, leaves[m], m, len(leaves),
                                           [bytes.fromhex(p) for p in path],
                                           bytes.fromhex(a["root"]))
        # a gap leaf with one bit changed is not in the tree
        bad = bytearray(leaves[2])
        bad[5] ^= 1
        assert not merkle.verify_inclusion(h, bytes(bad), 2, len(leaves),
                                           [bytes.fromhex(p) for p in a["paths"][2]],
                                           bytes.fromhex(a["root"]))


@pytest.mark.parametrize("args, says", [
    ((5, 4, 1, GAP_KERNEL_DROPS, "eth0"), "from_ns is after to_ns"),
    ((1, 2, 0, 3, "eth0"), "reason 3 is not 1"),
    ((1, 2, 0, GAP_KERNEL_DROPS, "a-very-long-interface"), "'a-very-long-interface' is not up"),
    ((1, 2, 0, GAP_KERNEL_DROPS, "eth 0"), "'eth 0' is not up"),
    ((-1, 2, 0, GAP_KERNEL_DROPS, "eth0"), "from_ns -1 is not a u64"),
    ((1, 2, 1 << 64, GAP_KERNEL_DROPS, "eth0"), "frames_dropped 18446744073709551616"),
])
def test_a_record_that_is_not_one_is_refused_by_name(args, says):
    with pytest.raises(ValueError, match=says):
        pack_gap_record(*args)


def test_unpacking_refuses_what_no_device_writes(vectors):
    rec = bytearray.fromhex(vectors["records"][0]["record"])
    for off, value, says in ((24, 7, "reason 7"), (25, 0x01, "not printable"),
                             (26, 0x00, "not printable")):
        bad = bytearray(rec)
        bad[off] = value
        with pytest.raises(ValueError, match=says):
            unpack_gap_record(bytes(bad))
    with pytest.raises(ValueError, match="40 bytes, not 41"):
        unpack_gap_record(bytes(rec[:40]))


def _store(path, node_id=7, h="sha3-256"):
    return Store(str(path), node_id, h, 1 << 22, map_size=64 << 20)


def test_each_statement_is_a_record_of_its_own_with_its_leaf(tmp_path):
    """A gap extended later is a second record (the merged view for status joins them); each
    record's outbox leaf is 3 || G of exactly its bytes; the records survive a restart and the
    store's check passes."""
    t = 1_700_000_000_000_000_000
    with _store(tmp_path / "s") as s:
        assert s.gap_records() == [] and s.gap_db() is None     # no database before the first
        s.record_capture([(0, t, 0, GAP_CAPTURE_STOPPED, "")], alive_t_ns=t)
        s.record_capture([(t + 10, t + 20, 5, GAP_KERNEL_DROPS, "eth1")])
        s.record_capture([(t + 20, t + 30, 7, GAP_KERNEL_DROPS, "eth1")])   # extends it
        assert s.capture_gaps(t + 1, t + 40) == [(t + 10, t + 30, 12, GAP_KERNEL_DROPS, "eth1")]
        recs = s.gap_records()
        assert [unpack_gap_record(r) for _, r in recs] == [
            (0, t, 0, GAP_CAPTURE_STOPPED, ""), (t + 10, t + 20, 5, GAP_KERNEL_DROPS, "eth1"),
            (t + 20, t + 30, 7, GAP_KERNEL_DROPS, "eth1")]
        outbox = {seq: (kind, value) for seq, kind, value in s.outbox()}
        for seq, rec in recs:
            assert outbox[seq] == (LEAF_GAP, gap_value("sha3-256", 7, rec))
        assert [seq for seq, _ in recs] == [0, 1, 2]
        assert [unpack_gap_record(r)[:2] for _, r in s.gap_records(t + 25, t + 26)] == [
            (t + 20, t + 30)]
        assert s.verify() == []
        # a statement that is not one writes nothing (neither record nor leaf)
        with pytest.raises(ValueError):
            s.record_capture([(t + 50, t + 60, 1, GAP_KERNEL_DROPS, "x" * 17)])
        assert len(s.gap_records()) == 3 and len(s.outbox()) == 3
    with _store(tmp_path / "s") as s:
        assert len(s.gap_records()) == 3 and s.verify() == []


def test_a_record_changed_after_its_leaf_is_caught_by_the_store_check(tmp_path):
    with _store(tmp_path / "s") as s:
        s.record_capture([(10, 20, 5, GAP_KERNEL_DROPS, "eth1")])
        (seq, rec), = s.gap_records()
        widened = pack_gap_record(1, 20, 5, GAP_KERNEL_DROPS, "eth1")      # back-dated start
        with s.env.begin(write=True) as txn:
            txn.put(layout.p64(seq), widened, db=s.gap_db())
        assert any("its G is not the outbox leaf's" in p for p in s.verify())


@pytest.fixture
def ledger(tmp_path):
    gov = DeviceKey.generate()
    dev = DeviceKey.generate()
    led = open_backend(f"local:{tmp_path / 'ledger.lmdb'}", hash_name="sha3-256",
                       missing="create", governance_pubkey=gov.public)
    led.register_node(Node(7, "op-a", dev.public), signer=gov)
    yield led, dev
    led.close()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def time(self):
        return self.t


def test_gap_leaves_are_anchored_proven_and_pruned_with_their_batch(tmp_path, ledger):
    """The batcher anchors gap leaves like receipts (a real local ledger, which stamps its
    time); each record's proof verifies against the anchor's root; the batch's span is the
    gaps' to_ns; once anchored and older than the threshold, pruning removes the records."""
    led, dev = ledger
    now = time.time_ns()
    t = now - 10 * 10**9
    clock = Clock()
    with _store(tmp_path / "s") as s:
        b = Batcher(s, led, 7, "sha3-256", dev, 1.0, clock=clock)
        s.record_capture([(t - 5 * 10**9, t, 0, GAP_CAPTURE_STOPPED, ""),
                          (t + 10**9, t + 2 * 10**9, 9, GAP_KERNEL_DROPS, "any")])
        clock.t += 2
        before = time.time_ns()
        assert b.tick()["submitted"] == [0]
        a = led.get_anchor(7, 0)
        assert a.tree_size == 2 and (a.first_t_ns, a.last_t_ns) == (t, t + 2 * 10**9)
        assert before <= a.ledger_t_ns <= time.time_ns()
        outbox = s.ledger_outbox()
        for seq, rec in s.gap_records():
            batch_seq, index, proof = outbox.proof(seq)
            assert batch_seq == 0
            assert merkle.verify_inclusion("sha3-256", gap_leaf("sha3-256", 7, rec), index,
                                           a.tree_size, proof, a.root)
            forged = pack_gap_record(0, t + 2 * 10**9, 9, GAP_KERNEL_DROPS, "any")
            assert not merkle.verify_inclusion("sha3-256", gap_leaf("sha3-256", 7, forged),
                                               index, a.tree_size, proof, a.root)
        # not pruned while younger than the threshold, then pruned with the batch
        assert s.prune(now, 3600 * 10**9)["leaves"] == 0 and len(s.gap_records()) == 2
        done = s.prune(now, 1)
        assert done["leaves"] == 2 and done["batches"] == 1
        assert s.gap_records() == [] and s.verify() == []


def test_a_ledger_written_before_ledger_times_still_reads(tmp_path, ledger):
    """An anchor entry without ledger_t_ns (written before the ledger stamped its time) reads
    back with ledger_t_ns None, and the chain still verifies."""
    led, dev = ledger
    from ledger_client.types import Anchor
    led.anchor(Anchor(7, 0, 1, bytes(32), 1, 2), signer=dev)
    assert led.get_anchor(7, 0).ledger_t_ns is not None
    assert led.verify_chain() == []
    # the index without the field: as a former ledger wrote it
    import json as _json
    key = (7).to_bytes(8, "big") + (0).to_bytes(8, "big")
    with led.env.begin(write=True) as txn:
        db = led.dbs["anchors"]
        d = _json.loads(bytes(txn.get(key, db=db)))
        d.pop("ledger_t_ns")
        txn.put(key, _json.dumps(d, sort_keys=True, separators=(",", ":")).encode(), db=db)
    assert led.get_anchor(7, 0).ledger_t_ns is None
    assert led.get_anchor(7, 0).content() == Anchor(7, 0, 1, bytes(32), 1, 2).content()


def test_max_dbs_leaves_no_room_once_gap_records_exist(tmp_path):
    with _store(tmp_path / "s") as s:
        s.ledger_outbox()
        s.record_capture([(1, 2, 3, GAP_KERNEL_DROPS, "eth0")])
        with pytest.raises(lmdb.DbsFullError):
            s.env.open_db(b"not_in_the_layout", create=True)
