# cython: language_level=3
"""Native twin of the fast path (docs/fastpath.md): the C pipeline behind the same API as
fastpath.pure. Frames are processed without the GIL; Python sees only whole batches."""
import struct

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memcmp

from fastpath.includes.beat cimport *

from .output import (COUNTER_SIZE, DEFAULT_MAX_RECEIPTS_PER_EPOCH, DESC_FORMAT, DESC_SIZE,
                     HASH_NAMES, MAX_RECEIPTS_PER_EPOCH_LIMIT, NONE, OPEN_RECEIPT_SIZE,
                     RECEIPT_SIZE, RECORD_SIZE, STAT_NAMES, Output, neighbour_binding, pack_desc)

_DESC = struct.Struct(DESC_FORMAT)
_MAX_ID = (1 << 64) - 2

include "segbuf.pxi"


def simd():
    """The Keccak lanes the batch hashing uses here: "scalar", "avx2x4" or "avx512x8"."""
    return beat_hash_simd_name().decode()


def set_simd(level):
    """Cap the SIMD level (0 scalar, 2 AVX2, 3 AVX-512) for tests and benchmarks."""
    return beat_hash_set_simd(level)


cdef int _alg(hash_name) except -1:
    if hash_name == "sha3-256":
        return BEAT_HASH_SHA3_256
    if hash_name == "blake2b-256":
        return BEAT_HASH_BLAKE2B_256
    raise ValueError(f"hash_name must be one of {HASH_NAMES}, got {hash_name!r}")


def _check_id(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_ID:
        raise ValueError(f"{name} must be an integer in 1..2^64-2, got {value!r}")


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")


def _mac(name, mac):
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"{name} must be 6 bytes, got {len(mac)} ({mac.hex()})")
    return mac


def t_range(records):
    """(min t_ns, max t_ns) of 48-byte records, (0, 0) when there are none."""
    cdef const uint8_t[::1] r = memoryview(records).cast("B") if len(records) else b"\0"
    cdef size_t n = len(records)
    cdef size_t i
    cdef uint64_t t, lo = 0, hi = 0
    cdef const uint8_t *q = &r[0]
    cdef size_t rs = RECORD_SIZE
    if n % RECORD_SIZE:
        raise ValueError(f"records length {n} is not a multiple of {RECORD_SIZE}")
    if n == 0:
        return 0, 0
    with nogil:   # by pointer: a bounds-checked index per record cost more than the loads
        lo = hi = rd64be(q)
        i = rs
        while i < n:
            t = rd64be(q + i)
            if t < lo:
                lo = t
            if t > hi:
                hi = t
            i += rs
    return lo, hi


