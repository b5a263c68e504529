"""beatd.capfile: pcap and pcapng files read as fast-path batches (docs/fastpath.md, "Frames in")."""
import os
import struct

import pytest
from scapy.utils import PcapNgWriter, wrpcap

from capture_files import _block, _opt, epb, idb, pb, sample_packets, shb, spb, unknown, write_pcap
from conftest import REAL_PCAP_DIR, real_pcaps, require_real_pcaps
from beatd.capfile import CaptureError, CaptureReader, read_batches
from fastpath.output import DESC_FORMAT, DESC_SIZE

REAL = real_pcaps()


def frames_of(path, batch_frames=4096):
    """[(t_ns, frame bytes, wirelen, linktype, dir)] over every batch, checking the descriptors."""
    out = []
    for buf, desc in read_batches(path, batch_frames):
        assert isinstance(desc, bytes) and len(desc) % DESC_SIZE == 0
        assert 0 < len(desc) // DESC_SIZE <= batch_frames
        for t, off, cap, wire, lt, d, flags in struct.iter_unpack(DESC_FORMAT, desc):
            assert off + cap <= len(buf) and flags == 0
            out.append((t, bytes(buf[off:off + cap]), wire, lt, d))
    return out




# -- pcap ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
@pytest.mark.parametrize("endian", ["<", ">"], ids=["le", "be"])
def test_pcap_endian_and_resolution(tmp_path, endian, nano):
    path = tmp_path / "x.pcap"
    pkts = sample_packets()
    wrpcap(str(path), pkts, nano=nano, endianness=endian)
    got = frames_of(path, batch_frames=2)
    assert [g[1] for g in got] == [bytes(p) for p in pkts]
    assert [g[3] for g in got] == [1] * len(pkts)
    for (t, *_), p in zip(got, pkts):
        assert abs(t - int(p.time * 1e9)) < 1000
    # the header's magic says what was written
    magic = path.read_bytes()[:4]
    assert struct.unpack(endian + "I", magic)[0] == (0xa1b23c4d if nano else 0xa1b2c3d4)




def test_pcap_exact_timestamps_linktype_mask_and_wirelen(tmp_path):
    # the upper bits of the linktype field carry FCS information: masked off
    p = write_pcap(tmp_path / "a.pcap", [(5, 999_999_999, b"\x45" * 30, 60), (6, 1, b"\x60" * 2, 2)],
                   linktype=0x10000000 | 101, endian=">", nano=True)
    assert frames_of(p) == [(5_999_999_999, b"\x45" * 30, 60, 101, 0), (6_000_000_001, b"\x60" * 2, 2,
                                                                        101, 0)]
    p = write_pcap(tmp_path / "b.pcap", [(1, 2, b"ab", 2)], linktype=113)
    assert frames_of(p) == [(1_000_002_000, b"ab", 2, 113, 0)]


def test_pcap_snaplen_clips_caplen(tmp_path):
    p = write_pcap(tmp_path / "s.pcap", [(1, 0, b"A" * 100, 100), (2, 0, b"B" * 10, 10)], snaplen=64)
    got = frames_of(p)
    assert [g[1] for g in got] == [b"A" * 64, b"B" * 10]
    assert [g[2] for g in got] == [100, 10]


def test_pcap_across_small_chunks(tmp_path):
    # records that straddle read chunks come out whole and in order
    recs = [(i, 0, bytes([i % 256]) * (i * 7 % 300), i * 7 % 300) for i in range(500)]
    p = write_pcap(tmp_path / "c.pcap", recs)
    got = []
    r = CaptureReader(p, batch_frames=33, chunk_size=100)
    for buf, desc in r:
        for t, off, cap, wire, lt, d, _ in struct.iter_unpack(DESC_FORMAT, desc):
            got.append((t // 1_000_000_000, bytes(buf[off:off + cap])))
    assert got == [(s, d) for s, _, d, _ in recs]
    assert r.frames == 500 and r.capture_truncated == 0


@pytest.mark.parametrize("cut", [1, 8, 16, 20, 39])
def test_pcap_truncated_final_record_is_counted(tmp_path, cut):
    p = write_pcap(tmp_path / "t.pcap", [(1, 0, b"x" * 40, 40), (2, 0, b"y" * 40, 40)])
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - (56 - cut)])     # cut inside the second record
    r = CaptureReader(p)
    frames = [d for _, d in r]
    assert sum(len(d) // DESC_SIZE for d in frames) == 1
    assert r.capture_truncated == 1 and "truncated" in r.errors[0] and str(p) in r.errors[0]


def test_pcap_corrupt_length_is_counted(tmp_path):
    p = write_pcap(tmp_path / "t.pcap", [(1, 0, b"x" * 40, 40)])
    p.write_bytes(p.read_bytes() + struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 40) + b"z" * 100)
    r = CaptureReader(p)
    assert sum(len(d) // DESC_SIZE for _, d in r) == 1
    assert r.capture_truncated == 1 and "corrupt record length" in r.errors[0]


# -- not a capture ------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x00", b"GIF89a\x00\x00 garbage", b"\xd4\xc3\xb2\xa1\x02\x00"])
def test_not_a_capture(tmp_path, content):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        list(read_batches(p))
    assert str(p) in str(e.value)
    if content.startswith(b"GIF"):
        assert "not a pcap or pcapng file (magic 0x38464947)" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError, match="nope.pcap: cannot read"):
        CaptureReader(tmp_path / "nope.pcap")


# -- pcapng, written by hand --------------------------------------------------------------------

















