"""beatd/interrogation.py against real stores, real gRPC over mutual TLS on 127.0.0.1.

Two stores written by the real pipeline: ``real`` (every capture of tests/data/pcaps/real replayed
by beatd.replay, 16 records per segment, anchored on a LocalLedger by the Batcher: the first batches
anchored, one batch pending, the newest leaves in no batch) and ``big`` (half a million records of
synthetic edge traffic through fastpath.Pipeline + Store.commit, 1024 per segment).

Checked: every segment returned verifies (S recomputed here with hashlib, its inclusion proof
against the anchor's root read from the ledger) and is exactly the ring's; unanchored leaves say so;
windows and flow tags select exactly what a brute-force scan of the store selects; counters and
receipts are the store's (receipts proven too); each bad request of the error table gets its status
code and message; max_streams; an answer running past max_stream_s is cancelled; health and
reflection answer; no plaintext; a client that stops reading does not stop the writer committing
and pins no read transaction; a device key other than the ledger's is a BadSignature. Every
segments answer ends with the signed coverage: an empty window is the coverage alone; the index
lists every held segment from the first to the last overlapping the window, flagged as sent, S and
times the store's, anchor refs proven; a long index spans several chunks; GetSegments answers the
named segments and the ring; max_index_entries and max_seg_seqs; capture gaps of the window.
"""
import collections
import hashlib
import os
import struct
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import fastpath
from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_lab import ca as certs
from beatd import config as bconfig
from beatd.interrogation import InterrogationServer, Limits
from beatd.replay import replay
from beatd.store import Store
from benchmarks.pipeline import NEXT, OWN, build_frames
from conftest import require_real_pcaps, wait_for
from governance.client import BadSignature, InterrogationClient, NodeUnreachable, RequestRejected
from ledger_client import merkle
from ledger_client.batcher import Batcher
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Node

NODE = 3
BIG_NODE = 1
H = "sha3-256"
NONE = (1 << 64) - 1
MAX_LEAVES = 50
ANCHORED_BATCHES = 5
WIDE = Limits(max_window_s=1e11)              # the real captures span years (> 2^64 ns)
BIG_T0 = 1_700_000_000_000_000_000
BIG_RECORDS = 500_000


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs.make_ca(d)
    for node in (NODE, BIG_NODE):
        certs.make_device(d, d, node, ips=["127.0.0.1"])
    certs.make_governance(d, d)
    return d


def _replay_all(store, hash_name, node=NODE):
    cfg = bconfig.from_dict({"node_id": node, "hash": hash_name,
                             "store": {"ring_size": 64 << 20},
                             "governance": {"segment_records": 16}})
    for path in require_real_pcaps():
        replay(path, cfg, store)


class Real:
    """The replayed store, its ledger and keys."""

    def __init__(self, tmp):
        self.store = Store(tmp / "store", NODE, H, 64 << 20)
        _replay_all(self.store, H)
        assert self.store.verify() == []
        self.gov, self.dev = DeviceKey.generate(), DeviceKey.generate()
        self.ledger = LocalLedger(str(tmp / "ledger.mdb"), hash_name=H,
                                  governance_pubkey=self.gov)
        self.ledger.register_node(Node(NODE, "op-3", self.dev.public, None), signer=self.gov)
        b = Batcher(self.store, self.ledger, NODE, H, self.dev, 10.0, max_leaves=MAX_LEAVES)
        for _ in range(ANCHORED_BATCHES):
            assert b.build() is not None
        assert b.submit() == list(range(ANCHORED_BATCHES))
        assert b.build() is not None                     # one batch pending, never submitted
        self.anchored_leaves = ANCHORED_BATCHES * MAX_LEAVES
        self.leaves = self.store.outbox()
        assert len(self.leaves) > (ANCHORED_BATCHES + 1) * MAX_LEAVES, "some leaves in no batch"
        self.leaf_of = {bytes([t]) + v: seq for seq, t, v in self.leaves}
        self.segments = self.store.segments()
        self.commitments = {c[0]: c for c in self.store.commitments()}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    r = Real(tmp_path_factory.mktemp("real"))
    yield r
    r.ledger.close()
    r.store.close()


def _edge_frames(n_packets, t_shift=0):
    buf, desc = build_frames(2 * n_packets, flows=1000, desc_pack=fastpath.pack_desc)
    if t_shift:
        d = bytearray(desc)
        for off in range(0, len(d), fastpath.DESC_SIZE):
            struct.pack_into("<Q", d, off, struct.unpack_from("<Q", d, off)[0] + t_shift)
        desc = bytes(d)
    return buf, desc


def _feed(store, pipe, buf, desc, batch=8192):
    mv = memoryview(desc)
    for i in range(0, len(desc) // fastpath.DESC_SIZE, batch):
        pipe.feed(buf, mv[i * fastpath.DESC_SIZE:(i + batch) * fastpath.DESC_SIZE])
        store.commit(pipe.take())


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("big"), BIG_NODE, H, 256 << 20)
    pipe = fastpath.Pipeline(BIG_NODE, hash_name=H, own_macs=[OWN], neighbours={NEXT: 2})
    pipe.resume(**store.resume_state())
    _feed(store, pipe, *_edge_frames(BIG_RECORDS))
    assert store.stats()["records"] >= BIG_RECORDS - 1024
    yield store, pipe
    store.close()


class Served:
    def __init__(self, store, key, pki, node, limits=None, **kw):
        self.key = key
        self.node = node
        self.pki = pki
        self.server = InterrogationServer(store, key, ca=pki / "ca.crt",
                                          cert=pki / f"device-{node}.crt",
                                          private_key=pki / f"device-{node}.key",
                                          listen="127.0.0.1:0", limits=limits, **kw).start()
        self.endpoint = f"127.0.0.1:{self.server.port}"

    def client(self, pubkey=None, timeout=30):
        return InterrogationClient(self.endpoint, self.pki / "ca.crt",
                                   self.pki / "governance.crt", self.pki / "governance.key",
                                   self.server.servicer.hash_name, self.node,
                                   pubkey or self.key.public, timeout=timeout)

    def channel(self):
        rd = lambda name: (self.pki / name).read_bytes()     # noqa: E731
        creds = grpc.ssl_channel_credentials(rd("ca.crt"), rd("governance.key"),
                                             rd("governance.crt"))
        return grpc.secure_channel(self.endpoint, creds,
                                   options=[("grpc.max_receive_message_length", 64 << 20)])

    def stop(self):
        self.server.stop(0)


