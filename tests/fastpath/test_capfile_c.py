"""The C capture reader (fastpath._native.CaptureFile behind beatd.capfile.CaptureReader) against the
Python reference (ReferenceCaptureReader): the same frames, times, link types, directions, counts
and error messages on every real capture and on damaged files made here."""
import random
import struct

import pytest

from beatd.capfile import CaptureError, CaptureReader, ReferenceCaptureReader
from conftest import require_real_pcaps
from fastpath.output import DESC_FORMAT, DESC_SIZE
from capture_files import _block, _opt, epb, idb, pb, sample_packets, shb, spb, unknown, write_pcap

pytestmark = pytest.mark.usefixtures("native")


def read_all(reader):
    """(format, frames as (t, bytes, wirelen, linktype, dir, flags), count, truncated, errors)."""
    frames = []
    for buf, desc in reader:
        assert isinstance(desc, bytes) and 0 < len(desc) // DESC_SIZE <= reader.batch_frames
        for t, off, cap, wire, lt, d, fl in struct.iter_unpack(DESC_FORMAT, desc):
            assert off + cap <= len(buf)
            frames.append((t, bytes(buf[off:off + cap]), wire, lt, d, fl))
    return reader.format, frames, reader.frames, reader.capture_truncated, reader.errors


def both(path, batch=5, chunk=64):
    """The two readers' results; CaptureError (its message) when both raise it."""
    out = []
    for make in (lambda: ReferenceCaptureReader(path, batch, chunk_size=chunk),
                 lambda: CaptureReader(path, batch)):
        try:
            r = make()
            if isinstance(r, CaptureReader):
                assert r.impl == "c"
            out.append(read_all(r))
        except CaptureError as exc:
            out.append(("CaptureError", str(exc)))
    return out


def assert_same(path, **kw):
    ref, c = both(path, **kw)
    assert c == ref, path
    return ref


def test_every_real_capture_is_read_the_same():
    n = 0
    for path in require_real_pcaps():
        for batch in (1, 7, 4096):
            ref = assert_same(path, batch=batch, chunk=4096 if batch == 1 else 1 << 20)
        n += ref[2]
    assert n > 1000


def _pcapng_file(bo):
    return (shb(bo)
            + idb(bo, 1)
            + idb(bo, 101, tsresol=9, snaplen=30)
            + idb(bo, 113, tsresol=0x80 | 10, tsoffset=-3)
            + unknown(bo)
            + epb(bo, 0, 1_700_000_000_123_456, b"e" * 14, orig=99)
            + epb(bo, 1, 1_700_000_000_123_456_789, b"r" * 21, flags=1)
            + epb(bo, 2, 3 * 1024 + 512, b"s" * 16, flags=2)
            + epb(bo, 7, 5, b"n" * 3)                  # no interface 7: skipped
            + spb(bo, b"p" * 7)
            + pb(bo, 1, 42, b"o" * 5)
            + shb(">" if bo == "<" else "<")            # a new section: interfaces forgotten
            + epb(">" if bo == "<" else "<", 0, 9, b"x" * 4)
            + idb(">" if bo == "<" else "<", 228, tsresol=3)
            + epb(">" if bo == "<" else "<", 0, 9, b"y" * 4, flags=3))


def _pcap_file(tmp_path, endian="<", nano=False, snaplen=65535):
    recs = [(i, i * 1000 + 7, bytes([i]) * (i * 5 % 40), i * 5 % 40 + i) for i in range(12)]
    return write_pcap(tmp_path / "p.pcap", recs, linktype=0x10000000 | 1, endian=endian, nano=nano,
                      snaplen=snaplen).read_bytes()


@pytest.mark.parametrize("bo", ["<", ">"], ids=["le", "be"])
def test_pcapng_cut_at_every_offset(tmp_path, bo):
    data = _pcapng_file(bo)
    p = tmp_path / "cut.pcapng"
    for cut in range(len(data) + 1):
        p.write_bytes(data[:cut])
        ref = assert_same(p, batch=3)
        if cut == len(data):
            assert ref[3] == 0 and ref[2] == 6


