"""GetReceipts naming several flows (request kind 7, docs/interrogation.md): one request, one
answer, the receipts of every flow named, checked by the governance like one flow's.

On the real replayed store of test_interrogation_server (its fixtures): the answer is exactly the
per-flow answers put together; Q is the documented bytes; the device refuses mixing src/dst with
flows, too many flows and a bad flow; the client refuses a receipt of a
flow not asked or outside the window, falls back to one request per flow against a device of the
former protocol, and an archived kind-7 answer replays.
"""
import hashlib

import grpc
import pytest

from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_rpc.evidence import MalformedEvidence, WrongAnswer
from beatd.interrogation import InterrogationServicer
from governance import archive
from governance.client import RequestRejected

from test_interrogation_server import (H, NODE, NONE, WIDE, Served, check_anchor,  # noqa: F401
                                       default, pki, real, wide)

OVERFLOW = bytes(16)
N16 = bytes(16)


def _flows(real):
    return sorted({(r[2], r[3]) for r in real.store.receipts()})


def _key(r):
    return (r.epoch_ns, r.role, r.src, r.dst, r.packets, r.bytes, r.R, r.anchor)


def test_q_of_a_receipts_of_flows_request_is_the_documented_bytes():
    nonce = bytes(range(16))
    a = (b"\x02" * 16, b"\x01" * 16)
    b = (b"\x01" * 16, b"\x09" * 16)
    want = hashlib.sha3_256(b"BEAT-RQ-v1" + bytes([7]) + (5).to_bytes(8, "big") +
                            (9).to_bytes(8, "big") + (2).to_bytes(4, "big") + b[0] + b[1] +
                            a[0] + a[1] + bytes(16) + bytes(16) + nonce).digest()
    # unsorted, one duplicate, as pairs or as 32 bytes: the same Q
    assert ev.flows_request_digest(H, 5, 9, [a, b, a], nonce) == want
    assert ev.flows_request_digest(H, 5, 9, [a[0] + a[1], b], nonce) == want
    assert ev.flows_request_digest(H, 5, 10, [a, b], nonce) != want
    assert ev.flows_request_digest(H, 5, 9, [a], nonce) != want
    # one flow by kind 7 is not the kind 3 request of it
    assert ev.flows_request_digest(H, 5, 9, [a], nonce) != \
        ev.request_digest(H, 3, 5, 9, (), a[0], a[1], nonce)
    with pytest.raises(ValueError, match=r"flows\[1\]\.dst: 4 bytes \(01010101\), must be 16"):
        ev.normalise_flows([a, (b"\x01" * 16, b"\x01" * 4)])
    with pytest.raises(ValueError, match=r"flows\[0\]: 31 bytes"):
        ev.normalise_flows([bytes(31)])
    with pytest.raises(ValueError, match=r"kind: 7 \(receipts of flows\) binds flows"):
        ev.request_digest(H, 7, 5, 9, (), None, None, nonce)


def _receipt(epoch, role, src, dst):
    return ev.Receipt(epoch, role, src, dst, 1, 2, b"\x07" * 32, ev.UNANCHORED)


def test_answer_order_is_flow_epoch_role_within_and_across_chunks():
    key = __import__("ledger_client.keys", fromlist=["DeviceKey"]).DeviceKey.generate()
    Q = b"\x5a" * 32
    fa, fb = (b"\x01" * 16, b"\x02" * 16), (b"\x03" * 16, b"\x01" * 16)
    rs = [_receipt(9, 1, *fa), _receipt(9, 2, *fa), _receipt(1, 1, *fb), _receipt(5, 2, *fb)]
    body = ev.encode_chunk(3, NODE, Q, 0, True, 1, rs)
    assert ev.decode_chunk(body)[1] == rs
    # the same flow and epoch twice: malformed whatever the request
    with pytest.raises(MalformedEvidence, match=r"receipt 1 \(epoch_ns 9, role 1\) of flow "
                       r"0101.*: not after epoch_ns 9, role 1"):
        ev.decode_chunk(ev.encode_chunk(3, NODE, Q, 0, True, 1, rs[:1] + rs[:1]))

    def signed(seq, last, items):
        b = ev.encode_chunk(3, NODE, Q, seq, last, 1, items)
        return b, key.sign(b)
    r = ev.AnswerReader(key.public, NODE, 3, Q, by_flow=True)
    assert r.feed(*signed(0, False, rs[:2])) + r.feed(*signed(1, True, rs[2:])) == rs
    r.finish()
    r = ev.AnswerReader(key.public, NODE, 3, Q, by_flow=True)
    assert r.feed(*signed(0, True, rs)) == rs
    # a later flow's receipt before an earlier flow's, within a chunk
    r = ev.AnswerReader(key.public, NODE, 3, Q, by_flow=True)
    with pytest.raises(WrongAnswer, match=r"receipt 1 \(flow 0101.*, epoch_ns 9, role 1\) is "
                       r"not after the one before \(the answer goes by flow, epoch_ns, role\)"):
        r.feed(*signed(0, True, rs[2:3] + rs[:1]))
    # across chunks: flow b, then flow a again
    r = ev.AnswerReader(key.public, NODE, 3, Q, by_flow=True)
    r.feed(*signed(0, False, rs[2:]))
    with pytest.raises(WrongAnswer, match="not after"):
        r.feed(*signed(1, True, rs[:2]))
    # a one-flow answer (kind 3) goes by epoch_ns, role: these are not in that order
    r = ev.AnswerReader(key.public, NODE, 3, Q)
    with pytest.raises(WrongAnswer, match=r"the answer goes by epoch_ns, role"):
        r.feed(*signed(0, True, rs))