@pytest.fixture(scope="module")
def wide(real, pki):
    s = Served(real.store, real.dev, pki, NODE, WIDE, threshold_ns=3600 * 10**9,
               neighbours=lambda: {b"\x02\x00\x00\x00\x00\x07": 7, b"\x02\x00\x00\x00\x00\x05": 5})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def default(real, pki):
    s = Served(real.store, real.dev, pki, NODE)
    yield s
    s.stop()


# -- independent checks -------------------------------------------------------------------------

def sha3(b):
    return hashlib.sha3_256(b).digest()


def segment_S(node, seg):
    """SPEC's S, computed here (not with the fast path)."""
    return sha3(b"BEAT-SG-v1" + node.to_bytes(8, "big") + seg.seg_seq.to_bytes(8, "big") +
                seg.count.to_bytes(8, "big") + seg.records)


def check_anchor(real, leaf, ref):
    """The leaf's anchor ref: anchored exactly when its leaf is in an anchored batch, and then
    its path proves it against the root and tree size the LEDGER has."""
    leaf_seq = real.leaf_of[leaf]
    if leaf_seq >= real.anchored_leaves:
        assert ref == ev.UNANCHORED, f"leaf {leaf_seq} is in no anchored batch"
        return False
    assert ref.batch_seq == leaf_seq // MAX_LEAVES
    assert ref.leaf_index == leaf_seq % MAX_LEAVES
    a = real.ledger.get_anchor(NODE, ref.batch_seq)
    assert ref.tree_size == a.tree_size
    assert merkle.verify_inclusion(H, leaf, ref.leaf_index, a.tree_size, list(ref.path), a.root)
    return True


def overlapping(real, lo, hi):
    return [seq for seq, _, _, _ in real.segments
            if real.commitments[seq][3] <= hi and real.commitments[seq][4] >= lo]


def holding(real, seqs, tags):
    segs = dict((s[0], s[3]) for s in real.segments)
    return [seq for seq in seqs
            if any(segs[seq][o + 40:o + 48] in tags for o in range(0, len(segs[seq]), 48))]


# -- proof segments -----------------------------------------------------------------------------

def test_every_segment_verifies(real, wide):
    with wide.client() as c:
        segs = c.proof_segments(0, NONE - 1)
    assert [(s.seg_seq, s.S, s.records) for s in segs] == \
        [(seq, S, records) for seq, _, S, records in real.segments]
    anchored = 0
    for s in segs:
        assert segment_S(NODE, s) == s.S
        anchored += check_anchor(real, s.leaf, s.anchor)
        bad = bytearray(s.records)
        bad[0] ^= 1
        assert segment_S(NODE, ev.Segment(s.seg_seq, s.S, s.anchor, bytes(bad))) != s.S
    assert 0 < anchored < len(segs)


