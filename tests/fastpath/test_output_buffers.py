"""The outputs that replay asks for without copies (records_out=False, segment_views=True): the
same bytes as the ordinary outputs, segments that never change once handed out (their memory is
reused only after the last view of it is gone), the proof ring's value as a view of them, and the
open receipts' key order kept between batches."""
import ctypes
import gc
import random
import struct

import pytest

import fastpath.pure as pure
from fastpath.output import OPEN_RECEIPT_SIZE, pack_desc

native = pytest.importorskip("fastpath._native")

OWN = bytes.fromhex("020000000001")
NB_A = bytes.fromhex("020000000002")    # neighbour 2: packets from it
NB_B = bytes.fromhex("020000000003")    # neighbour 3: packets to it
HOST = bytes.fromhex("02000000aa01")    # no neighbour's: from outside
KW = dict(node_id=1, own_macs=[OWN], neighbours={NB_A: 2, NB_B: 3}, join_window_ns=50_000,
          receipt_epoch_ns=1_000_000, segment_records=7, anchor_period_ns=3_000_000,
          max_pending=1 << 8)
FIELDS = ("records", "segments", "receipts", "counters", "stats", "open_seg_seq", "open_records",
          "open_receipts", "closed_before")


def frame(src, dst, flow, ident):
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 46, ident & 0xFFFF, 0, 64, 17, 0,
                     bytes((10, 0, flow >> 8, flow & 0xFF)), bytes((10, 1, 0, flow & 0x7)))
    return dst + src + b"\x08\x00" + ip + struct.pack(">HHHH", 1024, 53, 26, 0) + bytes(18)


def batches(seed=1, n_batches=40, per_batch=60):
    """Batches (buf, desc) of mixed traffic: joined packets (in from A, out to B), ingress from an
    unknown host (pending for the window, released unjoined), egress only; new flows keep
    appearing (receipts added between batches); time crosses epochs and anchor periods."""
    rng = random.Random(seed)
    t = 1_000_000_000
    ident = 0
    out = []
    for b in range(n_batches):
        buf = bytearray()
        desc = bytearray()
        for _ in range(per_batch):
            t += rng.choice((1_000, 5_000, 20_000, 90_000))
            ident += 1
            flow = rng.randrange(3 + b * 2)
            kind = rng.random()
            if kind < 0.4:
                frames = [(t, frame(NB_A, OWN, flow, ident)), (t + 3_000, frame(OWN, NB_B, flow, ident))]
            elif kind < 0.8:
                frames = [(t, frame(HOST, OWN, flow, ident))]
            else:
                frames = [(t, frame(OWN, NB_B, flow, ident))]
            for ts, f in frames:
                desc += pack_desc(ts, len(buf), len(f), len(f), 1)
                buf += f
        out.append((bytes(buf), bytes(desc)))
    return out


def plain(out):
    """An Output's fields with every buffer as bytes."""
    segs = [(s, c, bytes(v), bytes(r)) for s, c, v, r in out.segments]
    return tuple(segs if n == "segments" else getattr(out, n) for n in FIELDS)


def run(cls, **extra):
    p = cls(**KW, **extra)
    outs = []
    for buf, desc in batches():
        p.feed(buf, desc)
        outs.append(p.take())
    p.flush()
    outs.append(p.take())
    return outs


@pytest.mark.parametrize("impl", [pure, native], ids=["py", "c"])
def test_records_out_false_changes_only_the_records(impl):
    full = run(impl.Pipeline)
    lean = run(impl.Pipeline, records_out=False)
    assert sum(len(o.records) for o in full) > 0
    assert all(o.records == b"" for o in lean)
    for a, b in zip(full, lean):
        assert plain(a)[1:] == plain(b)[1:]
    # the released records are all in the segments (and the open one) either way
    assert b"".join(r for o in lean for _, _, _, r in o.segments) + lean[-1].open_records == \
        b"".join(o.records for o in full)


