"""beat_rpc.evidence: the canonical codec of docs/interrogation.md.

Checked: Q and the chunk bytes against an independent construction from the document's field
lists (struct/hashlib here, not the codec's own tables); round trips of all three kinds
(hypothesis); every truncation, random garbage and random byte flips of valid bodies raise
MalformedEvidence (never struct.error, IndexError, ...); each malformation is named; signed chunks
are opened only with the right key, node, kind, Q and chunk_seq; an answer is complete only with its
last chunk, in sequence and in order.
"""
import dataclasses
import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beat_rpc import evidence as ev
from beat_rpc.evidence import (AnchorRef, BadSignature, ChunkHeader, Counter, EvidenceError,
                               IncompleteAnswer, MalformedEvidence, Receipt, Segment, WrongAnswer)
from ledger_client.keys import DeviceKey

NONE = (1 << 64) - 1
KEY = DeviceKey.from_seed(b"\x07" * 32)
OTHER = DeviceKey.from_seed(b"\x08" * 32)
NODE = 42
H = {"sha3-256": lambda b: hashlib.sha3_256(b).digest(),
     "blake2b-256": lambda b: hashlib.blake2b(b, digest_size=32).digest()}
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def rec(i, ft=b"\xaa" * 8):
    return struct.pack(">QQQ16s8s", 1_700_000_000_000_000_000 + i, 0, NONE, bytes([i % 256]) * 16,
                       ft)


def path(k, seed=1):
    return tuple(bytes([seed + j]) * 32 for j in range(k))


def sample_segments():
    return [Segment(5, b"\x11" * 32, AnchorRef(3, 1, 4, path(2)), rec(1) + rec(2)),
            Segment(6, b"\x22" * 32, ev.UNANCHORED, rec(3))]


def sample_receipts():
    src, dst = b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1]), b"\x01" * 16
    return [Receipt(10**18, 1, src, dst, 3, 300, b"\x33" * 32, AnchorRef(0, 0, 1, ())),
            Receipt(10**18, 2, src, dst, 2, 200, b"\x44" * 32, ev.UNANCHORED),
            Receipt(10**18 + 10**9, 1, src, dst, 1, 100, b"\x55" * 32, AnchorRef(9, 2, 5,
                                                                                    path(3)))]


def sample_counters():
    return [Counter(0, 2, 10, 1000, 5, 9), Counter(0, NONE, 1, 60, 7, 7), Counter(3, 2, 4, 4, 1, 2)]


Q0 = b"\x5a" * 32


# -- Q ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_name", ["sha3-256", "blake2b-256"])
def test_request_digest_is_the_documented_bytes(hash_name):
    nonce = bytes(range(16))
    tags = [b"\x09" * 8, b"\x01" * 8, b"\x09" * 8]          # unsorted, one duplicate
    want = H[hash_name](b"BEAT-RQ-v1" + bytes([1]) + (5).to_bytes(8, "big") +
                        (9).to_bytes(8, "big") + (2).to_bytes(4, "big") + b"\x01" * 8 +
                        b"\x09" * 8 + bytes(16) + bytes(16) + nonce)
    assert ev.request_digest(hash_name, 1, 5, 9, tags, None, None, nonce) == want
    # counter report: everything zero but the kind and the nonce
    want2 = H[hash_name](b"BEAT-RQ-v1" + bytes([2]) + bytes(8 + 8 + 4 + 16 + 16) + nonce)
    assert ev.request_digest(hash_name, 2, 0, 0, (), None, None, nonce) == want2
    src, dst = b"\x01" * 16, b"\x02" * 16
    want3 = H[hash_name](b"BEAT-RQ-v1" + bytes([3]) + (1).to_bytes(8, "big") +
                         (2).to_bytes(8, "big") + bytes(4) + src + dst + nonce)
    assert ev.request_digest(hash_name, 3, 1, 2, (), src, dst, nonce) == want3
    # every field matters
    assert ev.request_digest(hash_name, 1, 5, 9, tags, None, None, bytes(16)) != want
    assert ev.request_digest(hash_name, 1, 5, 10, tags, None, None, nonce) != want
    assert ev.request_digest(hash_name, 1, 5, 9, tags[:1], None, None, nonce) != want


