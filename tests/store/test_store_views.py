"""Store.commit of a pipeline's outputs whose segments are views (segment_views=True, as replay
makes them): the store holds byte for byte what it holds from copies, including when the proof
ring wraps, and a liar's altered segment value is stored as given (never the buffer's own)."""
import os
import struct

import lmdb
import pytest

import fastpath.pure as pure
from beatd.store import Store
from beatd.store.layout import DB_NAMES, PROOFS, db_name

native = pytest.importorskip("fastpath._native")

OWN = bytes.fromhex("020000000001")
HOST = bytes.fromhex("02000000aa01")
NODE = 9
KW = dict(node_id=NODE, own_macs=[OWN], join_window_ns=20_000, receipt_epoch_ns=500_000,
          segment_records=16, anchor_period_ns=2_000_000)


def batches(n_batches=30, per_batch=90):
    t = 2_000_000_000
    out = []
    for b in range(n_batches):
        buf = bytearray()
        desc = bytearray()
        for k in range(per_batch):
            i = b * per_batch + k
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 46, i & 0xFFFF, 0, 64, 17, 0,
                             bytes((10, 0, 0, i % 13)), bytes((10, 1, 0, 1)))
            f = OWN + HOST + b"\x08\x00" + ip + bytes(26)
            desc += native.pack_desc(t, len(buf), len(f), len(f), 1)
            buf += f
            t += 7_000
        out.append((bytes(buf), bytes(desc)))
    return out


def dump(path):
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES), readonly=True, lock=False)
    got = {}
    with env.begin() as txn:
        for name in DB_NAMES:
            try:
                db = env.open_db(db_name(name), txn=txn, create=False)
            except lmdb.NotFoundError:
                continue
            got[name] = list(txn.cursor(db=db))
    env.close()
    return got


def fill(path, views, ring_size=1 << 20, alter=None):
    p = native.Pipeline(**KW, segment_views=views, records_out=not views)
    store = Store(path, NODE, "sha3-256", ring_size)
    try:
        for buf, desc in batches():
            p.feed(buf, desc)
            out = p.take()
            if alter:
                alter(out)
            store.commit(out)
        p.flush()
        out = p.take()
        if alter:
            alter(out)
        store.commit(out)
    finally:
        store.close()
    return dump(path)


@pytest.mark.parametrize("ring_size", [1 << 20, 4096], ids=["ring", "ring-wraps"])
def test_views_store_the_same_bytes_as_copies(tmp_path, ring_size):
    a = fill(tmp_path / "views", True, ring_size)
    b = fill(tmp_path / "copies", False, ring_size)
    assert len(a[PROOFS]) > 3
    assert a == b
    for key, value in a[PROOFS]:
        count = struct.unpack(">Q", value[:8])[0]
        assert len(value) == 40 + 48 * count
        assert value[8:40] == pure.segment_value("sha3-256", NODE, int.from_bytes(key, "big"),
                                                 value[40:])


def test_a_changed_segment_value_is_stored_as_given(tmp_path):
    """Outputs changed between take() and commit (the lying-device tests do): the store writes
    the tuple's S, not the bytes the pipeline had beside the records."""
    def alter(out):
        out.segments = [(s, c, bytes(32), r) for s, c, _, r in out.segments]
    a = fill(tmp_path / "views", True, alter=alter)
    b = fill(tmp_path / "copies", False, alter=alter)
    assert a == b
    assert a[PROOFS] and all(v[8:40] == bytes(32) for _, v in a[PROOFS])