@pytest.mark.parametrize("flag", ["records_out", "segment_views"])
@pytest.mark.parametrize("impl", [pure, native], ids=["py", "c"])
def test_flags_must_be_bools(impl, flag):
    with pytest.raises(ValueError, match=f"{flag} must be True or False, got 1"):
        impl.Pipeline(**KW, **{flag: 1})


def test_segment_views_are_the_same_bytes_as_copies_and_as_the_pure_twin():
    views = run(native.Pipeline, segment_views=True, records_out=False)
    copies = run(native.Pipeline, records_out=False)
    twin = run(pure.Pipeline, records_out=False)
    assert sum(len(o.segments) for o in views) > 20
    for v, c, t in zip(views, copies, twin):
        assert plain(v) == plain(c) == plain(t)
        for _, _, value, records in v.segments:
            assert type(records) is memoryview and records.readonly
            assert type(records.obj) is native.SegmentBuffer
            assert type(value) is bytes
        for _, _, _, records in c.segments:
            assert type(records) is bytes


def test_held_segments_never_change_while_later_takes_reuse_memory():
    """Keep some takes' segments (views only, the Outputs dropped), drop the others, go on: every
    kept view still holds the bytes it had when taken, though later takes reuse the memory of
    the dropped ones."""
    p = native.Pipeline(**KW, segment_views=True, records_out=False)
    ref = pure.Pipeline(**KW, records_out=False)
    kept = []
    for i, (buf, desc) in enumerate(batches(seed=3, n_batches=80)):
        p.feed(buf, desc)
        ref.feed(buf, desc)
        out, want = p.take(), ref.take()
        assert plain(out) == plain(want)
        if i % 3 == 0:
            kept += [(r, bytes(r)) for _, _, _, r in out.segments]
        del out
        gc.collect()
        for view, snapshot in kept:
            assert view == snapshot
    assert len(kept) > 10
    p.flush()
    last = p.take()
    assert plain(last) == plain((ref.flush(), ref.take())[1])
    for view, snapshot in kept:
        assert bytes(view) == snapshot


def test_segment_buffer_is_read_only_and_made_only_by_take():
    p = native.Pipeline(**KW, segment_views=True)
    for buf, desc in batches(n_batches=5):
        p.feed(buf, desc)
    records = p.take().segments[0][3]
    with pytest.raises(TypeError):
        records[0] = 0
    with pytest.raises((TypeError, BufferError)):
        (ctypes.c_char * len(records.obj)).from_buffer(records.obj)
    with pytest.raises(TypeError):
        native.SegmentBuffer()


def test_rewind_hands_out_views_too_and_goes_on():
    a = native.Pipeline(**KW, segment_views=True)
    b = pure.Pipeline(**KW)
    bs = batches(seed=5)
    for buf, desc in bs[:10]:
        a.feed(buf, desc)
        b.feed(buf, desc)
    mid = b.take()
    got = a.rewind(mid.open_seg_seq, mid.open_records, mid.open_receipts, mid.closed_before)
    assert plain(got) == plain(mid)
    for buf, desc in bs[10:]:
        a.feed(buf, desc)
        b.feed(buf, desc)
        assert plain(a.take()) == plain(b.take())