@pytest.mark.parametrize("endian,nano", [("<", False), (">", True)], ids=["le-us", "be-ns"])
def test_pcap_cut_at_every_offset(tmp_path, endian, nano):
    data = _pcap_file(tmp_path, endian, nano)
    p = tmp_path / "cut.pcap"
    for cut in range(len(data) + 1):
        p.write_bytes(data[:cut])
        assert_same(p, batch=4)


def test_every_byte_changed_to_damaging_values(tmp_path):
    # every position of both files set to values that break lengths, magics and options
    p = tmp_path / "x.cap"
    for data in (_pcapng_file("<"), _pcap_file(tmp_path)):
        for i in range(len(data)):
            for v in (0x00, 0x03, 0x7F, 0x80, 0xFF):
                if data[i] == v:
                    continue
                p.write_bytes(data[:i] + bytes([v]) + data[i + 1:])
                assert_same(p, batch=4)


def test_random_damage(tmp_path):
    rnd = random.Random(1313)
    base = [_pcapng_file("<"), _pcapng_file(">"), _pcap_file(tmp_path, ">", True)]
    p = tmp_path / "r.cap"
    for _ in range(1500):
        data = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            del data[rnd.randrange(len(data)):]
        p.write_bytes(bytes(data))
        assert_same(p, batch=rnd.randint(1, 9))


@pytest.mark.parametrize("blen", [0, 4, 8, 13, 16, 1 << 28, (1 << 28) + 4, 0xFFFFFFFC])
def test_corrupt_block_lengths(tmp_path, blen):
    bad = bytearray(epb("<", 0, 2, b"b" * 20))
    struct.pack_into("<I", bad, 4, blen)
    p = tmp_path / "c.pcapng"
    p.write_bytes(shb("<") + idb("<", 1) + epb("<", 0, 1, b"a" * 20) + bytes(bad) + b"\0" * 64)
    ref = assert_same(p)
    assert ref[3] == 1 and ref[2] == 1


def test_every_tsresol_and_extreme_offsets(tmp_path):
    p = tmp_path / "t.pcapng"
    for v in range(256):
        for off in (None, 0, -(1 << 63), (1 << 63) - 1, -1_700_000_001):
            blocks = shb("<") + idb("<", 1, tsresol=v, tsoffset=off)
            for ts in (0, 1, 1_700_000_000_123_456_789, (1 << 64) - 1, 1 << 63):
                blocks += epb("<", 0, ts, b"z" * 14)
            p.write_bytes(blocks)
            ref = assert_same(p, batch=64)
            assert ref[3] == 0 and ref[2] == 5


def test_tsresol_options_repeated_and_short(tmp_path):
    bo = "<"
    opts = (_opt(bo, 9, bytes([3])) + _opt(bo, 9, b"") + _opt(bo, 9, bytes([0x85, 1]))
            + _opt(bo, 14, struct.pack(bo + "q", 5)) + _opt(bo, 14, b"\1\2\3") + _opt(bo, 0, b""))
    block = _block(bo, 1, struct.pack(bo + "HHI", 1, 0, 0) + opts)
    opt_past_end = _block(bo, 1, struct.pack(bo + "HHI", 1, 0, 0) + struct.pack(bo + "HH", 9, 200))
    p = tmp_path / "o.pcapng"
    p.write_bytes(shb(bo) + block + opt_past_end + epb(bo, 0, 1 << 20, b"a" * 14)
                  + epb(bo, 1, 1 << 40, b"b" * 14, flags=0xFFFFFFF2))
    ref = assert_same(p)
    assert [f[0] for f in ref[1]] == [((1 << 20) * 10 ** 9 >> 5) + 5 * 10 ** 9, (1 << 40) * 1000]


