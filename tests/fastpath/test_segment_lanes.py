"""Segments closed within one feed are hashed side by side in the SIMD lanes: every S must still be
the SPEC's, whatever the segment size, the number per feed and the lane width."""
import hashlib
import struct

import pytest

OWN = bytes.fromhex("020000000001")


def _frames(n):
    parts, descs, off = [], [], 0
    for i in range(n):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 48, i & 0xFFFF, 0, 64, 17, 0,
                         bytes((10, 0, 0, i % 7)), bytes((10, 1, 0, 1))) + bytes(28)
        f = OWN + bytes.fromhex("02000000aa01") + b"\x08\x00" + ip
        parts.append(f)
        descs.append(struct.pack("<QIIIHBB", 10**18 + i * 1000, off, len(f), len(f), 1, 0, 0))
        off += len(f)
    return b"".join(parts), b"".join(descs)


def _spec_s(hash_name, node_id, seg_seq, records):
    h = hashlib.sha3_256() if hash_name == "sha3-256" else hashlib.blake2b(digest_size=32)
    h.update(b"BEAT-SG-v1" + struct.pack(">QQQ", node_id, seg_seq, len(records) // 48) + records)
    return h.digest()


@pytest.mark.parametrize("hash_name", ["sha3-256", "blake2b-256"])
@pytest.mark.parametrize("segment_records", [1, 2, 3, 7, 64, 333])
@pytest.mark.parametrize("level", [0, 2, 3])
def test_segments_hashed_in_lanes_match_spec(native, hash_name, segment_records, level):
    before = native.set_simd(3)
    try:
        used = native.set_simd(level)
        buf, desc = _frames(2000)
        p = native.Pipeline(9, hash_name=hash_name, segment_records=segment_records,
                            join_window_ns=1000)
        p.feed(buf, desc)
        p.flush()
        out = p.take()
        assert len(out.segments) == -(-2000 // segment_records)
        for seg_seq, count, value, records in out.segments:
            assert value == _spec_s(hash_name, 9, seg_seq, records), (used, seg_seq, count)
    finally:
        native.set_simd(before)