@pytest.mark.parametrize("args, match", [
    ((1, 0, 1, [b"\x01" * 7], None, None, bytes(16)),
     r"flow_tags\[0\]: 7 bytes \(01010101010101\), must be 8"),
    ((1, 0, 1, [b"\x01" * 8, b"x"], None, None, bytes(16)), r"flow_tags\[1\]: 1 bytes"),
    ((1, 0, 1, (), None, None, bytes(15)), r"nonce: 15 bytes .*must be 16"),
    ((3, 0, 1, (), b"\x01" * 4, bytes(16), bytes(16)), r"src: 4 bytes \(01010101\), must be 16"),
    ((3, 0, 1, (), bytes(16), b"", bytes(16)), r"dst: 0 bytes \(empty\), must be 16"),
    ((4, 0, 1, (), None, None, bytes(16)), r"kind: 4 is not one of \[1, 2, 3, 5, 6\]"),
    ((1, -1, 1, (), None, None, bytes(16)), r"from_ns: -1 is not a u64"),
    ((1, 0, 1 << 64, (), None, None, bytes(16)), r"to_ns: 18446744073709551616 is not a u64"),
    ((1, 0, 1, ["abcdefgh"], None, None, bytes(16)), r"flow_tags\[0\]: str is not bytes"),
])
def test_request_digest_names_a_bad_field(args, match):
    with pytest.raises(ValueError, match=match):
        ev.request_digest("sha3-256", *args)


# -- bytes of a chunk ---------------------------------------------------------------------------

def test_header_is_68_bytes_of_the_documented_fields():
    # "BEAT-EV-v1"(10) kind(1) node_id(8) Q(32) chunk_seq(4) flags(1) t_ns(8) count(4)
    assert ev.HEADER_SIZE == 10 + 1 + 8 + 32 + 4 + 1 + 8 + 4 == 68
    body = ev.encode_chunk(ev.KIND_COUNTERS, 0x0102030405060708, Q0, 7, True, 99, [])
    assert body == (b"BEAT-EV-v1" + b"\x02" + bytes(range(1, 9)) + Q0 + b"\x00\x00\x00\x07" +
                    b"\x01" + (99).to_bytes(8, "big") + bytes(4))


def test_segment_chunk_bytes():
    segs = sample_segments()
    body = ev.encode_chunk(ev.KIND_SEGMENTS, NODE, Q0, 0, False, 5, segs)
    head = b"BEAT-EV-v1" + b"\x01" + NODE.to_bytes(8, "big") + Q0 + bytes(4) + b"\x00" + \
        (5).to_bytes(8, "big") + (2).to_bytes(4, "big")
    s1 = (5).to_bytes(8, "big") + (2).to_bytes(4, "big") + b"\x11" * 32 + \
        (3).to_bytes(8, "big") + (1).to_bytes(8, "big") + (4).to_bytes(8, "big") + b"\x02" + \
        b"\x01" * 32 + b"\x02" * 32 + rec(1) + rec(2)
    s2 = (6).to_bytes(8, "big") + (1).to_bytes(4, "big") + b"\x22" * 32 + \
        b"\xff" * 8 + bytes(8) + bytes(8) + b"\x00" + rec(3)
    assert body == head + s1 + s2
    # records given as a memoryview (as the server reads them from LMDB): the same bytes
    mv = [Segment(s.seg_seq, s.S, s.anchor, memoryview(bytearray(s.records))) for s in segs]
    assert ev.encode_chunk(ev.KIND_SEGMENTS, NODE, Q0, 0, False, 5, mv) == body


def test_receipt_and_counter_chunk_bytes():
    rs = sample_receipts()[:2]
    body = ev.encode_chunk(ev.KIND_RECEIPTS, NODE, Q0, 1, True, 0, rs)
    r1 = struct.pack(">QB16s16sQQ32s", rs[0].epoch_ns, 1, rs[0].src, rs[0].dst, 3, 300,
                     b"\x33" * 32) + struct.pack(">QQQB", 0, 0, 1, 0)
    r2 = struct.pack(">QB16s16sQQ32s", rs[1].epoch_ns, 2, rs[1].src, rs[1].dst, 2, 200,
                     b"\x44" * 32) + b"\xff" * 8 + bytes(17)
    assert body[ev.HEADER_SIZE:] == r1 + r2
    cs = sample_counters()
    body = ev.encode_chunk(ev.KIND_COUNTERS, NODE, Q0, 0, True, 0, cs)
    assert body[ev.HEADER_SIZE:] == b"".join(struct.pack(">6Q", *(c.prev_id, c.next_id, c.packets,
                                                                   c.bytes, c.first_t_ns,
                                                                   c.last_t_ns)) for c in cs)


@pytest.mark.parametrize("items, match", [
    ([Segment(1, b"\x00" * 32, ev.UNANCHORED, b"\x00" * 47)],
     "47 bytes of records, not a multiple of 48"),
    ([Segment(1, b"\x00" * 31, ev.UNANCHORED, b"")], "S of 31 bytes"),
    ([Segment(1, b"\x00" * 32, AnchorRef(NONE, 1, 0, ()), b"")], "unanchored leaf has leaf_index"),
    ([Segment(1, b"\x00" * 32, AnchorRef(0, 0, 2, (b"\x00" * 31,)), b"")], "path hash of 31 bytes"),
])
def test_encode_refuses_what_it_cannot_encode(items, match):
    with pytest.raises(ValueError, match=match):
        ev.encode_chunk(ev.KIND_SEGMENTS, NODE, Q0, 0, True, 0, items)


