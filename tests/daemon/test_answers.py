"""Complete, signed answers: a device's proof segments answer checked as a whole by the governance
(governance/verify.py ``check_answer``, docs/interrogation.md "The coverage").

A real store written by the fast path (``fastpath.Pipeline`` -> ``Store.commit``: 16 records per
segment, one flow ``A`` in a few segments only, the others everywhere), anchored on a real
``LocalLedger`` by the ``Batcher`` (the first batches anchored, the newest leaves not), served
over mutual TLS on 127.0.0.1:

- the honest device (``InterrogationServer``): its answer, its empty answer and its audit
  (``InterrogationClient.get_segments``) check out with no problem, the records are exactly the
  store's segments holding ``A``, cut to the window and its margin;
- a lying device: a gRPC server of the test whose servicer takes the honest answer, changes it
  (one lie each) and signs it again with the device's real key, as a device that lies would.
  Every lie is caught with the right ``withheld`` (or ``tampered``) Problem naming the device, the
  segment and what disagrees: a gap in the index, an entry whose S differs from the segment sent,
  a segment withheld (its flag cleared: the audit finds the flow in it), index times the records
  contradict, an entry below ``anchored_segments`` sent as not anchored, the index cut short (the
  boundary segment overlaps the window), an audit that does not send a segment it holds, an audit
  that sends other records.
- the governance's caps: an answer beyond ``max_answer_bytes`` or ``max_answer_segments`` is
  refused as the device's (``AnswerTooLarge``).
"""
import dataclasses
import random
import struct
from concurrent import futures

import grpc
import pytest

import fastpath
from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_lab import ca as certs
from beatd.interrogation import (EvidenceStore, InterrogationServer, InterrogationServicer,
                                 Limits, server_credentials)
from beatd.store import Store
from governance.client import AnswerTooLarge, InterrogationClient
from governance.verdicts import flow_tag
from governance.verify import TAMPERED, UNANCHORED, WITHHELD, check_answer
from ledger_client.batcher import Batcher
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Node

NODE = 4
H = "sha3-256"
OWN = bytes.fromhex("02bb00000004")
PEER = bytes.fromhex("02bb00000007")
T0 = 1_700_000_000_000_000_000
STEP = 1_000_000                       # 1 ms between packets
SEG = 16                               # records per segment
SEGMENTS = 60
A_SEGMENTS = (12, 20, 21, 35, 47)      # the segments that hold flow A
WINDOW = (T0 + 15 * SEG * STEP, T0 + 40 * SEG * STEP)    # segments 15..40 (and 14, 40 at edges)
MARGIN = 3 * STEP
V4 = bytes(10) + b"\xff\xff"
FT_A = flow_tag(H, V4 + bytes([10, 77, 1, 1]), V4 + bytes([10, 78, 0, 2]))


def frame(i, tag):
    payload = struct.pack(">QI", i, tag) + b"beat-answers"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 77, tag, 1]), bytes([10, 78, 0, 2]))
    return OWN + PEER + b"\x08\x00" + ip + struct.pack(">HHHH", 4000, 53, 8 + len(payload),
                                                       0) + payload


