"""The receipt cap (docs/fastpath.md, "Releasing"): at most max_receipts_per_epoch receipts of their
own per role and epoch; the packets of the flows beyond count in one overflow receipt per role and
epoch whose src and dst are 16 zero bytes, and in the ``receipt_overflow`` statistic. Both twins.

Also ``resume()`` (replaces the open receipts and recounts the cap) and ``rewind()`` (take and
resume in one step, what the daemon does with a batch a full store could not hold)."""
import struct

import pytest

import spec_ref

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC          # an epoch start
NODE = 7
ZERO16 = bytes(16)


def ipv4(src, dst, ident, payload=b"cap!"):
    """A raw IPv4/UDP packet (linktype 101: an observation from outside, no MACs)."""
    udp = struct.pack(">HHHH", 1000 + ident, 9, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0,
                       bytes(src), bytes(dst)) + udp


def a16(v4):
    return b"\x00" * 10 + b"\xff\xff" + bytes(v4)


A, B, C, D = ((10, 0, 0, i) for i in range(1, 5))
DST = (10, 9, 0, 1)


def feed(p, impl, frames):
    """frames: (t_ns, ip, dir) with dir 1 = ingress from outside (role 1), 2 = egress to outside
    (role 2)."""
    buf, desc = b"", b""
    for t, ip, d in frames:
        desc += impl.pack_desc(t, len(buf), len(ip), len(ip), 101, d)
        buf += ip
    p.feed(buf, desc)


def receipts(out):
    """{(epoch_ns, role, src, dst): (packets, bytes, R)} of the finalised receipts."""
    got = {}
    for i in range(0, len(out.receipts), 89):
        e = bytes(out.receipts[i:i + 89])
        ep, role = struct.unpack_from(">QB", e)
        pk, by = struct.unpack_from(">QQ", e, 41)
        got[(ep, role, e[9:25], e[25:41])] = (pk, by, e[57:])
    return got


def spec_r(role, src, dst, epoch, packets, nbytes, hash_name="sha3-256"):
    """docs/formats.md's receipt formula, written out here (not the fast path's receipt_value)."""
    return spec_ref.H(hash_name, b"BEAT-RC-v1" + struct.pack(">QB", NODE, role) + src + dst
                      + struct.pack(">QQQ", epoch, packets, nbytes))


def pipe(impl, cap, **kw):
    return impl.Pipeline(NODE, join_window_ns=1_000_000, receipt_epoch_ns=SEC,
                         max_receipts_per_epoch=cap, **kw)


def close(p, impl, t=T0 + 5 * SEC):
    p.advance(t)
    return p.take()


def test_flows_beyond_the_cap_share_the_overflow_receipt(impl):
    p = pipe(impl, 2)
    pk = {}

    def send(src, n, t):
        frames = []
        for k in range(n):
            ip = ipv4(src, DST, ident=len(pk))
            pk[len(pk)] = (src, len(ip))
            frames.append((t + k, ip, 1))
        feed(p, impl, frames)

    send(A, 2, T0 + 10)
    send(B, 1, T0 + 20)
    send(C, 2, T0 + 30)           # the third flow of the epoch: overflow
    send(D, 2, T0 + 40)           # the fourth: overflow too
    send(A, 1, T0 + 50)           # A keeps its own receipt
    send(C, 1, T0 + 60)           # C stays in the overflow for this epoch
    send(C, 1, T0 + SEC + 1)      # the next epoch counts afresh: C gets its own
    out = close(p, impl)
    got = receipts(out)
    size = {s: n for s, n in pk.values()}
    nb = lambda src, n: n * size[src]            # noqa: E731
    d16 = a16(DST)
    want = {
        (T0, 1, a16(A), d16): (3, nb(A, 3)),
        (T0, 1, a16(B), d16): (1, nb(B, 1)),
        (T0, 1, ZERO16, ZERO16): (5, nb(C, 3) + nb(D, 2)),
        (T0 + SEC, 1, a16(C), d16): (1, nb(C, 1)),
    }
    assert {k: v[:2] for k, v in got.items()} == want
    for (ep, role, src, dst), (pk_n, by, R) in got.items():
        assert R == spec_r(role, src, dst, ep, pk_n, by)
    # the overflow receipt's R is the SPEC formula with src = dst = 16 zero bytes
    assert got[(T0, 1, ZERO16, ZERO16)][2] == spec_r(1, ZERO16, ZERO16, T0, 5, nb(C, 3) + nb(D, 2))
    assert out.stats["receipt_overflow"] == 5 and out.stats["receipts"] == 4
    assert p.totals()["receipt_overflow"] == 5
    # the overflow receipt sorts first among its epoch and role (by key)
    assert bytes(out.receipts[9:41]) == bytes(32)