@pytest.mark.parametrize("bo", ["<", ">"], ids=["le", "be"])
def test_pcapng_by_hand(tmp_path, bo):
    p = tmp_path / "x.pcapng"
    p.write_bytes(
        shb(bo)
        + idb(bo, 1)                                  # 0: Ethernet, default microseconds
        + idb(bo, 101, tsresol=9)                     # 1: raw IP, nanoseconds
        + idb(bo, 113, tsresol=0x80 | 10, tsoffset=100)  # 2: SLL, 2^-10 s, +100 s
        + unknown(bo)
        + epb(bo, 0, 1_700_000_000_123_456, b"e" * 14, orig=99)
        + epb(bo, 1, 1_700_000_000_123_456_789, b"r" * 21, flags=1)
        + epb(bo, 2, 3 * 1024 + 512, b"s" * 16, flags=2)
        + spb(bo, b"p" * 7)                           # no timestamp: the previous frame's
        + pb(bo, 1, 42, b"o" * 5)                     # obsolete packet block
    )
    assert frames_of(p, batch_frames=2) == [
        (1_700_000_000_123_456_000, b"e" * 14, 99, 1, 0),
        (1_700_000_000_123_456_789, b"r" * 21, 21, 101, 1),
        (103_500_000_000, b"s" * 16, 16, 113, 2),
        (103_500_000_000, b"p" * 7, 7, 1, 0),         # SPB: interface 0's link type
        (42, b"o" * 5, 5, 101, 0),
    ]


def test_pcapng_sections_change_byte_order_and_interfaces(tmp_path):
    p = tmp_path / "m.pcapng"
    p.write_bytes(shb("<") + idb("<", 1) + epb("<", 0, 1, b"a" * 20)
                  + shb(">") + idb(">", 228, tsresol=3) + epb(">", 0, 5, b"b" * 20)
                  + epb(">", 1, 5, b"c" * 20))     # no interface 1 in this section: skipped
    assert frames_of(p) == [(1000, b"a" * 20, 20, 1, 0), (5_000_000, b"b" * 20, 20, 228, 0)]


def test_pcapng_spb_snaplen(tmp_path):
    p = tmp_path / "s.pcapng"
    p.write_bytes(shb("<") + idb("<", 1, snaplen=8) + epb("<", 0, 7, b"z" * 4) + spb("<", b"q" * 30))
    assert frames_of(p) == [(7000, b"z" * 4, 4, 1, 0), (7000, b"q" * 8, 30, 1, 0)]


def test_pcapng_with_scapy(tmp_path):
    p = tmp_path / "scapy.pcapng"
    pkts = sample_packets()
    w = PcapNgWriter(str(p))
    for pkt in pkts:
        w.write(pkt)
    w.close()
    got = frames_of(p)
    assert [g[1] for g in got] == [bytes(x) for x in pkts]
    assert all(g[3] == 1 for g in got)
    for (t, *_), x in zip(got, pkts):
        assert abs(t - int(x.time * 1e9)) < 1000


@pytest.mark.parametrize("cut", [3, 11, 30])
def test_pcapng_truncated_block_is_counted(tmp_path, cut):
    p = tmp_path / "t.pcapng"
    data = shb("<") + idb("<", 1) + epb("<", 0, 1, b"a" * 20) + epb("<", 0, 2, b"b" * 20)
    p.write_bytes(data[:-cut])
    r = CaptureReader(p)
    assert sum(len(d) // DESC_SIZE for _, d in r) == 1
    assert r.capture_truncated == 1, r.errors


@pytest.mark.parametrize("blen", [0, 13, 8, 1 << 30])
def test_pcapng_corrupt_block_length_is_counted(tmp_path, blen):
    p = tmp_path / "c.pcapng"
    bad = bytearray(epb("<", 0, 2, b"b" * 20))
    struct.pack_into("<I", bad, 4, blen)
    p.write_bytes(shb("<") + idb("<", 1) + epb("<", 0, 1, b"a" * 20) + bytes(bad))
    r = CaptureReader(p)
    assert sum(len(d) // DESC_SIZE for _, d in r) == 1
    assert r.capture_truncated == 1 and r.errors


def test_pcapng_trailing_length_mismatch_is_counted(tmp_path):
    p = tmp_path / "c.pcapng"
    bad = bytearray(epb("<", 0, 2, b"b" * 20))
    struct.pack_into("<I", bad, len(bad) - 4, 16)
    p.write_bytes(shb("<") + idb("<", 1) + bytes(bad))
    r = CaptureReader(p)
    assert list(r) == [] and r.capture_truncated == 1 and "trailing length" in r.errors[0]


# -- the real captures --------------------------------------------------------------------------

def test_every_real_capture_reads():
    total = 0
    for path in require_real_pcaps():
        r = CaptureReader(path, batch_frames=64)
        for buf, desc in r:
            for t, off, cap, wire, lt, d, _ in struct.iter_unpack(DESC_FORMAT, desc):
                assert off + cap <= len(buf) and cap <= wire or wire < cap <= 262144
        assert r.frames > 0 or r.capture_truncated, path
        total += r.frames
    assert total > 1000


def test_real_capture_matches_scapy():
    path = os.path.join(REAL_PCAP_DIR, "bug-5486__154.pcap")
    assert os.path.exists(path), f"missing {path}"
    from scapy.utils import RawPcapReader
    want = [(bytes(data), meta.sec * 1_000_000_000 + meta.usec * 1000)
            for data, meta in RawPcapReader(path)]
    got = [(f, t) for t, f, *_ in frames_of(path, batch_frames=7)]
    assert got == want