class Device:
    """The store, its ledger, keys and PKI."""

    def __init__(self, tmp):
        self.pki = tmp / "pki"
        certs.make_ca(self.pki)
        certs.make_device(self.pki, self.pki, NODE, ips=["127.0.0.1"])
        certs.make_governance(self.pki, self.pki)
        self.store = Store(tmp / "store", NODE, H, 64 << 20)
        pipe = fastpath.Pipeline(NODE, hash_name=H, own_macs=[OWN], neighbours={PEER: 7},
                                 segment_records=SEG, join_window_ns=STEP // 2)
        pipe.resume(**self.store.resume_state())
        frames, desc, off = [], [], 0
        for i in range(SEGMENTS * SEG + 5):                    # 5 records stay open
            tag = 1 if i // SEG in A_SEGMENTS and i % 4 == 0 else 2 + i % 5
            f = frame(i, tag)
            frames.append(f)
            desc.append(fastpath.pack_desc(T0 + i * STEP, off, len(f), len(f), 1, 0))
            off += len(f)
        pipe.feed(b"".join(frames), b"".join(desc))
        pipe.advance(T0 + (SEGMENTS * SEG + 10) * STEP)
        self.store.commit(pipe.take())
        assert self.store.verify() == []
        segs = self.store.segments()
        assert [s[0] for s in segs] == list(range(SEGMENTS))
        self.records = {q: r for q, _, _, r in segs}
        self.S = {q: S for q, _, S, _ in segs}
        self.gov, self.key = DeviceKey.generate(), DeviceKey.generate()
        self.ledger = LocalLedger(str(tmp / "ledger.mdb"), hash_name=H,
                                  governance_pubkey=self.gov)
        self.ledger.register_node(Node(NODE, "op-4", self.key.public, None), signer=self.gov)
        b = Batcher(self.store, self.ledger, NODE, H, self.key, 10.0, max_leaves=20)
        for _ in range(2):
            assert b.build() is not None
        assert b.submit() == [0, 1]                  # segments 0..39 anchored, 40.. not
        self.anchored = 40

    def close(self):
        self.ledger.close()
        self.store.close()

    def client(self, endpoint, **kw):
        return InterrogationClient(endpoint, self.pki / "ca.crt", self.pki / "governance.crt",
                                   self.pki / "governance.key", H, NODE, self.key.public,
                                   timeout=30, **kw)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    d = Device(tmp_path_factory.mktemp("answers"))
    yield d
    d.close()


@pytest.fixture(scope="module")
def honest(device):
    s = InterrogationServer(device.store, device.key, ca=device.pki / "ca.crt",
                            cert=device.pki / f"device-{NODE}.crt",
                            private_key=device.pki / f"device-{NODE}.key", listen="127.0.0.1:0",
                            threshold_ns=3600 * 10**9).start()
    yield f"127.0.0.1:{s.port}"
    s.stop(0)


def in_window(records, lo, hi):
    return b"".join(records[o:o + 48] for o in range(0, len(records), 48)
                    if lo <= int.from_bytes(records[o:o + 8], "big") <= hi)


def ask(device, endpoint, window=WINDOW, tags=(FT_A,), sample=100, rng=None):
    lo, hi = window[0] - MARGIN, window[1] + MARGIN
    with device.client(endpoint) as c:
        ans = c.proof_answer(lo, hi, tags)
        return check_answer(NODE, H, ans.segments, ans.coverage, device.ledger, window=window,
                            margin=MARGIN, flow_tags=tags, audit=c.get_segments, sample=sample,
                            rng=rng), ans


def overlapping(device, lo, hi):
    out = []
    for q, r in device.records.items():
        a, b = fastpath.t_range(r)
        if a <= hi and b >= lo:
            out.append(q)
    return out


# -- the honest device ---------------------------------------------------------------------------

def test_an_honest_answer_checks_out(device, honest):
    chk, ans = ask(device, honest)
    lo, hi = WINDOW[0] - MARGIN, WINDOW[1] + MARGIN
    over = overlapping(device, lo, hi)
    sent = [q for q in over if q in A_SEGMENTS]
    assert [x.seg_seq for x in ans.segments] == sent == [20, 21, 35]
    assert chk.withheld == [] and chk.tampered == [] and chk.audit_error is None
    assert [(p.kind, p.item) for p in chk.problems] == []           # 20, 21, 35 are anchored
    assert chk.records == b"".join(in_window(device.records[q], lo, hi) for q in sent)
    assert chk.unanchored == b"" and chk.dropped_records == 0
    # the audit: both boundaries and every entry not sent in full (sample 100 > all of them)
    idx = [e.seg_seq for e in chk.coverage.index]
    assert idx == list(range(over[0], over[-1] + 1))
    assert chk.audited == tuple([over[0] - 1] + [q for q in idx if q not in sent] +
                                [over[-1] + 1])
    assert chk.unaudited == {}
    assert set(chk.by_kind) >= {WITHHELD, TAMPERED, UNANCHORED}


def test_records_outside_the_margin_are_dropped(device, honest):
    """Segment 35 reaches beyond the window's end: what lies past the margin is dropped."""
    window = (T0 + 30 * SEG * STEP, T0 + 35 * SEG * STEP + 2 * STEP)
    chk, ans = ask(device, honest, window)
    lo, hi = window[0] - MARGIN, window[1] + MARGIN
    assert [x.seg_seq for x in ans.segments] == [35]
    assert chk.records == in_window(device.records[35], lo, hi)
    assert chk.dropped_records == SEG - len(chk.records) // 48 > 0
    assert chk.withheld == [] and chk.tampered == []


def test_unanchored_segments_and_a_small_sample(device, honest):
    window = (T0 + 44 * SEG * STEP, T0 + 50 * SEG * STEP)
    chk, ans = ask(device, honest, window, sample=2, rng=random.Random(7))
    assert [x.seg_seq for x in ans.segments] == [47]
    assert [(p.kind, p.item) for p in chk.problems] == [(UNANCHORED, "segment 47")]
    assert chk.unanchored == in_window(device.records[47], window[0] - MARGIN,
                                       window[1] + MARGIN) and chk.records == b""
    entries = [e.seg_seq for e in chk.coverage.index if not e.sent]
    sampled = [q for q in chk.audited if q in entries]
    assert len(sampled) == 2 and len(entries) > 2
    assert chk.withheld == []


def test_an_empty_answer_is_checked_too(device, honest):
    """No segment holds A in the window: nothing is sent, the coverage lists the window's
    segments, the audit confirms none holds A."""
    window = (T0 + 25 * SEG * STEP, T0 + 30 * SEG * STEP)
    chk, ans = ask(device, honest, window)
    assert ans.segments == [] and chk.records == b""
    assert len(chk.coverage.index) >= 5 and chk.withheld == [] and chk.tampered == []
    assert len(chk.audited) == len(chk.coverage.index) + 2
    # no flow tag asked: every segment of the window is sent, nothing is left to sample
    chk, ans = ask(device, honest, window, tags=())
    assert [x.seg_seq for x in ans.segments] == [e.seg_seq for e in chk.coverage.index]
    assert chk.withheld == [] and chk.audited == (chk.coverage.index_first_seq - 1,
                                                  chk.coverage.index[-1].seg_seq + 1)


def test_no_audit_callable_reports_what_was_not_audited(device, honest):
    lo, hi = WINDOW[0] - MARGIN, WINDOW[1] + MARGIN
    with device.client(honest) as c:
        ans = c.proof_answer(lo, hi, [FT_A])
    chk = check_answer(NODE, H, ans.segments, ans.coverage, device.ledger, window=WINDOW,
                       margin=MARGIN, flow_tags=[FT_A])
    assert chk.audited == () and len(chk.unaudited) > 3 and chk.withheld == []

    def failing(seqs):
        raise ConnectionError("the device went away")
    chk = check_answer(NODE, H, ans.segments, ans.coverage, device.ledger, window=WINDOW,
                       margin=MARGIN, flow_tags=[FT_A], audit=failing)
    assert isinstance(chk.audit_error, ConnectionError) and chk.withheld == []
    assert all("the audit failed: ConnectionError" in v for v in chk.unaudited.values())


# -- a lying device ------------------------------------------------------------------------------

class Lying(pb_grpc.InterrogationServicer):
    """The honest servicer's answers, changed by ``lie(segments, coverage)`` (proof segments)
    or ``audit_lie(segments, coverage)`` (GetSegments), signed again with the device's key."""

    def __init__(self, device, lie=None, audit_lie=None):
        self.honest = InterrogationServicer(EvidenceStore(device.store), device.key, NODE, H,
                                            Limits(), None, 3600 * 10**9)
        self.key = device.key
        self.lie, self.audit_lie = lie, audit_lie

    def _relay(self, chunks, lie):
        segments, cov_parts, Q = [], [], None
        for c in chunks:
            header, items = ev.decode_chunk(c.body)
            Q = header.Q
            if header.kind == ev.KIND_COVERAGE:
                cov_parts.append(items)
            else:
                segments.extend(items)
        cov = dataclasses.replace(cov_parts[0],
                                  index=tuple(e for p in cov_parts for e in p.index),
                                  gaps=tuple(g for p in cov_parts for g in p.gaps))
        if lie is not None:
            segments, cov = lie(list(segments), cov)
        bodies = []
        if segments:
            bodies.append(ev.encode_chunk(ev.KIND_SEGMENTS, NODE, Q, 0, False, 1, segments))
        bodies.append(ev.encode_chunk(ev.KIND_COVERAGE, NODE, Q, len(bodies), True, 1, cov))
        from beat_rpc import interrogation_pb2 as pb
        for b in bodies:
            yield pb.SignedChunk(body=b, signature=self.key.sign(b))

    def GetProofSegments(self, request, context):
        yield from self._relay(list(self.honest.GetProofSegments(request, context)), self.lie)

    def GetSegments(self, request, context):
        yield from self._relay(list(self.honest.GetSegments(request, context)), self.audit_lie)


@pytest.fixture
def liar(device):
    servers = []

    def serve(lie=None, audit_lie=None):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_InterrogationServicer_to_server(Lying(device, lie, audit_lie), server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(
            device.pki / "ca.crt", device.pki / f"device-{NODE}.crt",
            device.pki / f"device-{NODE}.key"))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"
    yield serve
    for s in servers:
        s.stop(0)


def entry(cov, seq):
    return next(e for e in cov.index if e.seg_seq == seq)


def replace_entry(cov, seq, **kw):
    return dataclasses.replace(cov, index=tuple(dataclasses.replace(e, **kw) if e.seg_seq == seq
                                                else e for e in cov.index))


def named(chk, kind, item, reason):
    hits = [p for p in chk.problems if p.kind == kind and p.item == item and reason in p.reason]
    assert hits, f"no {kind} problem for {item} with {reason!r}: {chk.problems}"
    assert all(p.node_id == NODE for p in chk.problems)
    return hits[0]


def test_the_relay_itself_is_honest(device, liar):
    chk, _ = ask(device, liar())
    assert chk.withheld == [] and chk.tampered == []


def test_a_gap_in_the_index(device, liar):
    def lie(segs, cov):
        return segs, dataclasses.replace(cov, index=tuple(e for e in cov.index
                                                          if e.seg_seq not in (27, 28)))
    chk, _ = ask(device, liar(lie))
    p = named(chk, WITHHELD, "index entry 29", "segments 27..28 are held")
    assert str(p).startswith(f"node {NODE} index entry 29: withheld: the index goes from 26 to 29")


def test_an_entry_whose_S_differs_from_the_segment_sent(device, liar):
    def lie(segs, cov):
        return segs, replace_entry(cov, 21, S=b"\x5a" * 32)
    chk, _ = ask(device, liar(lie))
    named(chk, WITHHELD, "segment 21", f"sent with S {device.S[21].hex()}, the index says "
                                       f"{'5a' * 32}")


def test_a_withheld_segment_is_found_by_the_audit(device, liar):
    """Segment 35 holds A: the device leaves it out and clears its flag."""
    def lie(segs, cov):
        return [s for s in segs if s.seg_seq != 35], replace_entry(cov, 35, sent=False)
    chk, ans = ask(device, liar(lie))
    assert [x.seg_seq for x in ans.segments] == [20, 21]
    assert 35 in chk.audited
    named(chk, WITHHELD, "index entry 35", f"holds 4 records of the flow tags {FT_A.hex()} in "
                                           "the window")
    # with a sample too small to hold it, a random sample may miss it: the audit is a
    # sample, its size the governance's choice; the full audit always finds it
    chk, _ = ask(device, liar(lie), sample=1, rng=random.Random(1))
    bounds = (chk.coverage.index_first_seq - 1, chk.coverage.index[-1].seg_seq + 1)
    assert len([q for q in chk.audited if q not in bounds]) == 1


def test_index_times_that_the_records_contradict(device, liar):
    """Entry 30 claims it ends before the window: its records say otherwise."""
    def lie(segs, cov):
        e = entry(cov, 30)
        return segs, replace_entry(cov, 30, first_t_ns=e.first_t_ns - 10**9,
                                   last_t_ns=e.first_t_ns - 10**9 + 1)
    chk, _ = ask(device, liar(lie))
    named(chk, WITHHELD, "index entry 30", "audited records are 16 in [")
    named(chk, WITHHELD, "index entry 30", "the index says 16 in [")


def test_a_flag_that_the_segment_sent_contradicts(device, liar):
    def lie(segs, cov):
        return segs, replace_entry(cov, 20, sent=False)
    chk, _ = ask(device, liar(lie))
    named(chk, WITHHELD, "segment 20", "sent in full, but its index entry says it was not")


def test_an_unanchored_entry_below_anchored_segments(device, liar):
    def lie(segs, cov):
        return segs, replace_entry(cov, 25, anchor=ev.UNANCHORED)
    chk, _ = ask(device, liar(lie))
    assert chk.coverage.anchored_segments == device.anchored
    named(chk, WITHHELD, "index entry 25", "comes not anchored, though the coverage says "
                                           f"segments 0..{device.anchored - 1} are in anchored "
                                           "batches")


def test_an_index_entry_not_in_its_anchor(device, liar):
    def lie(segs, cov):
        return segs, replace_entry(cov, 26, S=b"\x11" * 32)
    chk, _ = ask(device, liar(lie))
    named(chk, TAMPERED, "index entry 26", "is not in anchor")
    named(chk, WITHHELD, "index entry 26", f"audited S {device.S[26].hex()}, the index says "
                                           f"{'11' * 32}")


def test_a_boundary_segment_that_overlaps_the_window(device, liar):
    """The index is cut short at its start: the segment left out overlaps the window."""
    def lie(segs, cov):
        first = cov.index[0].seg_seq
        return segs, dataclasses.replace(cov, index=cov.index[1:], index_first_seq=first + 1)
    chk, _ = ask(device, liar(lie))
    first = chk.coverage.index_first_seq - 1
    named(chk, WITHHELD, f"boundary segment {first}", "of its records are in the window")
    # and at its end
    def lie_end(segs, cov):
        return segs, dataclasses.replace(cov, index=cov.index[:-1])
    chk, _ = ask(device, liar(lie_end))
    last = chk.coverage.index[-1].seg_seq + 1
    named(chk, WITHHELD, f"boundary segment {last}", "of its records are in the window")


def test_an_audit_that_withholds_a_held_segment(device, liar):
    def audit_lie(segs, cov):
        return [s for s in segs if s.seg_seq != 30], cov
    chk, _ = ask(device, liar(audit_lie=audit_lie))
    named(chk, WITHHELD, "index entry 30", "but not sent when asked by GetSegments")
    # claiming it left the ring since is a different statement: the ring said so
    def wrapped(segs, cov):
        return [s for s in segs if s.seg_seq > 30], dataclasses.replace(cov, ring_oldest_seq=31,
                                                                           ring_wraps=31)
    chk, _ = ask(device, liar(audit_lie=wrapped))
    assert chk.withheld == [] and set(chk.unaudited) == {q for q in chk.audited if q <= 30}
    assert all("left the ring since the answer" in v for v in chk.unaudited.values())


def test_an_audit_with_other_records(device, liar):
    """The audit sends segment 30 with its records changed and S recomputed over them."""
    def audit_lie(segs, cov):
        out = []
        for s in segs:
            if s.seg_seq == 30:
                recs = s.records[:48 * 15]
                s = dataclasses.replace(s, records=recs,
                                        S=fastpath.segment_value(H, NODE, 30, recs))
            out.append(s)
        return out, cov
    chk, _ = ask(device, liar(audit_lie=audit_lie))
    named(chk, TAMPERED, "audit of segment 30", "is not in anchor")
    named(chk, WITHHELD, "index entry 30", "audited S ")
    named(chk, WITHHELD, "index entry 30", "audited records are 15 in [")


def test_a_coverage_that_says_nothing_is_held(device, liar):
    """The whole index dropped, the window placed after the ring: segments sent in full are not
    in the index, and the boundary before it overlaps the window."""
    def lie(segs, cov):
        return segs, dataclasses.replace(cov, index=(), index_first_seq=cov.next_seg_seq)
    chk, _ = ask(device, liar(lie))
    named(chk, WITHHELD, "segment 20", "sent in full but not in the coverage's index")
    assert {p.item for p in chk.withheld} >= {"segment 20", "segment 21", "segment 35"}


def test_an_empty_coverage_placed_after_the_ring_is_caught_by_its_boundary(device, liar):
    """Nothing sent, the index empty and placed after the last segment: the boundary before it
    is audited; placed before the window's segments, the boundary after it overlaps the window."""
    window = (T0 + 25 * SEG * STEP, T0 + 30 * SEG * STEP)        # no A in it

    def lie(segs, cov):
        return segs, dataclasses.replace(cov, index=(), index_first_seq=26)
    chk, ans = ask(device, liar(lie), window)
    assert ans.segments == [] and chk.audited == (25, 26)
    named(chk, WITHHELD, "boundary segment 25", "of its records are in the window")
    named(chk, WITHHELD, "boundary segment 26", "of its records are in the window")


# -- the governance's caps -----------------------------------------------------------------------

def test_caps_on_what_a_device_hands_over(device, honest):
    lo, hi = WINDOW[0] - MARGIN, WINDOW[1] + MARGIN
    with device.client(honest) as c:
        ans = c.proof_answer(lo, hi, [FT_A])
        assert c.received_bytes == ans.bytes > 0
        assert c.received_segments == len(ans.segments) + len(ans.coverage.index)
    with device.client(honest, max_answer_bytes=ans.bytes - 1) as c:
        with pytest.raises(AnswerTooLarge) as e:
            c.proof_answer(lo, hi, [FT_A])
    assert str(e.value) == (f"node {NODE} at {honest}: GetProofSegments: the device sent "
                            f"{ans.bytes} bytes, more than the governance's max_answer_bytes "
                            f"{ans.bytes - 1} for one device (its answer is refused)")
    n = len(ans.segments) + len(ans.coverage.index)
    with device.client(honest, max_answer_segments=n - 1) as c:
        with pytest.raises(AnswerTooLarge, match=f"the device sent {n} segments and index "
                                                 f"entries, more than the governance's "
                                                 f"max_answer_segments {n - 1}"):
            c.proof_answer(lo, hi, [FT_A])
    # the caps are per device, over every answer through the client (an audit included)
    with device.client(honest, max_answer_segments=n + 2) as c:
        c.proof_answer(lo, hi, [FT_A])
        with pytest.raises(AnswerTooLarge, match="GetSegments"):
            c.get_segments([1, 2, 3])
    with pytest.raises(ValueError, match="max_answer_bytes: 0 must be an integer above 0"):
        device.client(honest, max_answer_bytes=0)


def test_an_index_that_breaks_its_own_rule(device, liar):
    """The index must start and end with segments overlapping the window, lie within the ring it
    declares, and an entry of no record must be an empty segment."""
    def padded(segs, cov):
        q = cov.index[0].seg_seq - 1                # a segment before the window, listed first
        a, b = fastpath.t_range(device.records[q])
        e = ev.IndexEntry(q, SEG, a, b, device.S[q], False, ev.UNANCHORED)
        return segs, dataclasses.replace(cov, index=(e,) + cov.index, index_first_seq=q)

    def emptied(segs, cov):
        return segs, replace_entry(cov, 28, count=0, first_t_ns=0, last_t_ns=0)

    def outside(segs, cov):
        return segs, dataclasses.replace(cov, next_seg_seq=cov.index[-1].seg_seq)

    chk, _ = ask(device, liar(padded))
    first = chk.coverage.index_first_seq
    named(chk, WITHHELD, f"index entry {first}", "the index's first entry")
    named(chk, WITHHELD, f"index entry {first}", "does not overlap the window")
    chk, _ = ask(device, liar(emptied))
    named(chk, WITHHELD, "index entry 28", "says no record, but its S is not that of an empty "
                                           "segment")
    chk, _ = ask(device, liar(outside))
    last = chk.coverage.index[-1].seg_seq
    named(chk, WITHHELD, f"index entry {last}", f"outside the ring the coverage declares "
                                                f"(0..{last - 1})")


def test_an_honest_device_whose_proof_left_while_answering_says_ask_again(device, tmp_path):
    """The ring wraps (or the store prunes) between the plan of an answer and its coverage: the
    anchor proof of an anchored segment of the index is gone. The device must not send that
    entry as not anchored (the governance would read it as withheld): it refuses the answer as
    UNAVAILABLE, which the governance retries, and the next answer is whole."""
    from governance.client import NodeUnreachable

    s = InterrogationServer(device.store, device.key, ca=device.pki / "ca.crt",
                            cert=device.pki / f"device-{NODE}.crt",
                            private_key=device.pki / f"device-{NODE}.key",
                            listen="127.0.0.1:0", threshold_ns=3600 * 10**9).start()
    endpoint = f"127.0.0.1:{s.port}"
    index = s.evidence.index
    real = index.segment_leaf
    lost = overlapping(device, WINDOW[0] - MARGIN, WINDOW[1] + MARGIN)[0]
    assert lost < device.anchored
    try:
        index.segment_leaf = lambda q: None if q == lost else real(q)
        with device.client(endpoint) as c, pytest.raises(NodeUnreachable,
                                                         match=f"segment {lost}.*ask again"):
            c.proof_answer(WINDOW[0] - MARGIN, WINDOW[1] + MARGIN, (FT_A,))
        index.segment_leaf = real
        chk, _ = ask(device, endpoint)
        assert chk.withheld == [] and chk.tampered == []
    finally:
        index.segment_leaf = real
        s.stop(0)