def test_the_cap_is_per_role(impl):
    p = pipe(impl, 1)
    feed(p, impl, [(T0 + 1, ipv4(A, DST, 1), 1), (T0 + 2, ipv4(B, DST, 2), 1),
                   (T0 + 3, ipv4(C, DST, 3), 2), (T0 + 4, ipv4(D, DST, 4), 2),
                   (T0 + 5, ipv4(D, DST, 5), 2)])
    got = receipts(close(p, impl))
    assert {(k[1], k[2]): v[0] for k, v in got.items()} == {
        (1, a16(A)): 1, (1, ZERO16): 1, (2, a16(C)): 1, (2, ZERO16): 2}


def test_the_cap_survives_a_resume(impl):
    p = pipe(impl, 2)
    feed(p, impl, [(T0 + 1, ipv4(A, DST, 1), 1), (T0 + 2, ipv4(B, DST, 2), 1),
                   (T0 + 3, ipv4(C, DST, 3), 1)])
    p.advance(T0 + 100_000_000)         # released, the epoch still open
    before = p.take()
    assert len(before.open_receipts) == 3 * 57 and before.receipts == b""
    # a restart: the new pipeline's cap counts the two flows of their own, not the overflow
    q = pipe(impl, 2)
    q.resume(before.open_seg_seq, before.open_records, before.open_receipts, before.closed_before)
    feed(q, impl, [(T0 + 200_000_000, ipv4(D, DST, 4), 1), (T0 + 200_000_001, ipv4(B, DST, 5), 1)])
    got = receipts(close(q, impl))
    assert {k[2]: v[0] for k, v in got.items()} == {a16(A): 1, a16(B): 2, ZERO16: 2}
    # resume() on a pipeline that holds open receipts replaces them (it does not add to them)
    p.resume(before.open_seg_seq, b"", b"", before.closed_before)
    feed(p, impl, [(T0 + 300_000_000, ipv4(D, DST, 6), 1)])
    got = receipts(close(p, impl))
    assert {k[2]: v[0] for k, v in got.items()} == {a16(D): 1}


def test_the_unspecified_flow_counts_in_the_overflow_receipt(impl):
    """An IPv6 packet from :: to :: has the overflow receipt's key: it counts there and takes no
    place under the cap."""
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, 8, 17, 64, ZERO16, ZERO16) + bytes(8)
    p = pipe(impl, 1)
    feed(p, impl, [(T0 + 1, ip6, 1), (T0 + 2, ipv4(A, DST, 1), 1), (T0 + 3, ipv4(B, DST, 2), 1)])
    out = close(p, impl)
    got = receipts(out)
    assert {k[2]: v[0] for k, v in got.items()} == {ZERO16: 2, a16(A): 1}
    assert out.stats["receipt_overflow"] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", (1 << 24) + 1])
def test_max_receipts_per_epoch_is_validated(impl, bad):
    with pytest.raises(ValueError) as e:
        impl.Pipeline(NODE, max_receipts_per_epoch=bad)
    msg = str(e.value)
    assert "max_receipts_per_epoch" in msg and (repr(bad) in msg or str(bad) in msg), msg


def test_rewind_takes_and_resumes_in_one_step(impl):
    p = pipe(impl, 4, segment_records=2)
    feed(p, impl, [(T0 + i, ipv4(A, DST, i), 1) for i in range(5)])
    p.advance(T0 + 100_000_000)
    state = p.take()                          # what a store would hold after a commit
    feed(p, impl, [(T0 + 200_000_000 + i, ipv4(B, DST, 10 + i), 1) for i in range(3)])
    p.advance(T0 + 300_000_000)
    dropped = p.rewind(state.open_seg_seq, state.open_records, state.open_receipts,
                       state.closed_before)
    # what take() would have returned: the three records of B and the two segments they closed
    assert len(dropped.records) == 3 * 48 and [s[0] for s in dropped.segments] == [2, 3]
    assert dropped.stats["records"] == 3
    # nothing of it is left in the pipeline, which goes on from the state given
    after = p.take()
    assert after.records == b"" and after.segments == [] and after.stats["records"] == 0
    assert (after.open_seg_seq, bytes(after.open_records), bytes(after.open_receipts)) == \
        (state.open_seg_seq, bytes(state.open_records), bytes(state.open_receipts))
    feed(p, impl, [(T0 + 400_000_000, ipv4(C, DST, 20), 1)])
    out = close(p, impl)
    # seg_seq 2 again (A's open record and C): the dropped segments 2 and 3 never were
    assert [(s[0], s[1]) for s in out.segments] == [(2, 2)]
    got = receipts(out)
    assert {k[2]: v[0] for k, v in got.items()} == {a16(A): 5, a16(C): 1}
    # a refused state changes nothing and takes nothing
    feed(p, impl, [(T0 + 2 * SEC, ipv4(D, DST, 21), 1)])
    with pytest.raises(ValueError):
        p.rewind(0, b"x" * 47)
    assert p.take().stats["frames"] == 1
