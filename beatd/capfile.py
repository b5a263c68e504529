"""Capture files (pcap, pcapng) read as fast-path batches: ``(buf, desc)`` per docs/fastpath.md.

Two readers, one behaviour (frames, times, damage and its wording):

- ``CaptureReader``: the file mapped into memory and read by C (``fastpath._native.CaptureFile``,
  fastpath/src/beat_capfile.c), no Python object per frame; a batch's ``buf`` is a read-only
  memoryview of the mapping (safe to keep: it keeps the mapping alive) and its descriptors point
  into it. ``feeds(pipeline)`` hands the frames to a native pipeline without any descriptor. Where
  the native fast path is not in use (``fastpath.IMPL == "py"``), it is the reference reader.
- ``ReferenceCaptureReader``: the same in Python, the file read in large chunks; a batch's ``buf``
  is the chunk itself (an immutable ``bytes``) and ends after ``batch_frames`` frames or where the
  next chunk must be read. tests/fastpath/test_capfile_c.py holds the C reader to it.

A file that is not a capture raises ``CaptureError`` at once. A capture that ends inside a record, or
holds a corrupt block length, is read up to that point; the problem is counted
(``reader.capture_truncated``) and described (``reader.errors``), never raised: a damaged capture
must not stop a replay.
"""
import mmap
import os
import struct

import fastpath
from fastpath.output import DESC_FORMAT, DESC_SIZE

__all__ = ["CaptureError", "CaptureReader", "ReferenceCaptureReader", "read_batches"]

CHUNK_SIZE = 16 << 20          # bytes read at a time
MAX_RECORD = 256 << 20         # a single record larger than this is a corrupt length, not a frame
MAX_SNAPLEN = 262144           # libpcap's limit; a pcap record above max(snaplen, this) is corrupt

_DESC = struct.Struct(DESC_FORMAT)