# -- round trips (hypothesis) -------------------------------------------------------------------

u64 = st.integers(0, NONE)
h32 = st.binary(min_size=32, max_size=32)
anchors = st.one_of(
    st.just(ev.UNANCHORED),
    st.integers(1, 1 << 40).flatmap(lambda size: st.builds(
        AnchorRef, st.integers(0, NONE - 1), st.integers(0, size - 1), st.just(size),
        st.lists(h32, max_size=40).map(tuple))))


@st.composite
def segment_lists(draw):
    seqs = sorted(draw(st.sets(u64, max_size=6)))
    return [Segment(s, draw(h32), draw(anchors),
                    draw(st.binary(max_size=8 * 48).map(lambda b: b[:len(b) // 48 * 48])))
            for s in seqs]


@st.composite
def counter_lists(draw):
    keys = sorted(draw(st.sets(st.tuples(u64, u64), max_size=8)))
    return [Counter(p, n, draw(u64), draw(u64), draw(u64), draw(u64)) for p, n in keys]


@st.composite
def receipt_lists(draw):
    keys = sorted(draw(st.sets(st.tuples(u64, st.sampled_from((1, 2))), max_size=6)))
    b16 = st.binary(min_size=16, max_size=16)
    return [Receipt(e, r, draw(b16), draw(b16), draw(u64), draw(u64), draw(h32), draw(anchors))
            for e, r in keys]


@SETTINGS
@given(kind_items=st.one_of(st.tuples(st.just(1), segment_lists()),
                            st.tuples(st.just(2), counter_lists()),
                            st.tuples(st.just(3), receipt_lists())),
       node=u64, q=h32, seq=st.integers(0, (1 << 32) - 1), last=st.booleans(), t=u64)
def test_round_trip(kind_items, node, q, seq, last, t):
    kind, items = kind_items
    body = ev.encode_chunk(kind, node, q, seq, last, t, items)
    header, got = ev.decode_chunk(body)
    assert header == ChunkHeader(kind, node, q, seq, last, t, len(items))
    assert got == items
    for g in got:                       # records and hashes come back as bytes, not views
        for field in ("records", "S", "R"):
            if hasattr(g, field):
                assert type(getattr(g, field)) is bytes


# -- malformed bodies ---------------------------------------------------------------------------

def _bodies():
    return [ev.encode_chunk(1, NODE, Q0, 0, True, 1, sample_segments()),
            ev.encode_chunk(2, NODE, Q0, 0, True, 1, sample_counters()),
            ev.encode_chunk(3, NODE, Q0, 2, False, 1, sample_receipts()),
            ev.encode_chunk(1, NODE, Q0, 0, True, 1, [])]


@pytest.mark.parametrize("body", _bodies(), ids=["segments", "counters", "receipts", "empty"])
def test_every_truncation_is_malformed(body):
    ev.decode_chunk(body)
    for n in range(len(body)):
        with pytest.raises(MalformedEvidence):
            ev.decode_chunk(body[:n])
    with pytest.raises(MalformedEvidence, match=r"1 bytes after its \d+ items"):
        ev.decode_chunk(body + b"\x00")


@SETTINGS
@given(st.binary(max_size=600))
def test_garbage_never_crashes(data):
    for body in (data, b"BEAT-EV-v1" + data, _bodies()[0][:51] + data):
        try:
            ev.decode_chunk(body)
        except MalformedEvidence as exc:
            assert str(exc)


@SETTINGS
@given(which=st.integers(0, 3), pos=st.integers(0, 10**6), value=st.integers(0, 255))
def test_byte_flips_never_crash(which, pos, value):
    body = bytearray(_bodies()[which])
    body[pos % len(body)] = value
    try:
        ev.decode_chunk(bytes(body))
    except MalformedEvidence:
        pass


def _with(body, off, data):
    return body[:off] + data + body[off + len(data):]


@pytest.mark.parametrize("mutate, match", [
    (lambda b: _with(b, 0, b"BEAT-EV-v2"), r"magic b'BEAT-EV-v2', expected b'BEAT-EV-v1'"),
    (lambda b: _with(b, 10, b"\x07"), r"kind 7 is not one of \[1, 2, 3, 4, 6\]"),
    (lambda b: _with(b, 10, b"\x05"), r"kind 5 is not one of \[1, 2, 3, 4, 6\]"),
    (lambda b: _with(b, 55, b"\x03"), r"flags 0x03 has bits other than bit 0"),
    (lambda b: _with(b, 64, (3).to_bytes(4, "big")), r"segment 2: needs 44 bytes"),
    (lambda b: _with(b, 68 + 44, b"\xff" * 8 + (1).to_bytes(8, "big")),
     r"segment 0 \(seg_seq 5\) anchor ref: unanchored \(batch_seq NONE\) but leaf_index 1"),
    (lambda b: _with(b, 68 + 44 + 8, (4).to_bytes(8, "big")),
     r"segment 0 \(seg_seq 5\) anchor ref: leaf_index 4 is not below tree_size 4 \(batch 3\)"),
    (lambda b: _with(b, 68 + 8, (200).to_bytes(4, "big")),
     r"segment 0 \(seg_seq 5\): 200 records: needs 9600 bytes"),
    (lambda b: _with(b, 68 + 44 + 25 + 64 + 96, (5).to_bytes(8, "big")),
     r"segment 1 \(seg_seq 5\): not after seg_seq 5"),
])
def test_malformed_segments_are_named(mutate, match):
    body = ev.encode_chunk(1, NODE, Q0, 0, True, 1, sample_segments())
    with pytest.raises(MalformedEvidence, match=match):
        ev.decode_chunk(mutate(body))


def test_malformed_receipts_and_counters_are_named():
    body = ev.encode_chunk(3, NODE, Q0, 0, True, 1, sample_receipts())
    with pytest.raises(MalformedEvidence, match=r"receipt 0 \(epoch_ns \d+, role 3\): role 3 is "
                                                r"not 1 \(ingress\) or 2 \(egress\)"):
        ev.decode_chunk(_with(body, 68 + 8, b"\x03"))
    swapped = sample_receipts()
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(MalformedEvidence, match=r"receipt 1 .*not after epoch_ns \d+, role 2"):
        ev.decode_chunk(ev.encode_chunk(3, NODE, Q0, 0, True, 1, swapped))
    cs = sample_counters()
    with pytest.raises(MalformedEvidence, match=r"counter 1 \(0, 2\): not after \(3, 2\)"):
        ev.decode_chunk(ev.encode_chunk(2, NODE, Q0, 0, True, 1, cs[2:] + cs[:1] + cs[1:2]))
    with pytest.raises(MalformedEvidence, match=r"chunk body: str is not bytes"):
        ev.decode_chunk("BEAT")


# -- signed chunks ------------------------------------------------------------------------------

def _signed(kind=1, node=NODE, q=Q0, seq=0, last=True, items=None, key=KEY):
    items = sample_segments() if items is None else items
    body = ev.encode_chunk(kind, node, q, seq, last, 1, items)
    return body, ev.sign_body(key, body)


def test_open_chunk_accepts_the_right_chunk():
    body, sig = _signed()
    header, items = ev.open_chunk(body, sig, KEY.public, node_id=NODE, kind=1, Q=Q0, chunk_seq=0)
    assert header.last and items == sample_segments()
    assert ev.verify_signature(KEY.public, body, sig)


@pytest.mark.parametrize("change, exc, match", [
    (dict(pubkey=OTHER.public), BadSignature,
     "does not verify with public key " + OTHER.public.hex()),
    (dict(body=lambda b: b[:-1] + bytes([b[-1] ^ 1])), BadSignature, "does not verify"),
    (dict(sig=lambda s: s[:63]), BadSignature, "a signature of 63 bytes"),
    (dict(node_id=NODE + 1), WrongAnswer, f"signed for node_id {NODE}, asked node {NODE + 1}"),
    (dict(kind=3), WrongAnswer, r"kind 1 \(proof segments\), asked 3 \(receipts\)"),
    (dict(Q=b"\x00" * 32), WrongAnswer, r"answers request 5a5a.*asked 0000.*replayed"),
    (dict(chunk_seq=1), WrongAnswer, "chunk_seq 0 where 1 was due"),
])
def test_open_chunk_refuses(change, exc, match):
    body, sig = _signed()
    if "body" in change:
        body = change["body"](body)
    if "sig" in change:
        sig = change["sig"](sig)
    kw = dict(node_id=NODE, kind=1, Q=Q0, chunk_seq=0)
    kw.update({k: v for k, v in change.items() if k in kw})
    with pytest.raises(exc, match=match):
        ev.open_chunk(body, sig, change.get("pubkey", KEY.public), **kw)
    assert issubclass(exc, EvidenceError)


def test_a_signed_malformed_body_is_malformed_not_crashing():
    body = b"BEAT-EV-v1\x01" + bytes(40)
    with pytest.raises(MalformedEvidence, match="chunk header: needs 68 bytes"):
        ev.open_chunk(body, KEY.sign(body), KEY.public, node_id=NODE, kind=1, Q=Q0, chunk_seq=0)


def test_answer_reader_sequence_and_completion():
    segs = sample_segments()
    c0 = _signed(seq=0, last=False, items=segs[:1])
    c1 = _signed(seq=1, last=True, items=segs[1:])
    # (the v1 sequence rules, without the coverage that ends a segments answer: see below)
    Reader = lambda *a: ev.AnswerReader(*a, coverage=False)     # noqa: E731
    r = Reader(KEY.public, NODE, 1, Q0)
    assert r.feed(*c0) == segs[:1]
    with pytest.raises(IncompleteAnswer, match="ended after 1 chunks without its last chunk"):
        r.finish()
    assert r.feed(*c1) == segs[1:]
    r.finish()
    with pytest.raises(IncompleteAnswer, match=r"a chunk \(2\) after the last one"):
        r.feed(*c1)
    # a chunk skipped, or the same chunk twice
    r = Reader(KEY.public, NODE, 1, Q0)
    with pytest.raises(WrongAnswer, match="chunk_seq 1 where 0 was due"):
        r.feed(*c1)
    r = Reader(KEY.public, NODE, 1, Q0)
    r.feed(*c0)
    with pytest.raises(WrongAnswer, match="chunk_seq 0 where 1 was due"):
        r.feed(*c0)
    # items out of order across chunks: seg_seq 6 then 5
    r = Reader(KEY.public, NODE, 1, Q0)
    r.feed(*_signed(seq=0, last=False, items=segs[1:]))
    with pytest.raises(WrongAnswer, match="starts at 5, not after 6"):
        r.feed(*_signed(seq=1, last=True, items=segs[:1]))
    # an empty answer is one last chunk with no item
    r = Reader(KEY.public, NODE, 1, Q0)
    assert r.feed(*_signed(items=[])) == []
    r.finish()


def test_segment_and_receipt_leaves():
    s = sample_segments()[0]
    assert s.count == 2 and s.leaf == b"\x02" + s.S and s.anchor.anchored
    r = sample_receipts()[1]
    assert r.leaf == b"\x01" + r.R and not r.anchor.anchored


def test_signatures_are_ed25519_over_the_body():
    body, sig = _signed()
    # an independent Ed25519 implementation (OpenSSL, through cryptography) agrees
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    Ed25519PublicKey.from_public_bytes(KEY.public).verify(sig, body)
    assert len(sig) == 64
    assert not ev.verify_signature(KEY.public, body + b"x", sig)
    assert not ev.verify_signature(KEY.public, body, os.urandom(64))


# -- kind 4 (coverage) and request kind 5 (GetSegments) ------------------------------------------

def sample_coverage(index=True, gaps=True, first=5):
    entries = (ev.IndexEntry(5, 2, 1_700_000_000_000_000_001, 1_700_000_000_000_000_002,
                             b"\x11" * 32, True, AnchorRef(3, 1, 4, path(2))),
               ev.IndexEntry(6, 1, 1_700_000_000_000_000_003, 1_700_000_000_000_000_003,
                             b"\x22" * 32, False, ev.UNANCHORED),
               ev.IndexEntry(7, 0, 0, 0, b"\x33" * 32, False, ev.UNANCHORED))
    gs = (ev.CaptureGap(10, 20, 7, ev.GAP_KERNEL_DROPS, "eth0"),
          ev.CaptureGap(10, 30, 0, ev.GAP_CAPTURE_STOPPED, ""),
          ev.CaptureGap(15, 16, 1, ev.GAP_KERNEL_DROPS, "any"))
    return ev.Coverage(ring_oldest_seq=3, next_seg_seq=9, anchored_segments=6, ring_wraps=3,
                       oldest_t_ns=11, newest_t_ns=12, anchored_until_t_ns=13,
                       open_first_t_ns=14, threshold_ns=3600 * 10**9, index_first_seq=first,
                       index=entries if index else (), gaps=gs if gaps else ())


def test_get_segments_request_digest_is_the_documented_bytes():
    nonce = bytes(range(16))
    want = H["sha3-256"](b"BEAT-RQ-v1" + bytes([5]) + bytes(16) + (3).to_bytes(4, "big") +
                         (2).to_bytes(8, "big") + (9).to_bytes(8, "big") +
                         (2**40).to_bytes(8, "big") + bytes(32) + nonce)
    # unsorted, one duplicate: Q binds the sorted, deduplicated seg_seqs
    assert ev.segments_request_digest("sha3-256", [9, 2**40, 2, 9], nonce) == want
    assert ev.normalise_seg_seqs([9, 2**40, 2, 9]) == (2, 9, 2**40)
    assert ev.segments_request_digest("sha3-256", [9, 2], nonce) != want
    with pytest.raises(ValueError, match=r"seg_seqs\[1\]: -1 is not a u64"):
        ev.segments_request_digest("sha3-256", [1, -1], nonce)
    with pytest.raises(ValueError, match=r"seg_seqs\[0\]: 18446744073709551616 is not a u64"):
        ev.normalise_seg_seqs([1 << 64])


def test_coverage_chunk_bytes():
    cov = sample_coverage()
    body = ev.encode_chunk(ev.KIND_COVERAGE, NODE, Q0, 2, True, 77, cov)
    head = b"BEAT-EV-v1" + b"\x04" + NODE.to_bytes(8, "big") + Q0 + (2).to_bytes(4, "big") + \
        b"\x01" + (77).to_bytes(8, "big") + (3).to_bytes(4, "big")
    fixed = b"".join(v.to_bytes(8, "big") for v in (3, 9, 6, 3, 11, 12, 13, 14, 3600 * 10**9, 5))
    e1 = (5).to_bytes(8, "big") + (2).to_bytes(4, "big") + \
        (1_700_000_000_000_000_001).to_bytes(8, "big") + \
        (1_700_000_000_000_000_002).to_bytes(8, "big") + b"\x11" * 32 + b"\x01" + \
        (3).to_bytes(8, "big") + (1).to_bytes(8, "big") + (4).to_bytes(8, "big") + b"\x02" + \
        b"\x01" * 32 + b"\x02" * 32
    e2 = (6).to_bytes(8, "big") + (1).to_bytes(4, "big") + \
        (1_700_000_000_000_000_003).to_bytes(8, "big") * 2 + b"\x22" * 32 + b"\x00" + \
        b"\xff" * 8 + bytes(17)
    e3 = (7).to_bytes(8, "big") + bytes(4) + bytes(16) + b"\x33" * 32 + b"\x00" + b"\xff" * 8 + \
        bytes(17)
    gaps = (3).to_bytes(4, "big") + \
        struct.pack(">QQQB", 10, 20, 7, 1) + b"eth0" + bytes(12) + \
        struct.pack(">QQQB", 10, 30, 0, 2) + bytes(16) + \
        struct.pack(">QQQB", 15, 16, 1, 1) + b"any" + bytes(13)
    assert ev.COVERAGE_FIXED_SIZE == 80 and ev.INDEX_ENTRY_SIZE == 61 and ev.GAP_SIZE == 41
    assert body == head + fixed + e1 + e2 + e3 + gaps
    header, got = ev.decode_chunk(body)
    assert header == ChunkHeader(4, NODE, Q0, 2, True, 77, 3)
    assert got == cov and got.t_ns == 77
    # the empty coverage of a GetSegments answer: the fixed fields, no entry, no gap
    empty = ev.encode_chunk(4, NODE, Q0, 0, True, 1, sample_coverage(False, False, 0))
    assert len(empty) == 68 + 80 + 4 and empty.endswith(bytes(12))


@pytest.mark.parametrize("cov, match", [
    (dataclasses.replace(sample_coverage(), gaps=(ev.CaptureGap(1, 2, 0, 3, ""),)),
     r"capture gap \[1, 2\]: reason 3 is not one of \[1, 2\]"),
    (dataclasses.replace(sample_coverage(), gaps=(ev.CaptureGap(2, 1, 0, 1, ""),)),
     r"capture gap \[2, 1\]: from_ns after to_ns"),
    (dataclasses.replace(sample_coverage(), gaps=(ev.CaptureGap(1, 2, 0, 1, "x" * 17),)),
     r"interface 'xxxxxxxxxxxxxxxxx' is not up to 16 printable ASCII"),
    (dataclasses.replace(sample_coverage(), gaps=(ev.CaptureGap(1, 2, 0, 1, "et h"),)),
     r"interface 'et h' is not up to 16"),
    (dataclasses.replace(sample_coverage(), index=(ev.IndexEntry(1, 1, 1, 1, b"\x00", False,
                                                                 ev.UNANCHORED),)),
     r"index entry 1: S of 1 bytes"),
    ([sample_coverage()], r"kind 4 \(coverage\): items must be one Coverage, not list"),
])
def test_encode_refuses_a_coverage_it_cannot_encode(cov, match):
    with pytest.raises(ValueError, match=match):
        ev.encode_chunk(ev.KIND_COVERAGE, NODE, Q0, 0, True, 0, cov)


@st.composite
def coverages(draw):
    seqs = sorted(draw(st.sets(u64, max_size=5)))
    entries = []
    for s in seqs:
        n = draw(st.integers(0, (1 << 32) - 1))
        if n:
            a, b = sorted((draw(u64), draw(u64)))
            entries.append(ev.IndexEntry(s, n, a, b, draw(h32), draw(st.booleans()),
                                         draw(anchors)))
        else:
            entries.append(ev.IndexEntry(s, 0, 0, 0, draw(h32), False, draw(anchors)))
    names = st.text(alphabet=[chr(c) for c in range(0x21, 0x7f)], max_size=16)
    gaps = set()
    for _ in range(draw(st.integers(0, 4))):
        a, b = sorted((draw(u64), draw(u64)))
        gaps.add((a, b, draw(st.sampled_from((1, 2))), draw(names), draw(u64)))
    gs = tuple(ev.CaptureGap(a, b, f, r, i) for a, b, r, i, f in sorted(gaps))
    nxt = draw(u64)
    return ev.Coverage(draw(st.integers(0, nxt)), nxt, draw(st.integers(0, nxt)), draw(u64),
                       draw(u64), draw(u64), draw(u64), draw(u64), draw(u64), draw(u64),
                       index=tuple(entries), gaps=gs)


@SETTINGS
@given(cov=coverages(), node=u64, q=h32, seq=st.integers(0, (1 << 32) - 1), last=st.booleans(),
       t=u64)
def test_coverage_round_trip(cov, node, q, seq, last, t):
    body = ev.encode_chunk(ev.KIND_COVERAGE, node, q, seq, last, t, cov)
    header, got = ev.decode_chunk(body)
    assert header == ChunkHeader(4, node, q, seq, last, t, len(cov.index))
    assert got == cov and got.t_ns == t
    for e in got.index:
        assert type(e.S) is bytes


def _coverage_bodies():
    return [ev.encode_chunk(4, NODE, Q0, 1, True, 1, sample_coverage()),
            ev.encode_chunk(4, NODE, Q0, 0, True, 1, sample_coverage(False, False))]


@pytest.mark.parametrize("body", _coverage_bodies(), ids=["coverage", "empty-coverage"])
def test_every_truncation_of_a_coverage_is_malformed(body):
    ev.decode_chunk(body)
    for n in range(len(body)):
        with pytest.raises(MalformedEvidence):
            ev.decode_chunk(body[:n])
    with pytest.raises(MalformedEvidence, match=rf"1 bytes after its 3 items \(offset {len(body)}\)"
                       if body == _coverage_bodies()[0] else "1 bytes after"):
        ev.decode_chunk(body + b"\x00")


@SETTINGS
@given(pos=st.integers(0, 10**6), value=st.integers(0, 255), data=st.binary(max_size=300))
def test_coverage_flips_and_garbage_never_crash(pos, value, data):
    body = bytearray(_coverage_bodies()[0])
    body[pos % len(body)] = value
    for b in (bytes(body), _coverage_bodies()[0][:148] + data):
        try:
            ev.decode_chunk(b)
        except MalformedEvidence as exc:
            assert str(exc)


C_FIXED = 68                     # the coverage fields start after the header
C_E0 = 68 + 80                   # index entry 0
C_E1 = C_E0 + 61 + 25 + 64       # index entry 1 (entry 0 has a path of 2 hashes)
C_E2 = C_E1 + 61 + 25
C_GAPS = C_E2 + 61 + 25          # n_gaps, then the gaps


@pytest.mark.parametrize("mutate, match", [
    (lambda b: _with(b, C_FIXED, (10).to_bytes(8, "big")),
     r"coverage fields: ring_oldest_seq 10 is after next_seg_seq 9 \(offset 68\)"),
    (lambda b: _with(b, C_FIXED + 16, (10).to_bytes(8, "big")),
     r"coverage fields: anchored_segments 10 is more than next_seg_seq 9 \(offset 84\)"),
    (lambda b: _with(b, C_E1, (5).to_bytes(8, "big")),
     rf"index entry 1 \(seg_seq 5\): not after seg_seq 5 .* \(offset {C_E1}\)"),
    (lambda b: _with(b, C_E0 + 60, b"\x03"),
     rf"index entry 0 \(seg_seq 5\): flags 0x03 has bits other than bit 0 .*\(offset {C_E0 + 60}\)"),
    (lambda b: _with(b, C_E0 + 12, (2 * 10**18).to_bytes(8, "big")),
     r"index entry 0 \(seg_seq 5\): first_t_ns 2000000000000000000 is after last_t_ns"),
    (lambda b: _with(b, C_E2 + 12, (1).to_bytes(8, "big") * 2),
     r"index entry 2 \(seg_seq 7\): no records, but first_t_ns 1, last_t_ns 1, flags 0x00"),
    (lambda b: _with(b, C_E1 + 61, (7).to_bytes(8, "big")),
     r"index entry 1 \(seg_seq 6\) anchor ref: leaf_index 0 is not below tree_size 0 \(batch 7\)"),
    (lambda b: _with(b, C_GAPS, (4).to_bytes(4, "big")),
     r"coverage: 4 capture gaps: needs 164 bytes"),
    (lambda b: _with(b, C_GAPS + 4 + 24, b"\x09"),
     rf"capture gap 0 \[10, 20\]: reason 9 is not 1 \(kernel drops\) or 2 .*\(offset "
     rf"{C_GAPS + 4 + 24}\)"),
    (lambda b: _with(b, C_GAPS + 4, (21).to_bytes(8, "big")),
     r"capture gap 0 \[21, 20\]: from_ns is after to_ns"),
    (lambda b: _with(b, C_GAPS + 4 + 25, b"et\x00h"),
     r"capture gap 0 \[10, 20\]: interface 6574006800.* is not printable ASCII"),
    (lambda b: _with(b, C_GAPS + 4 + 41 + 8, (19).to_bytes(8, "big")),
     r"capture gap 1 \[10, 19\]: not after gap 0 \(sorted by from_ns, to_ns, reason, interface\)"),
])
def test_malformed_coverage_is_named(mutate, match):
    body = ev.encode_chunk(4, NODE, Q0, 0, True, 1, sample_coverage())
    with pytest.raises(MalformedEvidence, match=match):
        ev.decode_chunk(mutate(body))


def _cov_signed(seq, last, cov=None, key=KEY, q=Q0):
    body = ev.encode_chunk(4, NODE, q, seq, last, 100 + seq, cov or sample_coverage())
    return body, ev.sign_body(key, body)


def test_a_segments_answer_ends_with_its_coverage():
    segs = sample_segments()
    cov = sample_coverage()
    # segments, then the coverage (the last flag on it)
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    assert r.feed(*_signed(seq=0, last=False, items=segs)) == segs
    assert r.feed(*_cov_signed(1, True)) == []
    r.finish()
    assert r.coverage == cov and r.coverage.t_ns == 101
    # an empty answer: the coverage alone, signed
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    assert r.feed(*_cov_signed(0, True, sample_coverage(False))) == []
    r.finish()
    assert r.coverage.index == () and r.coverage.gaps == cov.gaps
    # the coverage split over chunks: index entries and gaps go on in order
    a = dataclasses.replace(cov, index=cov.index[:1], gaps=())
    b = dataclasses.replace(cov, index=cov.index[1:])
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    r.feed(*_cov_signed(0, False, a))
    r.feed(*_cov_signed(1, True, b))
    r.finish()
    assert r.coverage == cov
    # the v1 answer (segments with the last flag, no coverage): not complete evidence any more
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    with pytest.raises(WrongAnswer, match="chunk 0 of node 42: the answer ends without its "
                                          r"coverage \(kind 4\) chunk"):
        r.feed(*_signed(seq=0, last=True, items=segs))
    # segments after the coverage
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    r.feed(*_cov_signed(0, False))
    with pytest.raises(WrongAnswer, match=r"chunk 1 of node 42: proof segments after the "
                                          "coverage"):
        r.feed(*_signed(seq=1, last=False, items=segs))
    # coverage chunks that disagree on the fixed fields, or go back in the index
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    r.feed(*_cov_signed(0, False, a))
    with pytest.raises(WrongAnswer, match="coverage fields ring_wraps, threshold_ns differ"):
        r.feed(*_cov_signed(1, True, dataclasses.replace(b, ring_wraps=4, threshold_ns=1)))
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    r.feed(*_cov_signed(0, False, b))
    with pytest.raises(WrongAnswer, match="index starts at seg_seq 5, not after 7"):
        r.feed(*_cov_signed(1, True, a))
    # cut short: no coverage, or a coverage chunk without the last flag
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    r.feed(*_signed(seq=0, last=False, items=segs))
    with pytest.raises(IncompleteAnswer, match="cut short"):
        r.finish()
    r.feed(*_cov_signed(1, False))
    with pytest.raises(IncompleteAnswer, match="cut short"):
        r.finish()
    assert r.coverage is None
    # a coverage chunk of another request, or signed by another key
    r = ev.AnswerReader(KEY.public, NODE, 1, Q0)
    with pytest.raises(WrongAnswer, match="answers request 0000"):
        r.feed(*_cov_signed(0, True, q=bytes(32)))
    with pytest.raises(BadSignature):
        ev.AnswerReader(KEY.public, NODE, 1, Q0).feed(*_cov_signed(0, True, key=OTHER))
    # where no coverage belongs (receipts), a coverage chunk is the wrong kind
    with pytest.raises(WrongAnswer, match=r"kind 4 \(coverage\), asked 3 \(receipts\)"):
        ev.AnswerReader(KEY.public, NODE, 3, Q0).feed(*_cov_signed(0, True))
    with pytest.raises(WrongAnswer, match=r"kind 2 \(counter report\), asked 1 \(proof "
                                          r"segments\) or 4 \(coverage\)"):
        ev.AnswerReader(KEY.public, NODE, 1, Q0).feed(*_signed(kind=2, items=sample_counters()))


def test_entry_and_gap_helpers():
    cov = sample_coverage()
    e = cov.index[0]
    assert e.leaf == b"\x02" + e.S
    assert e.overlaps(e.last_t_ns, e.last_t_ns + 5) and not e.overlaps(0, e.first_t_ns - 1)
    assert not cov.index[2].overlaps(0, NONE)                  # no records: overlaps nothing
    g = cov.gaps[0]
    assert g.reason_name == "kernel drops" and g.overlaps(20, 40) and not g.overlaps(21, 40)
    assert dataclasses.replace(cov, t_ns=11 + 3600 * 10**9 - 1).ring_short
    assert not dataclasses.replace(cov, t_ns=11 + 3600 * 10**9).ring_short
    assert not dataclasses.replace(cov, ring_wraps=0, t_ns=12).ring_short