@pytest.mark.parametrize("snaplen", [0, 1, 20, 262144, 262145, 0xFFFFFFFF])
def test_pcap_snaplen_limits(tmp_path, snaplen):
    recs = [(1, 0, b"a" * 30, 30), (2, 0, b"b" * 262145, 262145), (3, 0, b"c", 1)]
    p = write_pcap(tmp_path / "s.pcap", recs, snaplen=snaplen)
    ref = assert_same(p, batch=2)
    assert ref[2] == (3 if snaplen in (262145, 0xFFFFFFFF) else 1)


def test_not_a_capture_raises_at_once(tmp_path):
    p = tmp_path / "x"
    for content in (b"", b"\x00", b"\xd4\xc3\xb2\xa1\x02\x00", b"GIF89a\x00\x00 garbage",
                    b"\xd4\xc3\xb2\xa1" + b"\0" * 19):
        p.write_bytes(content)
        with pytest.raises(CaptureError) as ref:
            ReferenceCaptureReader(p)
        with pytest.raises(CaptureError) as c:
            CaptureReader(p)
        assert str(c.value) == str(ref.value) and str(p) in str(c.value)


def test_capture_file_rejects_what_is_not_a_capture(native):
    with pytest.raises(ValueError, match=r"not a pcap or pcapng file \(magic 0x38464947\)"):
        native.CaptureFile(b"GIF89a whatever")
    with pytest.raises(ValueError, match=r"\(empty\)"):
        native.CaptureFile(b"")
    with pytest.raises(ValueError, match=r"pcap file header truncated \(4 of 24 bytes\)"):
        native.CaptureFile(b"\xd4\xc3\xb2\xa1")
    cf = native.CaptureFile(bytearray(_pcapng_file("<")))
    assert cf.format == "pcapng" and cf.read(100)[1] and cf.read(100) is None
    assert cf.done and not cf.damaged and cf.error is None and cf.frames == 6
    with pytest.raises(ValueError, match="at least 1"):
        cf.read(0)


def test_batches_are_safe_to_keep(tmp_path):
    p = tmp_path / "k.pcap"
    from scapy.utils import wrpcap
    pkts = sample_packets(50)
    wrpcap(str(p), pkts)
    kept = list(CaptureReader(p, batch_frames=8))    # the mapping outlives the reader
    got = [bytes(buf[off:off + cap]) for buf, desc in kept
           for _, off, cap, *_ in struct.iter_unpack(DESC_FORMAT, desc)]
    assert got == [bytes(x) for x in pkts]


def test_feeding_a_native_pipeline_directly_equals_feeding_batches(tmp_path, native, pure):
    """replay's path (frames from C straight into the pipeline) against (buf, desc) batches, and
    against the pure twin fed the C reader's batches (memoryviews of the mapping)."""
    paths = require_real_pcaps()[:40]
    kw = dict(own_macs=[bytes.fromhex("020000000001")], join_window_ns=1000,
              receipt_epoch_ns=10_000, segment_records=7)
    for path in paths:
        outs = []
        for direct, twin in ((True, native), (False, native), (True, pure)):
            pipe = twin.Pipeline(3, **kw)
            r = CaptureReader(path, batch_frames=16)
            takes = []
            if direct:
                for n in r.feeds(pipe):
                    assert 0 < n <= 16
                    takes.append(pipe.take())
            else:
                for buf, desc in r:
                    pipe.feed(buf, desc)
                    takes.append(pipe.take())
            pipe.flush()
            takes.append(pipe.take())
            outs.append(([[getattr(o, k) for k in o.__slots__] for o in takes], pipe.totals(),
                         r.frames, r.errors))
        assert outs[0] == outs[1] == outs[2], path


def test_reference_reader_when_the_fast_path_is_pure(tmp_path, monkeypatch):
    import fastpath
    monkeypatch.setattr(fastpath, "IMPL", "py")
    p = write_pcap(tmp_path / "a.pcap", [(1, 2, b"ab", 2)])
    r = CaptureReader(p)
    assert r.impl == "py" and read_all(r)[1] == [(1_000_002_000, b"ab", 2, 1, 0, 0)]