# pcap: magic as read little-endian -> (byte order, nanosecond resolution)
_PCAP_MAGIC = {
    0xa1b2c3d4: ("<", False), 0xd4c3b2a1: (">", False),
    0xa1b23c4d: ("<", True), 0x4d3cb2a1: (">", True),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D

# pcapng block types
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
# options
_OPT_END, _IF_TSRESOL, _IF_TSOFFSET, _EPB_FLAGS = 0, 9, 14, 2


class CaptureError(Exception):
    """The file cannot be read as a capture at all (missing, unreadable, not pcap/pcapng)."""


class _Interface:
    __slots__ = ("linktype", "snaplen", "mul", "div", "shift", "offset_ns")

    def __init__(self, linktype, snaplen):
        self.linktype = linktype
        self.snaplen = snaplen
        self.mul, self.div, self.shift = 1000, 1, 0     # default resolution 10^-6 s
        self.offset_ns = 0

    def set_tsresol(self, v):
        if v & 0x80:                                    # 2^-e seconds per unit
            self.mul, self.div, self.shift = 1_000_000_000, 1, v & 0x7F
        else:                                           # 10^-e seconds per unit
            e = v
            self.shift = 0
            if e <= 9:
                self.mul, self.div = 10 ** (9 - e), 1
            else:
                self.mul, self.div = 1, 10 ** (e - 9)

    def t_ns(self, ts):
        t = ((ts * self.mul) >> self.shift) // self.div + self.offset_ns
        return t if 0 <= t < 1 << 64 else (0 if t < 0 else (1 << 64) - 1)


class ReferenceCaptureReader:
    """Iterate over a capture file's frames as ``(buf, desc)`` batches (in Python: the reference).

    ``format`` is ``"pcap"`` or ``"pcapng"``; after (or during) iteration, ``frames`` counts the
    frames yielded, ``capture_truncated`` the damaged places found (0 or 1: reading stops at the
    first), ``errors`` describes them.
    """
    impl = "py"

    def __init__(self, path, batch_frames=4096, chunk_size=CHUNK_SIZE):
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be at least 1, not {batch_frames}")
        self.path = os.fspath(path)
        self.batch_frames = batch_frames
        self.chunk_size = max(chunk_size, 64)
        self.frames = 0
        self.capture_truncated = 0
        self.errors = []
        try:
            with open(self.path, "rb") as f:
                head = f.read(24)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if len(head) < 4:
            raise CaptureError(f"{self.path}: not a pcap or pcapng file "
                               f"({'empty' if not head else 'only %d bytes' % len(head)})")
        magic = struct.unpack_from("<I", head)[0]
        if magic in _PCAP_MAGIC:
            self.format = "pcap"
            if len(head) < 24:
                raise CaptureError(f"{self.path}: pcap file header truncated ({len(head)} of 24 bytes)")
        elif magic == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise CaptureError(f"{self.path}: not a pcap or pcapng file (magic 0x{magic:08x})")

    def feeds(self, pipeline):
        """Feed ``pipeline`` batch by batch; yields the number of frames of each batch after
        feeding it (the caller takes and commits between batches)."""
        for buf, desc in self:
            pipeline.feed(buf, desc)
            yield len(desc) // DESC_SIZE

    def __iter__(self):
        with open(self.path, "rb") as f:
            self._f = f
            self._data = b""
            self._pos = 0
            self._eof = False
            try:
                if self.format == "pcap":
                    yield from self._pcap()
                else:
                    yield from self._pcapng()
            finally:
                self._f = None
                self._data = b""

    # -- chunked input ------------------------------------------------------------------------

    def _have(self, n):
        """True when n bytes from _pos are in _data; reads more only when _fill() is called."""
        return self._pos + n <= len(self._data)

    def _fill(self, n):
        """Make n bytes from _pos available (dropping what is before _pos). False at end of file.

        Descriptors of the batch being built point into the old _data: the caller must have yielded
        it before calling this.
        """
        rest = self._data[self._pos:]
        want = max(n - len(rest), self.chunk_size)
        parts = [rest]
        got = len(rest)
        while got < n and not self._eof:
            more = self._f.read(want)
            if not more:
                self._eof = True
                break
            parts.append(more)
            got += len(more)
            want = max(n - got, 0) or self.chunk_size
        self._data = b"".join(parts)
        self._pos = 0
        return len(self._data) >= n

    def _truncated(self, what):
        self.capture_truncated += 1
        self.errors.append(f"{self.path}: {what} (after {self.frames} frames); reading stopped there")

    # -- batches --------------------------------------------------------------------------------

    def _batch(self, desc, n):
        self.frames += n
        return self._data, bytes(desc[:n * DESC_SIZE])

    # -- pcap -----------------------------------------------------------------------------------

    def _pcap(self):
        if not self._fill(24):
            raise CaptureError(f"{self.path}: pcap file header truncated")
        magic = struct.unpack_from("<I", self._data)[0]
        bo, nano = _PCAP_MAGIC[magic]
        _, _, _, _, snaplen, linktype = struct.unpack_from(bo + "HHiIII", self._data, 4)
        linktype &= 0xFFFF          # the upper bits carry FCS information
        mul = 1 if nano else 1000
        rec = struct.Struct(bo + "IIII")
        limit = max(snaplen, MAX_SNAPLEN)
        self._pos = 24
        bf = self.batch_frames
        desc = bytearray(bf * DESC_SIZE)
        n = 0
        pack = _DESC.pack_into
        while True:
            if not self._have(16):
                if n:
                    yield self._batch(desc, n)
                    n = 0
                if not self._fill(16):
                    if len(self._data) - self._pos:
                        self._truncated(f"record header truncated "
                                        f"({len(self._data) - self._pos} of 16 bytes)")
                    return
            sec, frac, incl, orig = rec.unpack_from(self._data, self._pos)
            if incl > limit:
                if n:
                    yield self._batch(desc, n)
                self._truncated(f"corrupt record length {incl} (snaplen {snaplen})")
                return
            if not self._have(16 + incl):
                if n:
                    yield self._batch(desc, n)
                    n = 0
                if not self._fill(16 + incl):
                    self._truncated(f"record truncated ({len(self._data) - self._pos - 16} of "
                                    f"{incl} bytes)")
                    return
            caplen = incl if not snaplen or incl <= snaplen else snaplen
            pack(desc, n * DESC_SIZE, sec * 1_000_000_000 + frac * mul, self._pos + 16, caplen,
                 orig, linktype, 0, 0)
            self._pos += 16 + incl
            n += 1
            if n == bf:
                yield self._batch(desc, n)
                n = 0

    # -- pcapng ---------------------------------------------------------------------------------

    def _options(self, bo, start, end):
        """Yield (code, value offset, length) for the options in _data[start:end]."""
        data = self._data
        while start + 4 <= end:
            code, length = struct.unpack_from(bo + "HH", data, start)
            if code == _OPT_END:
                return
            if start + 4 + length > end:
                return
            yield code, start + 4, length
            start += 4 + ((length + 3) & ~3)

    def _pcapng(self):
        bo = "<"
        ifaces = []
        last_t = 0
        bf = self.batch_frames
        desc = bytearray(bf * DESC_SIZE)
        n = 0
        pack = _DESC.pack_into
        while True:
            if not self._have(12):
                if n:
                    yield self._batch(desc, n)
                    n = 0
                if not self._fill(12):
                    if len(self._data) - self._pos:
                        self._truncated(f"block header truncated "
                                        f"({len(self._data) - self._pos} bytes)")
                    return
            data = self._data
            p = self._pos
            btype = struct.unpack_from(bo + "I", data, p)[0]
            if btype == _PCAPNG_SHB:
                bom = struct.unpack_from("<I", data, p + 8)[0]
                if bom == _BOM:
                    bo = "<"
                elif bom == 0x4D3C2B1A:
                    bo = ">"
                else:
                    if n:
                        yield self._batch(desc, n)
                    self._truncated(f"section header with a bad byte-order magic 0x{bom:08x}")
                    return
                ifaces = []             # interface ids are per section
            blen = struct.unpack_from(bo + "I", data, p + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                if n:
                    yield self._batch(desc, n)
                self._truncated(f"corrupt block length {blen} (block type 0x{btype:08x})")
                return
            if not self._have(blen):
                if n:
                    yield self._batch(desc, n)
                    n = 0
                if not self._fill(blen):
                    self._truncated(f"block truncated ({len(self._data) - self._pos} of {blen} "
                                    f"bytes, block type 0x{btype:08x})")
                    return
                data = self._data
                p = self._pos
            if struct.unpack_from(bo + "I", data, p + blen - 4)[0] != blen:
                if n:
                    yield self._batch(desc, n)
                self._truncated(f"corrupt block: trailing length differs from {blen} "
                                f"(block type 0x{btype:08x})")
                return
            end = p + blen - 4
            self._pos = p + blen
            frame = None
            if btype == _EPB and blen >= 32:
                iid, hi, lo, caplen, orig = struct.unpack_from(bo + "IIIII", data, p + 8)
                off = p + 28
                d = 0
                if off + caplen > end:
                    caplen = max(end - off, 0)
                opts = off + ((caplen + 3) & ~3)
                if opts < end:
                    for code, vo, vl in self._options(bo, opts, end):
                        if code == _EPB_FLAGS and vl == 4:
                            d = struct.unpack_from(bo + "I", data, vo)[0] & 3   # 1 in, 2 out
                            if d == 3:
                                d = 0
                if iid < len(ifaces):
                    iface = ifaces[iid]
                    last_t = iface.t_ns((hi << 32) | lo)
                    frame = (last_t, off, caplen, orig, iface.linktype, d)
            elif btype == _SPB and blen >= 16:
                if ifaces:
                    iface = ifaces[0]
                    orig = struct.unpack_from(bo + "I", data, p + 8)[0]
                    off = p + 12
                    caplen = min(orig, end - off)
                    if iface.snaplen:
                        caplen = min(caplen, iface.snaplen)
                    frame = (last_t, off, caplen, orig, iface.linktype, 0)
            elif btype == _PB and blen >= 32:
                iid, _drops, hi, lo, caplen, orig = struct.unpack_from(bo + "HHIIII", data, p + 8)
                off = p + 28
                if off + caplen > end:
                    caplen = max(end - off, 0)
                if iid < len(ifaces):
                    iface = ifaces[iid]
                    last_t = iface.t_ns((hi << 32) | lo)
                    frame = (last_t, off, caplen, orig, iface.linktype, 0)
            elif btype == _IDB and blen >= 20:
                linktype, _res, snaplen = struct.unpack_from(bo + "HHI", data, p + 8)
                iface = _Interface(linktype, snaplen)
                for code, vo, vl in self._options(bo, p + 16, end):
                    if code == _IF_TSRESOL and vl >= 1:
                        iface.set_tsresol(data[vo])
                    elif code == _IF_TSOFFSET and vl == 8:
                        iface.offset_ns = struct.unpack_from(bo + "q", data, vo)[0] * 1_000_000_000
                ifaces.append(iface)
            # anything else (SHB body, NRB, ISB, DSB, custom, unknown) is skipped
            if frame is not None:
                pack(desc, n * DESC_SIZE, *frame, 0)
                n += 1
                if n == bf:
                    yield self._batch(desc, n)
                    n = 0


def _native():
    """fastpath._native when the native fast path is the one in use, else None."""
    if fastpath.IMPL != "c":
        return None
    from fastpath import _native as native
    return native


def _map(path):
    """The file's bytes: a read-only mapping, or (a file that cannot be mapped) read whole."""
    try:
        with open(path, "rb") as f:
            try:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):      # not a regular file
                return f.read()
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        m.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return m


class CaptureReader(ReferenceCaptureReader):
    """``ReferenceCaptureReader``'s batches, counts and errors, read by C from the mapped file.
    ``chunk_size`` is accepted and not used. ``impl`` says which reader runs: ``"c"``, or
    ``"py"`` (the reference) when the native fast path is not in use."""

    def __init__(self, path, batch_frames=4096, chunk_size=CHUNK_SIZE):
        super().__init__(path, batch_frames, chunk_size)
        self._native = _native()
        self.impl = "c" if self._native is not None else "py"

    def _open(self):
        data = _map(self.path)
        try:
            return data, self._native.CaptureFile(data)
        except ValueError as exc:           # changed since __init__ looked at it
            raise CaptureError(f"{self.path}: {exc}") from None

    def _done(self, data, cf):
        if cf.error:
            self._truncated(cf.error)
        del cf
        if isinstance(data, mmap.mmap):
            try:
                data.close()
            except BufferError:             # batches still held: unmapped once they are gone
                pass

    def _run(self, step, count):
        """Map the file, then yield ``step(cf)`` until it returns nothing, counting the frames of
        each (``count``); the damage is noted and the mapping let go at the end."""
        data, cf = self._open()
        while r := step(cf):
            self.frames += count(r)
            yield r
        self._done(data, cf)

    def __iter__(self):
        if self.impl != "c":
            yield from super().__iter__()
            return
        bf = self.batch_frames
        yield from self._run(lambda cf: cf.read(bf), lambda batch: len(batch[1]) // DESC_SIZE)

    def feeds(self, pipeline):
        """As ``ReferenceCaptureReader.feeds``; a native pipeline gets the frames straight from C
        (no descriptor, no Python object per batch but the count)."""
        if self.impl != "c" or not isinstance(pipeline, self._native.Pipeline):
            yield from super().feeds(pipeline)
            return
        bf = self.batch_frames
        yield from self._run(lambda cf: cf.feed(pipeline, bf), lambda n: n)


def read_batches(path, batch_frames=4096):
    """Yield ``(buf, desc)`` batches of the capture at ``path`` (see ``CaptureReader``)."""
    return iter(CaptureReader(path, batch_frames))
