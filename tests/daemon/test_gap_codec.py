"""The gap records chunk (kind 6, docs/interrogation.md): encoded and decoded byte for byte,
signed and opened, and every malformed body named (unsorted or repeated records, a bad reason,
interface or anchor ref)."""
import pytest

from beat_rpc import evidence as ev
from beat_rpc.evidence import AnchorRef, GapRecord, MalformedEvidence, WrongAnswer
from ledger_client.keys import DeviceKey

Q = bytes(range(32))
A = GapRecord(10, 20, 5, 1, "eth1", AnchorRef(3, 1, 4, (b"\x11" * 32, b"\x22" * 32)))
B = GapRecord(10, 30, 0, 2, "", ev.UNANCHORED)


def test_round_trip_signed_and_opened():
    key = DeviceKey.generate()
    body = ev.encode_chunk(ev.KIND_GAP_RECORDS, 7, Q, 0, True, 99, [A, B])
    assert len(body) == ev.HEADER_SIZE + 2 * 41 + (25 + 64) + 25
    header, items = ev.open_chunk(body, key.sign(body), key.public, node_id=7,
                                  kind=ev.KIND_GAP_RECORDS, Q=Q, chunk_seq=0)
    assert header.count == 2 and items == [A, B]
    assert A.record == bytes.fromhex("000000000000000a") + bytes.fromhex(
        "0000000000000014") + (5).to_bytes(8, "big") + b"\x01" + b"eth1".ljust(16, b"\x00")
    with pytest.raises(WrongAnswer, match="kind 6 \\(gap records\\), asked 3"):
        ev.open_chunk(body, key.sign(body), key.public, node_id=7, kind=ev.KIND_RECEIPTS, Q=Q,
                      chunk_seq=0)
    empty = ev.encode_chunk(ev.KIND_GAP_RECORDS, 7, Q, 0, True, 99, [])
    assert ev.decode_chunk(empty)[1] == []


@pytest.mark.parametrize("items, off, value, says", [
    ([B, A], None, None, "not after gap record 0"),
    ([A, A], None, None, "not after gap record 0"),
    ([A], 68 + 24, b"\x09", "reason 9 is not 1"),
    ([A], 68 + 25, b"\x01", "not printable ASCII"),
    ([A], 68 + 41 + 8, (9).to_bytes(8, "big"), "leaf_index 9 is not below tree_size 4"),
])
def test_malformed_gap_records_are_named(items, off, value, says):
    body = bytearray(ev.encode_chunk(ev.KIND_GAP_RECORDS, 7, Q, 0, True, 99, items))
    if off is not None:
        body[off:off + len(value)] = value
    with pytest.raises(MalformedEvidence, match=says):
        ev.decode_chunk(bytes(body))


def test_an_answer_in_two_chunks_keeps_the_order():
    key = DeviceKey.generate()
    reader = ev.AnswerReader(key.public, 7, ev.KIND_GAP_RECORDS, Q)
    b0 = ev.encode_chunk(ev.KIND_GAP_RECORDS, 7, Q, 0, False, 1, [B])
    b1 = ev.encode_chunk(ev.KIND_GAP_RECORDS, 7, Q, 1, True, 1, [A])
    reader.feed(b0, key.sign(b0))
    with pytest.raises(WrongAnswer, match="not after"):
        reader.feed(b1, key.sign(b1))