@pytest.mark.parametrize("pick", ["one segment", "one ns", "a span", "before all", "after all"])
def test_window_selects_the_overlapping_segments(real, default, pick):
    c = real.commitments
    seqs = [s[0] for s in real.segments]
    mid = seqs[len(seqs) // 2]
    lo, hi = {"one segment": (c[mid][3], c[mid][4]),
              "one ns": (c[mid][3], c[mid][3]),
              "a span": (c[mid][3], c[mid][3] + 1800 * 10**9),
              "before all": (1, 2),
              "after all": (NONE - 10, NONE - 1)}[pick]
    with default.client() as cl:
        got = cl.proof_segments(lo, hi)
    assert [s.seg_seq for s in got] == overlapping(real, lo, hi)
    if pick.startswith("one"):
        assert mid in [s.seg_seq for s in got]
    for s in got:
        assert segment_S(NODE, s) == s.S


def _flow_tags(real):
    counts = {}
    for r in real.store.iter_records():            # brute force over every stored record
        counts[r[40:48]] = counts.get(r[40:48], 0) + 1
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    return ordered, counts


@pytest.mark.parametrize("which", ["most frequent", "rare", "three", "sixty-four"])
def test_flow_tags_select_exactly_the_segments_holding_them(real, wide, which):
    ordered, counts = _flow_tags(real)
    rare = [t for t in ordered if counts[t] == 1]
    tags = {"most frequent": ordered[:1], "rare": rare[:1], "three": [ordered[1], rare[1], rare[2]],
            "sixty-four": ordered[:32] + rare[-32:]}[which]
    with wide.client() as c:
        got = c.proof_segments(0, NONE - 1, tags)
    want = holding(real, overlapping(real, 0, NONE - 1), set(tags))
    assert want and [s.seg_seq for s in got] == want
    if which == "rare":
        assert len(got) == 1
    held = {s.seg_seq: s.records for s in got}
    for seq, _, _, records in real.segments:         # whole segments, every record
        if seq in held:
            assert held[seq] == records


def test_flow_tags_within_a_window(real, default):
    ordered, _ = _flow_tags(real)
    c = real.commitments
    seqs = holding(real, [s[0] for s in real.segments], {ordered[0]})
    mid = seqs[len(seqs) // 2]
    lo, hi = c[mid][3], c[mid][3] + 600 * 10**9
    with default.client() as cl:
        got = cl.proof_segments(lo, hi, [ordered[0], ordered[0]])     # a duplicate is one tag
    assert [s.seg_seq for s in got] == holding(real, overlapping(real, lo, hi), {ordered[0]})


def test_unknown_flow_tag_is_a_signed_answer_not_not_found(real, wide):
    """No segment holds the tag: no segment is sent, and the signed coverage lists every segment
    of the window, none sent in full (formerly NOT_FOUND, which is not evidence)."""
    tag = b"\xfe\xed" * 4
    assert tag not in _flow_tags(real)[1]
    with wide.client() as c:
        ans = c.proof_answer(5, 10**19, [tag])
    over = overlapping(real, 5, 10**19)
    assert ans.segments == [] and ans.flow_tags == (tag,)
    assert [e.seg_seq for e in ans.coverage.index] == list(range(over[0], over[-1] + 1))
    assert not any(e.sent for e in ans.coverage.index)


def test_chunks_hold_whole_segments_up_to_one_mib(big, pki):
    store, _ = big
    s = Served(store, DeviceKey.generate(), pki, BIG_NODE, Limits(max_records=10**7))
    try:
        nonce = os.urandom(16)
        lo, hi = BIG_T0, BIG_T0 + 10 * 10**9
        Q = ev.request_digest(H, 1, lo, hi, (), None, None, nonce)
        with s.channel() as ch:
            call = pb_grpc.InterrogationStub(ch).GetProofSegments(
                pb.ProofSegmentsRequest(from_ns=lo, to_ns=hi, nonce=nonce), timeout=60)
            reader = ev.AnswerReader(s.key.public, BIG_NODE, 1, Q)
            sizes = []
            total = 0
            for chunk in call:
                segs = reader.feed(chunk.body, chunk.signature)
                if ev.decode_header(chunk.body).kind == ev.KIND_SEGMENTS:
                    sizes.append(sum(len(x.records) for x in segs))
                total += sum(x.count for x in segs)
            reader.finish()
        assert reader.coverage is not None and all(e.sent for e in reader.coverage.index)
        per_segment = 1024 * 48
        assert all(n == (ev.CHUNK_RECORD_BYTES // per_segment) * per_segment for n in sizes[:-1])
        assert 0 < sizes[-1] <= ev.CHUNK_RECORD_BYTES
        assert total == sum(c[2] for c in store.commitments())
    finally:
        s.stop()


# -- the signed coverage, GetSegments --------------------------------------------------------------

def _raw_answer(served, rpc, request):
    """The chunks of an answer as they come, each opened here with the device's key."""
    with served.channel() as ch:
        return [(ev.decode_header(c.body), c) for c in getattr(pb_grpc.InterrogationStub(ch),
                                                             rpc)(request, timeout=60)]


def _anchored_segments(real):
    return sum(1 for seq, t, _ in real.leaves[:real.anchored_leaves] if t == 2)


@pytest.mark.parametrize("where", ["before all", "after all"])
def test_an_empty_window_is_a_signed_coverage(real, wide, where):
    lo, hi = {"before all": (1, 2), "after all": (NONE - 10, NONE - 1)}[where]
    seqs = [q for q, _, _, _ in real.segments]
    nonce = os.urandom(16)
    chunks = _raw_answer(wide, "GetProofSegments",
                         pb.ProofSegmentsRequest(from_ns=lo, to_ns=hi, nonce=nonce))
    assert [(h.kind, h.chunk_seq, h.last, h.count) for h, _ in chunks] == [(4, 0, True, 0)]
    h, c = chunks[0]
    assert c.signature == real.dev.sign(c.body)
    assert h.Q == ev.request_digest(H, 1, lo, hi, (), None, None, nonce)
    with wide.client() as cl:
        ans = cl.proof_answer(lo, hi)
        info = cl.node_info()
    cov = ans.coverage
    assert ans.segments == [] and cov.index == () and cov.gaps == ()
    # empty, the index says where the window falls: before the first segment, or after the last
    assert cov.index_first_seq == (seqs[0] if where == "before all" else seqs[-1] + 1)
    assert (cov.ring_oldest_seq, cov.next_seg_seq) == (seqs[0], seqs[-1] + 1)
    assert cov.anchored_segments == _anchored_segments(real) > 0
    assert (cov.oldest_t_ns, cov.newest_t_ns, cov.anchored_until_t_ns) == (
        info.oldest_proof_t_ns, info.newest_proof_t_ns, info.anchored_until_t_ns)
    open_records = real.store.meta()["open_records"]
    assert cov.open_first_t_ns == (fastpath.t_range(open_records)[0] if open_records else 0)
    assert (cov.threshold_ns, cov.ring_wraps) == (3600 * 10**9, 0)
    assert abs(cov.t_ns - time.time_ns()) < 60 * 10**9 and not cov.ring_short


@pytest.mark.parametrize("which", ["no tags", "most frequent", "rare"])
def test_the_index_lists_every_segment_from_first_to_last_and_what_was_sent(real, wide, which):
    ordered, counts = _flow_tags(real)
    tags = {"no tags": [], "most frequent": ordered[:1],
            "rare": [t for t in ordered if counts[t] == 1][:1]}[which]
    c = real.commitments
    seqs = [q for q, _, _, _ in real.segments]
    if which == "rare":
        lo, hi = 0, NONE - 1
    else:
        with_tag = holding(real, seqs, {ordered[0]})
        mid = with_tag[len(with_tag) // 2]
        lo, hi = c[mid][3], c[mid][3] + 3 * 86400 * 10**9
    with wide.client() as cl:
        ans = cl.proof_answer(lo, hi, tags)
    over = overlapping(real, lo, hi)
    sent = holding(real, over, set(tags)) if tags else over
    assert sent and [x.seg_seq for x in ans.segments] == sent
    index = ans.coverage.index
    assert [e.seg_seq for e in index] == list(range(over[0], over[-1] + 1))
    assert ans.coverage.index_first_seq == over[0]
    if which == "rare":
        assert len(sent) == 1 and len(index) > 1           # the index lists what was not sent
    anchored = 0
    for e in index:
        _, S, n, first, last = c[e.seg_seq]
        assert (e.S, e.count, e.first_t_ns, e.last_t_ns) == (S, n, first, last)
        assert e.sent == (e.seg_seq in sent)
        anchored += check_anchor(real, e.leaf, e.anchor)     # anchored exactly when it is
        if e.seg_seq < ans.coverage.anchored_segments:
            assert e.anchor.anchored
    assert anchored
    for x in ans.segments:
        assert segment_S(NODE, x) == x.S


def test_a_long_index_spans_several_coverage_chunks(real, wide, monkeypatch):
    with wide.client() as c:
        whole = c.proof_answer(0, NONE - 1)
    monkeypatch.setattr(ev, "CHUNK_RECORD_BYTES", 2000)    # segments and index: small chunks
    chunks = _raw_answer(wide, "GetProofSegments",
                         pb.ProofSegmentsRequest(from_ns=0, to_ns=NONE - 1, nonce=bytes(16)))
    kinds = [h.kind for h, _ in chunks]
    n1 = kinds.count(1)
    assert kinds == [1] * n1 + [4] * (len(kinds) - n1) and kinds.count(4) > 3
    assert [h.last for h, _ in chunks] == [False] * (len(chunks) - 1) + [True]
    with wide.client() as c:
        split = c.proof_answer(0, NONE - 1)
    assert split.coverage == whole.coverage and len(whole.coverage.index) > 100
    assert [x.seg_seq for x in split.segments] == [x.seg_seq for x in whole.segments]


def test_get_segments_answers_the_named_segments_in_full(real, wide):
    seqs = [q for q, _, _, _ in real.segments]
    by_seq = {q: (S, r) for q, _, S, r in real.segments}
    asked = [seqs[5], seqs[1], seqs[-1] + 10, seqs[5], seqs[-1]]       # one never made, a dup
    nonce = os.urandom(16)
    chunks = _raw_answer(wide, "GetSegments", pb.SegmentsRequest(seg_seqs=asked, nonce=nonce))
    assert [(h.kind, h.last) for h, _ in chunks] == [(1, False), (4, True)]
    assert all(h.Q == ev.request_digest(H, 5, 0, 0, [q.to_bytes(8, "big")
                                                      for q in sorted(set(asked))],
                                        None, None, nonce) for h, _ in chunks)
    with wide.client() as c:
        ans = c.get_segments(asked)
    assert ans.seg_seqs == tuple(sorted(set(asked)))
    assert [(x.seg_seq, x.S, x.records) for x in ans.segments] == \
        [(q, *by_seq[q]) for q in (seqs[1], seqs[5], seqs[-1])]
    for x in ans.segments:
        assert segment_S(NODE, x) == x.S
        check_anchor(real, x.leaf, x.anchor)
    cov = ans.coverage
    assert cov.index == () and cov.gaps == () and cov.index_first_seq == 0
    assert (cov.ring_oldest_seq, cov.next_seg_seq) == (seqs[0], seqs[-1] + 1)   # 10 never made
    with wide.client() as c:
        none = c.get_segments([])
    assert none.segments == [] and none.coverage.next_seg_seq == seqs[-1] + 1


def test_index_and_seg_seqs_limits(real, pki):
    limit = 3
    seqs = [q for q, _, _, _ in real.segments]
    n = sum(real.commitments[q][2] for q in seqs[:4])
    s = Served(real.store, real.dev, pki, NODE,
               Limits(max_window_s=1e11, max_index_entries=limit, max_seg_seqs=4,
                      max_records=n - 1))
    over = overlapping(real, 0, NONE - 1)
    try:
        with s.client() as cl:
            with pytest.raises(RequestRejected) as e:
                cl.proof_answer(0, NONE - 1)
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.value.details == (
                f"{over[-1] - over[0] + 1} index entries (segments {over[0]}..{over[-1]}) for the "
                f"window [0, {NONE - 1}]: more than the device's max_index_entries {limit}; ask "
                "for a shorter window")
            c = real.commitments
            one = c[seqs[3]][3]
            assert len(cl.proof_answer(one, one).coverage.index) <= limit
            with pytest.raises(RequestRejected) as e:
                cl.get_segments(seqs[:5])
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details == "seg_seqs: 5 given, at most 4"
            with pytest.raises(RequestRejected) as e:
                cl.get_segments(seqs[:4])
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.value.details == (f"{n} records in the 4 segments asked: more than the "
                                       f"device's max_records {n - 1}; ask for fewer segments")
            assert len(cl.get_segments(seqs[:3]).segments) == 3
    finally:
        s.stop()


def test_get_segments_needs_the_governance_role(real, wide, pki):
    rd = lambda name: (pki / name).read_bytes()     # noqa: E731
    creds = grpc.ssl_channel_credentials(rd("ca.crt"), rd(f"device-{BIG_NODE}.key"),
                                         rd(f"device-{BIG_NODE}.crt"))
    with grpc.secure_channel(wide.endpoint, creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.InterrogationStub(ch).GetSegments(
                pb.SegmentsRequest(seg_seqs=[1], nonce=bytes(16)), timeout=30))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == ("GetSegments needs the governance role; the client certificate "
                                 f"has device:{BIG_NODE}")


def test_capture_gaps_of_the_window_are_in_the_coverage(tmp_path, pki):
    store = Store(tmp_path / "s", NODE, H, 16 << 20)
    _replay_all(store, H)
    c = {q[0]: q for q in store.commitments()}
    mid = sorted(c)[len(c) // 2]
    t = c[mid][3]
    store.record_capture([(t - 100, t - 50, 9, 1, "eth0"), (t - 10, t + 10, 0, 2, ""),
                          (t + 5000, t + 6000, 3, 1, "any")])
    s = Served(store, DeviceKey.generate(), pki, NODE, WIDE)
    try:
        with s.client() as cl:
            gaps = cl.proof_answer(t - 60, t + 100).coverage.gaps
            assert gaps == (ev.CaptureGap(t - 100, t - 50, 9, 1, "eth0"),
                            ev.CaptureGap(t - 10, t + 10, 0, 2, ""))
            assert cl.proof_answer(t + 20, t + 30).coverage.gaps == ()
            assert cl.get_segments([mid]).coverage.gaps == ()      # an audit: the ring only
    finally:
        s.stop()
        store.close()


# -- counters, receipts, node info --------------------------------------------------------------

def test_counter_report_is_the_stores(real, wide):
    with wide.client() as c:
        got = c.counter_report()
    want = sorted(real.store.counters().items())
    assert [((x.prev_id, x.next_id), (x.packets, x.bytes, x.first_t_ns, x.last_t_ns))
            for x in got] == want


def test_receipts_of_each_flow_are_the_stores_and_proven(real, wide):
    stored = real.store.receipts()
    flows = sorted({(r[2], r[3]) for r in stored})
    assert len(flows) > 1
    anchored = unanchored = 0
    with wide.client() as c:
        for src, dst in flows:
            want = sorted((r for r in stored if (r[2], r[3]) == (src, dst)),
                          key=lambda r: (r[0], r[1]))
            got = c.receipts(0, NONE - 1, src, dst)
            assert [(x.epoch_ns, x.role, x.src, x.dst, x.packets, x.bytes, x.R) for x in got] == \
                [tuple(r) for r in want]
            for x in got:
                assert x.R == fastpath.receipt_value(H, NODE, x.role, x.src, x.dst, x.epoch_ns,
                                                     x.packets, x.bytes)
                if check_anchor(real, x.leaf, x.anchor):
                    anchored += 1
                else:
                    unanchored += 1
            # a window that holds only the first epoch
            first = want[0][0]
            got1 = c.receipts(first, first, src, dst)
            assert [x.epoch_ns for x in got1] == [r[0] for r in want if r[0] == first]
    assert anchored and unanchored
    with wide.client() as c:
        assert c.receipts(0, NONE - 1, b"\x01" * 16, b"\x02" * 16) == []


def test_node_info(real, wide):
    with wide.client() as c:
        info = c.node_info()
    comm = real.commitments
    oldest = real.segments[0][0]
    newest = real.segments[-1][0]
    assert info.node_id == NODE and info.hash == H and info.public_key == real.dev.public
    assert info.oldest_proof_t_ns == comm[oldest][3]
    assert info.newest_proof_t_ns == comm[newest][4]
    assert info.threshold_ns == 3600 * 10**9 and info.format_version == 1
    assert info.version and abs(info.now_ns - time.time_ns()) < 60 * 10**9
    assert [(n.node_id, n.mac) for n in info.neighbours] == [(5, b"\x02\x00\x00\x00\x00\x05"),
                                                            (7, b"\x02\x00\x00\x00\x00\x07")]
    # every record up to anchored_until_t_ns is in an anchored segment, and the next one is not
    anchored_segs = sum(1 for seq, t, _ in real.leaves[:real.anchored_leaves] if t == 2)
    open_records = real.store.meta()["open_records"]
    not_anchored = [struct.unpack_from(">Q", records, o)[0]
                    for seq, _, _, records in real.segments if seq >= anchored_segs
                    for o in range(0, len(records), 48)]
    not_anchored += [struct.unpack_from(">Q", open_records, o)[0]
                     for o in range(0, len(open_records), 48)]
    assert info.anchored_until_t_ns == min(not_anchored) - 1 > 0
    assert not info.ring_short


def test_a_key_other_than_the_ledgers_is_a_bad_signature(wide):
    with wide.client(pubkey=DeviceKey.generate().public) as c:
        with pytest.raises(BadSignature, match="does not verify with public key"):
            c.counter_report()
        with pytest.raises(BadSignature):
            c.proof_segments(0, NONE - 1)


def test_blake2b_store(tmp_path, pki):
    store = Store(tmp_path / "s", NODE, "blake2b-256", 16 << 20)
    _replay_all(store, "blake2b-256")
    s = Served(store, DeviceKey.generate(), pki, NODE, WIDE)
    try:
        with s.client() as c:
            assert c.hash_name == "blake2b-256"
            segs = c.proof_segments(0, NONE - 1)
        assert len(segs) == len(store.segments())
        for seg in segs:
            assert seg.S == hashlib.blake2b(
                b"BEAT-SG-v1" + NODE.to_bytes(8, "big") + seg.seg_seq.to_bytes(8, "big") +
                seg.count.to_bytes(8, "big") + seg.records, digest_size=32).digest()
            assert seg.anchor == ev.UNANCHORED                  # no batcher ran
    finally:
        s.stop()
        store.close()


# -- the error table ----------------------------------------------------------------------------

N16 = bytes(16)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ERRORS = [
    ("GetProofSegments", dict(from_ns=10, to_ns=5, nonce=N16), INVALID,
     "window [10, 5]: to_ns is before from_ns (max_window_s 3600 s)"),
    ("GetProofSegments", dict(from_ns=0, to_ns=0, nonce=N16), INVALID,
     "window [0, 0]: to_ns is 0 (max_window_s 3600 s)"),
    ("GetProofSegments", dict(from_ns=1, to_ns=1 + 3601 * 10**9, nonce=N16), INVALID,
     "window [1, 3601000000001] is 3601.000 s long, more than max_window_s 3600 s"),
    ("GetProofSegments", dict(from_ns=1, to_ns=2, flow_tags=[b"\x01" * 8, b"\x02" * 7], nonce=N16),
     INVALID, "flow_tags[1]: 7 bytes (02020202020202), must be 8 bytes"),
    ("GetProofSegments", dict(from_ns=1, to_ns=2, flow_tags=[bytes([i]) * 8 for i in range(65)],
                              nonce=N16), INVALID, "flow_tags: 65 given, at most 64"),
    ("GetProofSegments", dict(from_ns=1, to_ns=2, nonce=b"\x01" * 15), INVALID,
     "nonce: 15 bytes (010101010101010101010101010101), must be 16 bytes"),
    ("GetCounterReport", dict(), INVALID, "nonce: 0 bytes (empty), must be 16 bytes"),
    ("GetReceipts", dict(from_ns=1, to_ns=2, src=b"\x0a" * 4, dst=N16, nonce=N16), INVALID,
     "src: 4 bytes (0a0a0a0a), must be 16 bytes"),
    ("GetReceipts", dict(from_ns=1, to_ns=2, src=N16, dst=bytes(17), nonce=N16), INVALID,
     "dst: 17 bytes (0000000000000000000000000000000000), must be 16 bytes"),
    ("GetReceipts", dict(from_ns=9, to_ns=2, src=N16, dst=N16, nonce=N16), INVALID,
     "window [9, 2]: to_ns is before from_ns (max_window_s 3600 s)"),
    ("GetReceipts", dict(from_ns=1, to_ns=2, src=N16, dst=N16, nonce=b"\x00"), INVALID,
     "nonce: 1 bytes (00), must be 16 bytes"),
    ("GetSegments", dict(seg_seqs=[1], nonce=b"\x02" * 3), INVALID,
     "nonce: 3 bytes (020202), must be 16 bytes"),
    ("GetSegments", dict(seg_seqs=list(range(1025)), nonce=N16), INVALID,
     "seg_seqs: 1025 given, at most 1024"),
]
REQUESTS = {"GetProofSegments": pb.ProofSegmentsRequest, "GetSegments": pb.SegmentsRequest,
            "GetCounterReport": pb.CounterReportRequest, "GetReceipts": pb.ReceiptsRequest}


def _call(ch, rpc, **fields):
    method = getattr(pb_grpc.InterrogationStub(ch), rpc)
    res = method(REQUESTS[rpc](**fields), timeout=30)
    return res if rpc == "GetCounterReport" else list(res)


@pytest.mark.parametrize("rpc, fields, code, details", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_error_table(default, rpc, fields, code, details):
    with default.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            _call(ch, rpc, **fields)
    assert (e.value.code(), e.value.details()) == (code, details)


def test_more_records_than_max_records(real, pki):
    limit = 40
    s = Served(real.store, real.dev, pki, NODE, Limits(max_window_s=1e11, max_records=limit))
    want = overlapping(real, 0, NONE - 1)
    n = sum(real.commitments[q][2] for q in want)
    c = real.commitments
    small = next((c[q][3], c[q][3]) for q in want
                 if 0 < sum(c[x][2] for x in overlapping(real, c[q][3], c[q][3])) <= limit)
    try:
        with s.client() as cl:
            with pytest.raises(RequestRejected) as e:
                cl.proof_segments(0, NONE - 1)
            assert [x.seg_seq for x in cl.proof_segments(*small)] == overlapping(real, *small)
    finally:
        s.stop()
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details == (f"{n} records in {len(want)} segments of the window [0, "
                               f"{NONE - 1}]: more than the device's max_records {limit}; ask "
                               "for a shorter window or fewer flows")


def test_unreadable_store_is_unavailable(tmp_path, pki):
    store = Store(tmp_path / "s", NODE, H, 16 << 20)
    _replay_all(store, H)
    s = Served(store, DeviceKey.generate(), pki, NODE, WIDE)
    try:
        store.env.close()                              # the store goes away under the server
        with s.client() as c:
            with pytest.raises(NodeUnreachable) as e:       # no evidence: as if unreachable
                c.proof_segments(0, NONE - 1)
    finally:
        s.stop()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert e.value.details.startswith(f"the store {store.path} cannot be read (indexing): ")


# -- streams: limits, stalled clients, the writer -----------------------------------------------

def _stalled_call(served, lo=BIG_T0, hi=BIG_T0 + 3600 * 10**9):
    """A GetProofSegments answer of which one chunk is read, then nothing."""
    ch = served.channel()
    call = pb_grpc.InterrogationStub(ch).GetProofSegments(
        pb.ProofSegmentsRequest(from_ns=lo, to_ns=hi, nonce=os.urandom(16)), timeout=120)
    first = next(call)
    assert ev.decode_chunk(first.body)[0].chunk_seq == 0
    return ch, call


def test_max_streams(big, pki):
    store, _ = big
    s = Served(store, DeviceKey.generate(), pki, BIG_NODE,
               Limits(max_records=10**7, max_streams=1))
    try:
        ch, call = _stalled_call(s)
        assert s.server.servicer.active_streams() == 1
        with s.client() as c:
            for call2 in (lambda: c.proof_segments(BIG_T0, BIG_T0 + 1),
                          lambda: c.receipts(BIG_T0, BIG_T0 + 1, N16, N16)):
                with pytest.raises(RequestRejected) as e:
                    call2()
                assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert e.value.details == ("1 evidence streams are running: the device's "
                                           "max_streams is 1; retry later")
            assert c.counter_report()                       # unary: not an evidence stream
            call.cancel()
            ch.close()
            wait_for(lambda: s.server.servicer.active_streams() == 0, 10, "the slot is released")
            assert len(c.proof_segments(BIG_T0, BIG_T0 + 10**6)) >= 1
    finally:
        s.stop()


def test_an_answer_past_max_stream_s_is_cancelled(big, pki):
    store, _ = big
    s = Served(store, DeviceKey.generate(), pki, BIG_NODE,
               Limits(max_records=10**7, max_stream_s=1.0))
    try:
        ch, call = _stalled_call(s)
        wait_for(lambda: s.server.servicer.active_streams() == 0, 15, "the watchdog cancels it")
        with pytest.raises(grpc.RpcError) as e:
            for _ in call:
                pass
        assert e.value.code() == grpc.StatusCode.CANCELLED
        ch.close()
    finally:
        s.stop()


def test_a_stalled_client_does_not_stop_the_writer(big, pki):
    store, pipe = big
    s = Served(store, DeviceKey.generate(), pki, BIG_NODE, Limits(max_records=10**7))
    frames = _edge_frames(20_000, t_shift=7200 * 10**9)
    commits, slowest = [], [0.0]
    stop = threading.Event()

    def writer():
        mv = memoryview(frames[1])
        n = len(frames[1]) // fastpath.DESC_SIZE
        while not stop.is_set():
            for i in range(0, n, 2048):
                pipe.feed(frames[0], mv[i * fastpath.DESC_SIZE:(i + 2048) * fastpath.DESC_SIZE])
                out = pipe.take()
                t0 = time.monotonic()
                store.commit(out)
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                commits.append(time.monotonic())
                if stop.is_set():
                    return
            time.sleep(0.01)

    try:
        ch, call = _stalled_call(s)
        segments_before = store.meta()["next_seg_seq"]
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        stalled_at = time.monotonic()
        readers = []
        # at least 3 s, at least 10 commits and 10 samples of the reader table (30 s at most)
        while (time.monotonic() - stalled_at < 3.0 or len(readers) < 10
               or sum(c >= stalled_at for c in commits) < 10):
            if time.monotonic() - stalled_at > 30.0:
                break
            readers.append(store.env.readers())
            time.sleep(0.2)
        stop.set()
        t.join(timeout=30)
        assert not t.is_alive()
        # the answer is still unfinished: the client really stalled it
        assert s.server.servicer.active_streams() == 1
        during = [c for c in commits if c >= stalled_at]
        assert len(during) >= 10, f"only {len(during)} commits in 30 s while a client stalled"
        assert slowest[0] < 10.0, f"a commit took {slowest[0]:.1f} s while a client stalled"
        assert store.meta()["next_seg_seq"] > segments_before
        # no read transaction is held open while the client does not read. Short readers (the
        # index catching up with the writer's commits, a chunk read before gRPC's window filled)
        # may show in one sample; the writer commits all the while, so a transaction held for the
        # stalled answer would show with the same txnid in every sample from then on.
        seen = collections.Counter()
        for table in readers:
            for line in table.splitlines()[1:]:
                pid, thread, txnid = line.split()
                if txnid != "-":
                    seen[(pid, thread, txnid)] += 1
        assert len(readers) >= 10
        assert all(n <= 2 for n in seen.values()), (seen, readers)
        # the client reads on: the whole answer arrives and checks out
        rest = list(call)
        assert rest and ev.decode_chunk(rest[-1].body)[0].last
        ch.close()
    finally:
        stop.set()
        s.stop()


# -- health, reflection, no plaintext -----------------------------------------------------------

def test_health_and_reflection(default):
    with default.channel() as ch:
        hs = health_pb2_grpc.HealthStub(ch)
        for service in ("", "beat.v1.Interrogation"):
            r = hs.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        rs = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(rs.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="beat.v1.Interrogation")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"beat.v1.Interrogation", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    from google.protobuf import descriptor_pb2
    fd = descriptor_pb2.FileDescriptorProto.FromString(
        answers[1].file_descriptor_response.file_descriptor_proto[0])
    assert fd.name == "beat/v1/interrogation.proto" and fd.package == "beat.v1"


def test_no_plaintext(default):
    with grpc.insecure_channel(default.endpoint) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.InterrogationStub(ch).GetNodeInfo(pb.NodeInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_unreachable_node(pki):
    c = InterrogationClient("127.0.0.1:1", pki / "ca.crt", pki / "governance.crt",
                            pki / "governance.key", H, NODE, bytes(32), timeout=3)
    with pytest.raises(NodeUnreachable) as e:
        c.proof_segments(1, 2)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(e.value).startswith(f"node {NODE} at 127.0.0.1:1: GetProofSegments: UNAVAILABLE")
    c.close()


# -- a wrapped ring, and every scan in many small transactions ----------------------------------

def test_wrapped_ring_and_small_scan_batches(tmp_path, pki, monkeypatch):
    from beatd import interrogation
    from beatd.store import evidence
    monkeypatch.setattr(evidence, "SCAN_LEAVES", 8)           # outbox indexed 8 leaves a txn
    monkeypatch.setattr(evidence, "SCAN_KEYS", 3)             # commitments, receipts: 3 a txn
    monkeypatch.setattr(interrogation, "RECEIPTS_PER_CHUNK", 1)
    store = Store(tmp_path / "s", NODE, H, 32 << 10)          # ~40 segments of 16 records
    _replay_all(store, H)
    ring = store.proof_ring_status(0, 0)
    assert ring["wraps"] > 0 and store.verify() == []
    gov, dev = DeviceKey.generate(), DeviceKey.generate()
    led = LocalLedger(str(tmp_path / "l.mdb"), hash_name=H, governance_pubkey=gov)
    led.register_node(Node(NODE, "op", dev.public, None), signer=gov)
    b = Batcher(store, led, NODE, H, dev, 10.0, max_leaves=40)
    while b.build() is not None:
        pass
    b.submit()
    s = Served(store, dev, pki, NODE, WIDE, threshold_ns=NONE >> 1)
    try:
        index = s.server.evidence.index
        assert index.seg_base > 0                  # trimmed below the ring's oldest segment
        held = store.segments()
        # a selected segment that has left the ring is left out and counted, chunk_seq goes on
        big = ev.CHUNK_RECORD_BYTES // 48          # one segment per chunk
        gone = held[0][0] - 1
        bodies = list(s.server.evidence.segment_chunks(
            [(gone, big), (held[0][0], big), (gone, big)],
            lambda q, segs, last: (q, [x.seg_seq for x in segs], last)))
        assert bodies == [(0, [held[0][0]], False), (1, [], True)]
        assert s.server.stats()["wrapped_during_answer"] == 2
        with s.client() as c:
            segs = c.proof_segments(0, NONE - 1)
            assert [(x.seg_seq, x.records) for x in segs] == [(q, r) for q, _, _, r in held]
            for x in segs:
                a = led.get_anchor(NODE, x.anchor.batch_seq)
                assert segment_S(NODE, x) == x.S
                assert merkle.verify_inclusion(H, x.leaf, x.anchor.leaf_index, a.tree_size,
                                               list(x.anchor.path), a.root)
            info = c.node_info()
            assert info.ring_short and info.oldest_proof_t_ns == ring["oldest_t_ns"]
            # the coverage says the ring wrapped; an audit of a segment it no longer holds gets
            # nothing for it, and the coverage after it says why
            cov = c.proof_answer(0, NONE - 1).coverage
            assert cov.ring_wraps == ring["wraps"] and cov.ring_oldest_seq == held[0][0]
            assert [e.seg_seq for e in cov.index] == [q for q, _, _, _ in held]
            assert all(e.sent for e in cov.index) and cov.ring_short
            audit = c.get_segments([gone, held[0][0]])
            assert [x.seg_seq for x in audit.segments] == [held[0][0]]
            assert audit.coverage.ring_oldest_seq == held[0][0] > gone
            stored = store.receipts()
            src, dst = max(({(r[2], r[3]) for r in stored}),
                           key=lambda f: sum(1 for r in stored if (r[2], r[3]) == f))
            want = sorted((r for r in stored if (r[2], r[3]) == (src, dst)),
                          key=lambda r: (r[0], r[1]))
            assert len(want) > 1                   # several chunks of one receipt each
            got = c.receipts(0, NONE - 1, src, dst)
            assert [(x.epoch_ns, x.role, x.R) for x in got] == [(r[0], r[1], r[6]) for r in want]
            for x in got:
                a = led.get_anchor(NODE, x.anchor.batch_seq)
                assert merkle.verify_inclusion(H, x.leaf, x.anchor.leaf_index, a.tree_size,
                                               list(x.anchor.path), a.root)
    finally:
        s.stop()
        led.close()
        store.close()


def test_a_pruned_store_answers_from_its_base(tmp_path, pki, monkeypatch):
    """Store.prune dropped the oldest anchored batches (their outbox leaves, receipts, segment
    commitments, tree levels): a server that indexed the outbox before and one started after
    answer the same, every segment of the ring and every receipt still held proven."""
    from beatd.store import evidence
    monkeypatch.setattr(evidence, "SCAN_LEAVES", 8)           # outbox indexed 8 leaves a txn
    store = Store(tmp_path / "s", NODE, H, 32 << 10)          # ~40 segments of 16 records
    _replay_all(store, H)
    gov, dev = DeviceKey.generate(), DeviceKey.generate()
    led = LocalLedger(str(tmp_path / "l.mdb"), hash_name=H, governance_pubkey=gov)
    led.register_node(Node(NODE, "op", dev.public, None), signer=gov)
    b = Batcher(store, led, NODE, H, dev, 10.0, max_leaves=40)
    while b.build() is not None:
        pass
    b.submit()
    before = Served(store, dev, pki, NODE, WIDE, threshold_ns=NONE >> 1)
    after = None
    try:
        with before.client() as c:
            c.node_info()                                     # indexes the whole outbox
        receipts_before = store.receipts()
        done = store.prune(1 << 63, 0, max_leaves=1 << 20)
        assert done["batches"] and done["receipts"] and store.verify() == []
        base = store.meta()["outbox_base"]
        held = store.segments()
        stored = store.receipts()
        assert len(stored) < len(receipts_before)
        after = Served(store, dev, pki, NODE, WIDE, threshold_ns=NONE >> 1)
        flows = sorted({(r[2], r[3]) for r in receipts_before})
        for served in (before, after):
            with served.client() as c:
                segs = c.proof_segments(0, NONE - 1)
                assert [(x.seg_seq, x.records) for x in segs] == [(q, r) for q, _, _, r in held]
                for x in segs:
                    a = led.get_anchor(NODE, x.anchor.batch_seq)
                    assert merkle.verify_inclusion(H, x.leaf, x.anchor.leaf_index, a.tree_size,
                                                   list(x.anchor.path), a.root)
                got = [x for src, dst in flows for x in c.receipts(0, NONE - 1, src, dst)]
                assert sorted((x.epoch_ns, x.role, x.R) for x in got) == \
                    sorted((r[0], r[1], r[6]) for r in stored)
                for x in got:
                    a = led.get_anchor(NODE, x.anchor.batch_seq)
                    assert merkle.verify_inclusion(H, x.leaf, x.anchor.leaf_index, a.tree_size,
                                                   list(x.anchor.path), a.root)
                c.node_info()
            assert served.server.evidence.index.next_leaf == store.outbox()[-1][0] + 1
            assert all(leaf >= base for leaf in served.server.evidence.index._rc_leaf) or \
                served is before
    finally:
        before.stop()
        if after is not None:
            after.stop()
        led.close()
        store.close()


def test_signatures_are_the_device_keys_and_answers_run_side_by_side(real, wide):
    assert wide.server.servicer.signer.impl == "openssl"
    nonce = os.urandom(16)
    with wide.channel() as ch:
        chunk = pb_grpc.InterrogationStub(ch).GetCounterReport(
            pb.CounterReportRequest(nonce=nonce), timeout=10)
    assert chunk.signature == real.dev.sign(chunk.body)      # Ed25519 is deterministic
    results, errors = [], []

    def ask():
        try:
            with wide.client() as c:
                results.append([x.seg_seq for x in c.proof_segments(0, NONE - 1)])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert results == [[q for q, _, _, _ in real.segments]] * 4


def test_configuration_errors_name_the_key(real, pki, tmp_path):
    for kw, match in ((dict(max_streams=0), r"interrogation\.max_streams: 0 must be a number "
                                            "above 0"),
                      (dict(max_records=1.5), r"interrogation\.max_records: 1\.5 must be an "
                                              "integer"),
                      (dict(max_window_s=True), r"interrogation\.max_window_s: True must be")):
        with pytest.raises(ValueError, match=match):
            Limits(**kw)
    with pytest.raises(ValueError, match=r'interrogation\.cert: ".*nope\.crt": cannot read: No '
                                         "such file"):
        InterrogationServer(real.store, real.dev, ca=pki / "ca.crt", cert=tmp_path / "nope.crt",
                            private_key=pki / f"device-{NODE}.key", listen="127.0.0.1:0")
    s = Served(real.store, real.dev, pki, NODE)
    try:
        with pytest.raises(ValueError, match=r'interrogation\.listen: "127\.0\.0\.1:\d+": cannot '
                                             "listen there"):
            InterrogationServer(real.store, real.dev, ca=pki / "ca.crt",
                                cert=pki / f"device-{NODE}.crt",
                                private_key=pki / f"device-{NODE}.key", listen=s.endpoint)
    finally:
        s.stop()


# -- a ring whose oldest segment says 0 ---------------------------------------------------------

@pytest.mark.parametrize("oldest", ["begins at time 0", "holds no record"])
def test_a_ring_whose_oldest_segment_says_0_is_not_empty(tmp_path, pki, oldest):
    """The coverage's ``oldest_t_ns`` is 0 when the proof ring's oldest segment begins at time 0
    (records of a capture file stamped from 0) or holds no record (a store written while its
    device withheld every record of a segment: the lab's testing lie; after that device was
    honest again, the lab's attacks once named it MISSING, "it says its ring is empty"). The
    ring is not empty (``ring_oldest_seq < next_seg_seq``), and the records the device gives do
    not contradict its coverage."""
    from beatd.testing_lies import Lies
    from governance.interrogate import coverage_of
    from governance.verdicts import NodeEvidence, _coverage_contradiction

    store = Store(tmp_path / "s", NODE, H, 16 << 20)
    pipe = fastpath.Pipeline(NODE, hash_name=H, own_macs=[OWN], neighbours={NEXT: 2})
    pipe.resume(**store.resume_state())
    later = 0
    if oldest == "begins at time 0":
        _feed(store, pipe, *_edge_frames(200, t_shift=-1_700_000_000_000_000_000))
    else:
        buf, desc = build_frames(400, flows=1, desc_pack=fastpath.pack_desc)
        pipe.feed(buf, desc)
        pipe.close_segment()
        out = pipe.take()
        ft = bytes(out.segments[0][3][40:48])
        Lies([f"withhold={ft.hex()}"], NODE, H).apply(out)
        assert out.segments and all(count == 0 for _, count, _, _ in out.segments), out.segments
        store.commit(out)
        later = 10 * 10**9
        _feed(store, pipe, *_edge_frames(200, t_shift=later))
    pipe.close_segment()
    store.commit(pipe.take())
    s = Served(store, DeviceKey.generate(), pki, NODE, WIDE, threshold_ns=3600 * 10**9)
    try:
        with s.client() as cl:
            answer = cl.proof_answer(0, (1 << 63) - 1)
    finally:
        s.stop()
        store.close()
    cov = answer.coverage
    records = b"".join(seg.records for seg in answer.segments)
    assert cov.oldest_t_ns == 0 and cov.ring_oldest_seq < cov.next_seg_seq and records, cov
    assert not cov.ring_empty and not cov.ring_short
    judged = coverage_of(cov)
    assert not judged.empty
    assert _coverage_contradiction(NodeEvidence(NODE, unanchored_records=records,
                                                coverage=judged), 0) == ""