def test_one_request_gives_every_flows_receipts_as_the_per_flow_requests(real, wide):
    flows = _flows(real)
    assert len(flows) > 1
    stranger = (b"\x01" * 16, b"\x02" * 16)
    asked = flows + [stranger, (OVERFLOW, OVERFLOW)]
    with wide.client() as c:
        got = c.receipts_of_flows(0, NONE - 1, list(reversed(asked)) + flows[:1])
        assert c.batched is True
        assert sorted(got) == sorted(asked)
        for src, dst in asked:
            one = c.receipts(0, NONE - 1, src, dst)
            assert [_key(x) for x in got[(src, dst)]] == [_key(x) for x in one]
        assert got[stranger] == []
        assert sum(len(v) for v in got.values()) == len(real.store.receipts())
        anchored = [x for v in got.values() for x in v if check_anchor(real, x.leaf, x.anchor)]
        assert anchored
        # a window: only the epochs in it
        epochs = sorted({x.epoch_ns for v in got.values() for x in v})
        lo, hi = epochs[len(epochs) // 3], epochs[2 * len(epochs) // 3]
        part = c.receipts_of_flows(lo, hi, flows)
        for f in flows:
            assert [_key(x) for x in part[f]] == \
                [_key(x) for x in got[f] if lo <= x.epoch_ns <= hi]
        with pytest.raises(ValueError, match="flows: none given"):
            c.receipts_of_flows(0, 1, [])
    assert wide.server.servicer.answers >= 2


def _raw(served, **fields):
    with served.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.InterrogationStub(ch).GetReceipts(pb.ReceiptsRequest(**fields),
                                                           timeout=30))
    return e.value.code(), e.value.details()


F = pb.Flow(src=b"\x01" * 16, dst=b"\x02" * 16)


@pytest.mark.parametrize("fields, code, details", [
    (dict(from_ns=1, to_ns=2, src=b"\x01" * 16, flows=[F], nonce=N16),
     grpc.StatusCode.INVALID_ARGUMENT,
     "src 16 bytes (01010101010101010101010101010101) and dst 0 bytes (empty) with 1 flows: a "
     "request names one flow by src/dst or several by flows, not both"),
    (dict(from_ns=1, to_ns=2, dst=b"\x01" * 16, flows=[F], nonce=N16),
     grpc.StatusCode.INVALID_ARGUMENT,
     "src 0 bytes (empty) and dst 16 bytes (01010101010101010101010101010101) with 1 flows: a "
     "request names one flow by src/dst or several by flows, not both"),
    (dict(from_ns=1, to_ns=2, flows=[F] * 257, nonce=N16), grpc.StatusCode.INVALID_ARGUMENT,
     "flows: 257 given, at most 256"),
    (dict(from_ns=1, to_ns=2, flows=[F, pb.Flow(src=b"\x0a" * 4, dst=N16)], nonce=N16),
     grpc.StatusCode.INVALID_ARGUMENT, "flows[1].src: 4 bytes (0a0a0a0a), must be 16 bytes"),
    (dict(from_ns=1, to_ns=2, flows=[pb.Flow(src=N16)], nonce=N16),
     grpc.StatusCode.INVALID_ARGUMENT, "flows[0].dst: 0 bytes (empty), must be 16 bytes"),
    (dict(from_ns=9, to_ns=2, flows=[F], nonce=N16), grpc.StatusCode.INVALID_ARGUMENT,
     "window [9, 2]: to_ns is before from_ns (max_window_s 3600 s)"),
    (dict(from_ns=1, to_ns=2, flows=[F], nonce=b"\x00"), grpc.StatusCode.INVALID_ARGUMENT,
     "nonce: 1 bytes (00), must be 16 bytes"),
])
def test_error_table_of_receipts_of_flows(default, fields, code, details):
    assert _raw(default, **fields) == (code, details)