cdef class Pipeline:
    cdef beat_pipe *p
    cdef int alg
    cdef uint64_t node_id
    cdef uint32_t segment_records
    cdef _Spares spares
    cdef bint segment_views

    def __cinit__(self, node_id, hash_name="sha3-256", own_macs=(), neighbours=None,
                  join_window_ns=50_000_000, receipt_epoch_ns=1_000_000_000,
                  segment_records=1024, anchor_period_ns=10_000_000_000, max_pending=1 << 16,
                  max_receipts_per_epoch=DEFAULT_MAX_RECEIPTS_PER_EPOCH, records_out=True,
                  segment_views=False):
        _check_id("node_id", node_id)
        for name, flag in (("records_out", records_out), ("segment_views", segment_views)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.alg = _alg(hash_name)
        _check_positive("join_window_ns", join_window_ns)
        _check_positive("receipt_epoch_ns", receipt_epoch_ns)
        _check_positive("anchor_period_ns", anchor_period_ns)
        if not isinstance(segment_records, int) or not 1 <= segment_records <= 1_000_000:
            raise ValueError(f"segment_records must be in 1..1000000, got {segment_records!r}")
        if (not isinstance(max_pending, int) or not (1 << 4) <= max_pending <= (1 << 24)
                or max_pending & (max_pending - 1)):
            raise ValueError(f"max_pending must be a power of two in 2^4..2^24, got {max_pending!r}")
        if (not isinstance(max_receipts_per_epoch, int) or isinstance(max_receipts_per_epoch, bool)
                or not 1 <= max_receipts_per_epoch <= MAX_RECEIPTS_PER_EPOCH_LIMIT):
            raise ValueError(f"max_receipts_per_epoch must be an integer in "
                             f"1..{MAX_RECEIPTS_PER_EPOCH_LIMIT}, got {max_receipts_per_epoch!r}")
        own = b"".join(_mac("own_macs entry", m) for m in own_macs)
        if len(own) // 6 > BEAT_MAX_OWN:
            raise ValueError(f"own_macs holds {len(own) // 6} MACs, at most {BEAT_MAX_OWN}")
        self.node_id = node_id
        self.segment_records = segment_records
        self.spares = _Spares()
        self.segment_views = segment_views
        self.p = beat_pipe_new(node_id, self.alg, join_window_ns, receipt_epoch_ns,
                               segment_records, anchor_period_ns, max_pending,
                               max_receipts_per_epoch)
        if self.p == NULL:
            raise MemoryError("fast path: cannot allocate the pipeline "
                              f"(max_pending={max_pending}, segment_records={segment_records})")
        beat_pipe_set_own(self.p, own, len(own) // 6)
        beat_pipe_set_records_out(self.p, records_out)
        self.set_neighbours(neighbours or {})

    def __dealloc__(self):
        beat_pipe_free(self.p)
        self.p = NULL

    def set_neighbours(self, neighbours):
        """``{mac: node_id}`` (the neighbour on every interface) or ``{mac: (node_id, slots)}``
        (only on the interfaces of those slots; docs/fastpath.md "Neighbour ids")."""
        macs = []
        ids = []
        masks = []
        for mac, value in dict(neighbours or {}).items():
            macs.append(_mac("neighbour MAC", mac))
            node, mask = neighbour_binding(mac, value)
            _check_id(f"neighbour id of {bytes(mac).hex(':')}", node)
            ids.append(struct.pack("=Q", node))
            masks.append(struct.pack("=Q", mask))
        cdef bytes mb = b"".join(macs)
        cdef bytes ib = b"".join(ids)
        cdef bytes sb = b"".join(masks)
        cdef int rc
        cdef int n = len(macs)
        cdef const uint8_t *mp = mb
        cdef const uint64_t *ip = <const uint64_t *><const uint8_t *>ib
        cdef const uint64_t *sp = <const uint64_t *><const uint8_t *>sb
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_set_neighbours(self.p, mp, ip, sp, n)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: cannot allocate the neighbour map")

    def feed(self, buf, desc):
        cdef const uint8_t[::1] b = memoryview(buf).cast("B") if len(buf) else b"\0"
        cdef const uint8_t[::1] d = memoryview(desc).cast("B") if len(desc) else b"\0"
        cdef size_t n = len(desc) // DESC_SIZE
        cdef size_t buflen = len(buf)
        cdef long bad
        cdef int rc
        if len(desc) % DESC_SIZE:
            raise ValueError(f"desc length {len(desc)} is not a multiple of {DESC_SIZE}")
        if n == 0:
            return
        bad = beat_pipe_check_desc(&d[0], n, buflen)
        if bad >= 0:
            t, off, cap, wl, lt, dr, fl = _DESC.unpack_from(desc, bad * DESC_SIZE)
            if dr > 2:
                raise ValueError(f"descriptor {bad}: dir must be 0, 1 or 2, got {dr}")
            raise ValueError(f"descriptor {bad}: offset {off} + caplen {cap} = {off + cap} exceeds "
                             f"len(buf) {buflen}")
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_feed_desc(self.p, &b[0], &d[0], n)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while processing a batch")

    def flush(self):
        cdef int rc
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_flush(self.p)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while flushing")

    def close_segment(self):
        cdef int rc
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_close_segment(self.p)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while closing a segment")

    def advance(self, now_ns):
        """The clock moves to now_ns (if later) without a frame: a quiet link still releases the
        observations whose join window has passed and closes receipt epochs."""
        if not isinstance(now_ns, int) or not 0 <= now_ns < (1 << 64):
            raise ValueError(f"now_ns must be an integer in 0..2^64-1, got {now_ns!r}")
        cdef uint64_t t = now_ns
        cdef int rc
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_advance(self.p, t)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while advancing the clock")

    def resume(self, next_seg_seq, open_records=b"", open_receipts=b"", closed_before=0):
        open_records, open_receipts = self._check_resume(open_records, open_receipts)
        cdef const uint8_t *r = open_records
        cdef const uint8_t *c = open_receipts
        cdef size_t nr = len(open_records) // RECORD_SIZE
        cdef size_t nc = len(open_receipts) // OPEN_RECEIPT_SIZE
        cdef uint64_t seq = next_seg_seq
        cdef uint64_t cb = closed_before
        cdef int rc
        with nogil:
            beat_pipe_lock(self.p)
            rc = beat_pipe_resume(self.p, seq, r, nr, c, nc, cb)
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while resuming")

    def rewind(self, next_seg_seq, open_records=b"", open_receipts=b"", closed_before=0):
        """``take()`` and ``resume(...)`` in one step, under the pipeline's lock: returns what
        ``take()`` would have returned, and the pipeline goes on from the state given (the daemon
        drops a batch that a full store could not hold, docs/fastpath.md)."""
        open_records, open_receipts = self._check_resume(open_records, open_receipts)
        cdef const uint8_t *r = open_records
        cdef const uint8_t *c = open_receipts
        cdef size_t nr = len(open_records) // RECORD_SIZE
        cdef size_t nc = len(open_receipts) // OPEN_RECEIPT_SIZE
        cdef uint64_t seq = next_seg_seq
        cdef uint64_t cb = closed_before
        cdef int rc = 0
        with nogil:
            beat_pipe_lock(self.p)
        try:
            out = self._take_locked()
            rc = beat_pipe_resume(self.p, seq, r, nr, c, nc, cb)
        finally:
            beat_pipe_unlock(self.p)
        if rc:
            raise MemoryError("fast path: out of memory while resuming")
        return out

    def _check_resume(self, open_records, open_receipts):
        """ValueError for a resume state the pipeline cannot take (nothing changed then)."""
        open_records = bytes(open_records)
        open_receipts = bytes(open_receipts)
        if len(open_records) % RECORD_SIZE or len(open_records) // RECORD_SIZE >= self.segment_records:
            raise ValueError(f"open_records must hold fewer than segment_records="
                             f"{self.segment_records} records of {RECORD_SIZE} bytes, got "
                             f"{len(open_records)} bytes")
        if len(open_receipts) % OPEN_RECEIPT_SIZE:
            raise ValueError(f"open_receipts length {len(open_receipts)} is not a multiple of "
                             f"{OPEN_RECEIPT_SIZE}")
        keys = set()
        for i in range(0, len(open_receipts), OPEN_RECEIPT_SIZE):
            key = open_receipts[i:i + 41]
            if key[8] not in (1, 2):
                raise ValueError(f"open_receipts entry {i // OPEN_RECEIPT_SIZE}: role must be "
                                 f"1 or 2, got {key[8]}")
            if key in keys:
                raise ValueError(f"open_receipts entry {i // OPEN_RECEIPT_SIZE}: duplicate key "
                                 f"(epoch_ns {int.from_bytes(key[:8], 'big')}, role {key[8]})")
            keys.add(key)
        return open_records, open_receipts

    def take(self):
        with nogil:
            beat_pipe_lock(self.p)
        try:
            return self._take_locked()
        finally:
            beat_pipe_unlock(self.p)

    cdef object _take_locked(self):
        cdef const beat_buf *rec = beat_pipe_records(self.p)
        cdef const beat_buf *seg = beat_pipe_segments(self.p)
        cdef beat_buf given
        cdef const beat_buf *rcp = beat_pipe_receipts(self.p)
        cdef beat_buf ctr
        cdef beat_buf orc
        cdef size_t n_open
        cdef uint64_t seg_seq
        cdef const uint64_t *st = beat_pipe_stats(self.p)
        records = rec.d[:rec.len] if rec.len else b""
        receipts = rcp.d[:rcp.len] if rcp.len else b""
        segments = []
        cdef size_t off = 0
        cdef size_t s_len
        cdef uint64_t s_count
        cdef SegmentBuffer sb
        if seg.len and not self.segment_views:   # one copy per segment, from the C buffer
            while off < seg.len:
                s_count = rd64be(seg.d + off + 8)
                s_len = s_count * RECORD_SIZE
                segments.append((rd64be(seg.d + off), s_count, seg.d[off + 16:off + 48],
                                 seg.d[off + 48:off + 48 + s_len]))
                off += 48 + s_len
        elif seg.len:   # the buffer itself, no copy: each segment's records a view of it
            given = self.spares.pop()
            if beat_pipe_swap_segments(self.p, &given):
                free(given.d)
                raise MemoryError("fast path: out of memory while handing out segments")
            sb = _segment_buffer(given, self.spares)
            view = memoryview(sb)
            while off < sb.n:
                s_count = rd64be(sb.d + off + 8)
                s_len = s_count * RECORD_SIZE
                segments.append((rd64be(sb.d + off), s_count, sb.d[off + 16:off + 48],
                                 view[off + 48:off + 48 + s_len]))
                off += 48 + s_len
        if beat_pipe_counters(self.p, &ctr):
            free(ctr.d)
            raise MemoryError("fast path: out of memory while reporting counters")
        counters = ctr.d[:ctr.len] if ctr.len else b""
        free(ctr.d)
        if beat_pipe_open_receipts(self.p, &orc):
            free(orc.d)
            raise MemoryError("fast path: out of memory while reporting receipts")
        open_receipts = orc.d[:orc.len] if orc.len else b""
        free(orc.d)
        cdef const uint8_t *op = beat_pipe_open_records(self.p, &n_open, &seg_seq)
        open_records = op[:n_open * RECORD_SIZE] if n_open else b""
        stats = {STAT_NAMES[i]: st[i] for i in range(ST_COUNT)}
        out = Output(records, segments, receipts, counters, stats, seg_seq, open_records,
                     open_receipts, beat_pipe_closed_before(self.p))
        beat_pipe_reset_outputs(self.p)
        return out

    def take_wrong_interface(self):
        """The frames since the previous call whose neighbour MAC was on an interface where that
        neighbour is not: ``[(mac, slot, dir, node_id, frames)]`` by (MAC, slot, dir) in first-seen
        order, at most BEAT_WRONG_IF_MAX = 16 (later ones are only counted in the stats)."""
        cdef beat_wrong_if w[BEAT_WRONG_IF_MAX]
        cdef size_t n, i
        with nogil:
            beat_pipe_lock(self.p)
            n = beat_pipe_take_wrong_interface(self.p, w, BEAT_WRONG_IF_MAX)
            beat_pipe_unlock(self.p)
        return [(bytes(w[i].mac[:6]), w[i].slot, w[i].dir, w[i].node_id, w[i].frames)
                for i in range(n)]

    def take_unknown_macs(self):
        """The frames since the previous call whose neighbour MAC is no neighbour's (recorded as
        from or to outside): ``([(mac, slot, dir, frames)], unlisted)``, by (MAC, slot, dir) in
        first-seen order, at most BEAT_UNKNOWN_MAC_MAX = 64; ``unlisted`` the frames of later
        ones."""
        cdef beat_unknown_mac u[BEAT_UNKNOWN_MAC_MAX]
        cdef size_t n, i
        cdef uint64_t unlisted = 0
        with nogil:
            beat_pipe_lock(self.p)
            n = beat_pipe_take_unknown_macs(self.p, u, BEAT_UNKNOWN_MAC_MAX, &unlisted)
            beat_pipe_unlock(self.p)
        return ([(bytes(u[i].mac[:6]), u[i].slot, u[i].dir, u[i].frames) for i in range(n)],
                unlisted)

    def totals(self):
        cdef const uint64_t *st
        with nogil:
            beat_pipe_lock(self.p)
        try:
            st = beat_pipe_totals(self.p)
            return {STAT_NAMES[i]: st[i] for i in range(ST_COUNT)}
        finally:
            beat_pipe_unlock(self.p)


def pd_ft(frame, linktype, hash_name="sha3-256"):
    """(reason, PD, FT) of one frame: reason is None when it has a digest, else its stat name."""
    cdef int alg = _alg(hash_name)
    cdef bytes f = bytes(frame)
    cdef beat_obs o
    cdef beat_macset own
    cdef uint8_t h[32]
    cdef uint8_t m[42]
    own.own = NULL
    own.n_own = 0
    r = beat_parse(f, len(f), linktype, 0, 0, &own, &o)
    if r:
        return STAT_NAMES[r], None, None
    beat_hash(alg, o.msg, o.msg_len, h)
    pd = h[:16]
    tag = b"BEAT-FT-v1" + o.src[:16] + o.dst[:16]
    beat_hash(alg, <const uint8_t *>tag, 42, h)
    return None, pd, h[:8]


def fp_many(records, node_id, hash_name="sha3-256"):
    cdef int alg = _alg(hash_name)
    _check_id("node_id", node_id)
    cdef bytes r = bytes(records)
    if len(r) % RECORD_SIZE:
        raise ValueError(f"records length {len(r)} is not a multiple of {RECORD_SIZE}")
    cdef size_t n = len(r) // RECORD_SIZE
    out = bytearray(n * 32)
    cdef uint8_t[::1] o = out
    if n:
        beat_fp_many(alg, node_id, r, n, &o[0])
    return bytes(out)


def segment_value(hash_name, node_id, seg_seq, records):
    cdef int alg = _alg(hash_name)
    _check_id("node_id", node_id)
    cdef bytes r = bytes(records)
    cdef uint8_t h[32]
    if len(r) % RECORD_SIZE:
        raise ValueError(f"records length {len(r)} is not a multiple of {RECORD_SIZE}")
    beat_segment_value(alg, node_id, seg_seq, r, len(r) // RECORD_SIZE, h)
    return h[:32]


def receipt_value(hash_name, node_id, role, src, dst, epoch_ns, packets, nbytes):
    cdef int alg = _alg(hash_name)
    _check_id("node_id", node_id)
    if role not in (1, 2):
        raise ValueError(f"role must be 1 (ingress) or 2 (egress), got {role!r}")
    cdef bytes s = bytes(src)
    cdef bytes d = bytes(dst)
    cdef uint8_t h[32]
    if len(s) != 16 or len(d) != 16:
        raise ValueError(f"src and dst must be 16 bytes, got {len(s)} and {len(d)}")
    beat_receipt_value(alg, node_id, role, s, d, epoch_ns, packets, nbytes, h)
    return h[:32]
def merkle_levels(hash_name, leaves):
    """The levels of the RFC 9162 tree over ``leaves`` (n x 33 bytes of SPEC leaf data): level 0
    the n leaf hashes H(0x00||leaf), level k+1 H(0x01||left||right) over adjacent pairs of level k
    (an odd last node carried up), up to the root; ``[H()]`` for n = 0. A list of bytes, 32 bytes
    per node. Hashed in SIMD lanes without the GIL."""
    cdef int alg = _alg(hash_name)
    mvl = memoryview(leaves).cast("B")
    cdef size_t nb = mvl.nbytes
    if nb % 33:
        raise ValueError(f"leaves length {nb} is not a multiple of 33")
    cdef const uint8_t[::1] lv = mvl if nb else b"\0"
    cdef size_t n = nb // 33
    cdef size_t total = beat_merkle_nodes(n)
    out = bytearray(total * 32)
    cdef uint8_t[::1] o = out
    with nogil:
        beat_merkle_levels(alg, &lv[0], n, &o[0])
    if n == 0:
        return [bytes(out)]
    levels = []
    cdef size_t off = 0
    cdef size_t w = n
    mv = memoryview(out)
    while True:
        levels.append(bytes(mv[off * 32:(off + w) * 32]))
        off += w
        if w == 1:
            break
        w = (w + 1) // 2
    return levels


include "ring.pxi"
include "capfile.pxi"