@pytest.mark.parametrize("impl", [pure, native], ids=["py", "c"])
def test_proofs_value(impl):
    p = native.Pipeline(**KW, segment_views=True)
    for buf, desc in batches(n_batches=5):
        p.feed(buf, desc)
    out = p.take()
    assert len(out.segments) >= 2
    for seq, count, value, records in out.segments:
        want = struct.pack(">Q", count) + value + bytes(records)
        got = impl.proofs_value(count, value, records)
        assert bytes(got) == want
        if impl is native:      # a view of the segment's own bytes, no copy
            assert type(got) is memoryview and got.obj is records.obj
        # given an S or a count other than the buffer's (a lie, a test): the bytes asked for
        lie = bytes(32) if value != bytes(32) else b"\x01" * 32
        assert bytes(impl.proofs_value(count, lie, records)) == struct.pack(">Q", count) + lie + \
            bytes(records)
        assert bytes(impl.proofs_value(count + 1, value, records)) == \
            struct.pack(">Q", count + 1) + value + bytes(records)
        # plain bytes, a view cast to another format, a view not of a SegmentBuffer
        assert impl.proofs_value(count, value, bytes(records)) == want
        assert bytes(impl.proofs_value(count, value, records.cast("B", (len(records),)))) == want
        assert impl.proofs_value(count, value, memoryview(bytes(records))) == want
    # a view of part of a segment: what is before it is not that segment's count and S
    seq, count, value, records = out.segments[1]
    part = records[48:]
    assert bytes(impl.proofs_value(count - 1, value, part)) == \
        struct.pack(">Q", count - 1) + value + bytes(part)


def test_open_receipts_stay_sorted_as_flows_come_and_epochs_close():
    """The key order is kept between batches: a flow whose key sorts first, added later, and the
    epochs' closing must still give the pure twin's sorted open receipts after every take."""
    a = native.Pipeline(**KW)
    b = pure.Pipeline(**KW)
    t = 5_000_000_000
    for step in range(30):
        buf = bytearray()
        desc = bytearray()
        for k in range(6):
            flow = (255 - step * 7 - k) & 0xFF     # later flows sort before earlier ones
            f = frame(HOST, OWN, flow, step * 10 + k)
            desc += pack_desc(t, len(buf), len(f), len(f), 1)
            buf += f
            t += 40_000
        a.feed(bytes(buf), bytes(desc))
        b.feed(bytes(buf), bytes(desc))
        x, y = a.take(), b.take()
        assert x.open_receipts == y.open_receipts and x.receipts == y.receipts
        keys = [x.open_receipts[i:i + 41] for i in range(0, len(x.open_receipts),
                                                         OPEN_RECEIPT_SIZE)]
        assert keys == sorted(keys)
        if step % 4 == 0:       # a take with nothing new: the same receipts again
            assert a.take().open_receipts == x.open_receipts
    assert a.totals()["receipts"] > 0


@pytest.mark.parametrize("impl", [pure, native], ids=["py", "c"])
def test_runs_of_one_mac_after_the_neighbours_change_and_the_list_is_taken(impl):
    """The native twin remembers the last MAC's lookup for runs of frames: a run that continues
    after take_unknown_macs() is listed again, and after set_neighbours() a MAC that became a
    neighbour's is named (and one that stopped being is from outside)."""
    p = impl.Pipeline(**KW)

    def feed(src, n, t0):
        buf, desc = bytearray(), bytearray()
        for i in range(n):
            f = frame(src, OWN, 1, t0 + i)
            desc += pack_desc(t0 * 1000 + i * 1000, len(buf), len(f), len(f), 1)
            buf += f
        p.feed(bytes(buf), bytes(desc))

    feed(HOST, 5, 10_000)
    assert p.take_unknown_macs() == ([(HOST, 0, 1, 5)], 0)
    feed(HOST, 3, 20_000)
    assert p.take_unknown_macs() == ([(HOST, 0, 1, 3)], 0)
    feed(HOST, 2, 30_000)
    p.set_neighbours({NB_A: 2, HOST: 7})
    feed(HOST, 4, 40_000)
    feed(NB_A, 1, 50_000)
    p.set_neighbours({NB_A: 2})
    feed(NB_A, 2, 60_000)
    feed(HOST, 1, 70_000)
    assert p.take_unknown_macs() == ([(HOST, 0, 1, 3)], 0)
    p.flush()
    records = p.take().records
    prevs = [int.from_bytes(records[i + 8:i + 16], "big") for i in range(0, len(records), 48)]
    assert prevs == [0] * 5 + [0] * 3 + [0] * 2 + [7] * 4 + [2] + [2] * 2 + [0]