def test_client_refuses_a_receipt_not_asked(real, pki, monkeypatch):
    flows = _flows(real)
    s = Served(real.store, real.dev, pki, NODE, WIDE)
    honest = s.server.evidence.receipts
    try:
        with s.client() as c:
            # the device adds the receipts of a flow it was not asked about (signed, in order)
            other = flows[1]
            monkeypatch.setattr(s.server.evidence, "receipts",
                                lambda lo, hi, src, dst: honest(lo, hi, src, dst) +
                                honest(lo, hi, *other))
            with pytest.raises(WrongAnswer, match=r"a receipt of flow .* in the answer for 1 "
                                                  "flows, which did not ask for it"):
                c.receipts_of_flows(0, NONE - 1, flows[:1])
            # a receipt outside the window asked
            every = honest(0, NONE - 1, *flows[0])
            monkeypatch.setattr(s.server.evidence, "receipts", lambda lo, hi, src, dst: every)
            lo = every[-1].epoch_ns
            with pytest.raises(WrongAnswer, match=r"outside the window"):
                c.receipts_of_flows(lo, lo + 1, flows[:1])
    finally:
        s.stop()


def _former_get_receipts(self, request, context):
    """GetReceipts of a device before kind 7: it does not know ``flows`` (protobuf drops the
    unknown field) and reads the request as one flow."""
    request = pb.ReceiptsRequest(from_ns=request.from_ns, to_ns=request.to_ns, src=request.src,
                                 dst=request.dst, nonce=request.nonce)
    yield from _ORIGINAL(self, request, context)


_ORIGINAL = InterrogationServicer.GetReceipts


CALLS = []


def _no_get_receipts(self, request, context):
    """A device without GetReceipts: gRPC's answer to a method it does not serve."""
    CALLS.append(len(request.flows))
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    yield


@pytest.mark.parametrize("former", ["ignores flows", "unimplemented"])
def test_client_falls_back_to_one_request_per_flow_on_a_former_device(real, pki, monkeypatch,
                                                                      former):
    flows = _flows(real)
    if former == "ignores flows":
        monkeypatch.setattr(InterrogationServicer, "GetReceipts", _former_get_receipts)
    else:
        monkeypatch.setattr(InterrogationServicer, "GetReceipts", _no_get_receipts)
    s = Served(real.store, real.dev, pki, NODE, WIDE)
    try:
        with s.client() as c:
            if former == "unimplemented":
                # asked again one flow at a time, whose refusal is the answer
                CALLS.clear()
                with pytest.raises(RequestRejected) as e:
                    c.receipts_of_flows(0, NONE - 1, flows)
                assert e.value.code == grpc.StatusCode.UNIMPLEMENTED
                assert CALLS == [len(flows), 0] and c.batched is False
                return
            got = c.receipts_of_flows(0, NONE - 1, flows)
            assert c.batched is False
    finally:
        s.stop()
    stored = real.store.receipts()
    for f in flows:
        assert [(x.epoch_ns, x.role, x.src, x.dst, x.packets, x.bytes, x.R) for x in got[f]] == \
            sorted((tuple(r) for r in stored if (r[2], r[3]) == f), key=lambda r: (r[0], r[1]))


def test_an_archived_receipts_of_flows_answer_replays(real, wide, tmp_path):
    flows = _flows(real)
    with wide.client() as c:
        rec = c.record()
        live = c.receipts_of_flows(0, NONE - 1, flows)
    manifest = {"format": archive.FORMAT, "hash": H, "devices": {str(NODE): {}}}
    m, blobs = archive.assemble(manifest, {NODE: rec.answers}, H)
    assert m["devices"][str(NODE)]["answers"][0]["request"]["flows"] == \
        [(a + b).hex() for a, b in flows]
    archive.write(tmp_path / "a", m, blobs)
    arch = archive.read(tmp_path / "a")
    replayed = archive.ArchivedClient(arch, NODE, H, real.dev.public)
    again = replayed.receipts_of_flows(0, NONE - 1, flows)
    assert {f: [_key(x) for x in v] for f, v in again.items()} == \
        {f: [_key(x) for x in v] for f, v in live.items()}
    # the replay of another request (a flow fewer) is not the recorded answer
    other = archive.ArchivedClient(arch, NODE, H, real.dev.public)
    with pytest.raises(archive.ArchiveError, match="the recorded answer was to"):
        other.receipts_of_flows(0, NONE - 1, flows[1:])
