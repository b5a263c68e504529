"""The pure-Python twin of the fast path: the reference, and the fallback when the native module is
not built. It follows docs/fastpath.md literally; ``fastpath._native`` must give byte-identical
``Output`` for the same inputs.

Readings of docs/fastpath.md where the text leaves a choice (the native twin must do the same):
- A first-nibble link type (raw 101/12/14, or after an MPLS stack) with no byte left for the nibble
  is ``truncated`` (the IP check ``cap < 1``), not ``runt`` and not ``non_ip``.
- ``dir == 2`` on a link type without MACs (raw, null, loop, PPP, C-HDLC): egress with
  ``next_id = 0`` and no ``unknown_mac``; ``dir == 1`` on SLL/SLL2 uses the SLL address as usual.
- ``desc`` whose length is not a multiple of 24 is a ``ValueError`` (as the native twin does). A
  descriptor with ``dir > 2`` raises ``ValueError`` (like an out-of-range one, before any frame of
  the batch is processed). Every ``flags`` byte is valid (bits 0-1 VLAN tags stripped, 0..3;
  bits 2-7 the interface slot, 0..63).
- ``take().receipts`` is sorted over the whole take by the full 89-byte entry (= by the 41-byte
  key, ties, possible only after ``flush()`` re-opened a key, broken by the rest of the entry).
- ``flush()``, after finalising every open receipt, moves ``closed_before`` to the end of the
  clock's epoch, ``clock - clock % receipt_epoch_ns + receipt_epoch_ns``, if that is later (as the
  native twin does): a record of an already finalised epoch is then ``receipt_late`` instead of
  opening a second receipt with the same key.
- ``resume()`` refuses an ``open_records`` of ``segment_records`` records or more (such a segment
  would have been closed).
- ``resume()`` replaces the open segment, the open receipts, ``seg_seq`` and ``closed_before``;
  it does not touch the clock, the FIFO, counters or stats. Duplicate keys in ``open_receipts`` or
  a role other than 1/2 are a ``ValueError``. The count of receipts of their own per epoch and role
  (the receipt cap) is recounted from ``open_receipts``: every entry but the overflow ones.
- A flow whose src and dst are both 16 zero bytes (``::`` to ``::``, never a routable packet) has
  the overflow receipt's key: its packets count in the overflow receipt (and ``receipt_overflow``)
  and it takes no place under the cap.
- ``pd_ft`` returns ``(reason, None, None)`` for a frame without a digest, ``(None, pd, ft)``
  otherwise. ``fp_many``/``segment_value``/``receipt_value`` validate ``node_id`` like the
  Pipeline (1..2^64-2) and want whole 48-byte records.
"""
import struct
from collections import deque

from .hashes import constructor
from .output import NODE_ID_MAX
from .output import (COUNTER_SIZE, DEFAULT_MAX_RECEIPTS_PER_EPOCH, DESC_FORMAT, DESC_SIZE,
                     HASH_NAMES, MAX_RECEIPTS_PER_EPOCH_LIMIT, NONE, OPEN_RECEIPT_SIZE,
                     OVERFLOW_ADDR, REASON_CLASS, RECEIPT_SIZE, RECORD_SIZE, SLOT_SHIFT,
                     STAT_NAMES, UNKNOWN_MAC_MAX, VLAN_MASK, WRONG_IF_MAX, Output, neighbour_binding, pack_desc)

__all__ = ["Pipeline", "pd_ft", "fp_many", "segment_value", "receipt_value", "pack_desc", "NONE",
           "DESC_FORMAT", "DESC_SIZE", "RECORD_SIZE", "RECEIPT_SIZE", "OPEN_RECEIPT_SIZE",
           "COUNTER_SIZE", "HASH_NAMES", "STAT_NAMES", "REASON_CLASS", "Output"]

_T_NS = struct.Struct(">Q40x")
_DESC = struct.Struct(DESC_FORMAT)
_Q = struct.Struct(">Q")
_Q3 = struct.Struct(">QQQ")
_REC_HEAD = struct.Struct(">QQQ")
_CNT = struct.Struct(">QQQQQQ")
_RC_KEY = struct.Struct(">QB")
_QQ = struct.Struct(">QQ")
_OPEN_RC = struct.Struct(">QB32sQQ")

_MAX_ID = NODE_ID_MAX
_U64 = (1 << 64) - 1
_V4MAP = b"\x00" * 10 + b"\xff\xff"
_PD4 = b"BEAT-PD-v1\x04"
_PD6 = b"BEAT-PD-v1\x06"
_NULL_FAM = {2: 4, 10: 6, 24: 6, 28: 6, 30: 6}
_FT_CACHE_MAX = 1 << 20
_OVERFLOW_SD = OVERFLOW_ADDR + OVERFLOW_ADDR



# ----------------------------------------------------------------------------------------------
# validation

def _int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _node_id(name, value):
    _int(name, value)
    if not 1 <= value <= _MAX_ID:
        raise ValueError(f"{name} must be in 1..2^64-2, got {value}")
    return value


def _u64(name, value):
    _int(name, value)
    if not 0 <= value <= _U64:
        raise ValueError(f"{name} must be in 0..2^64-1, got {value}")
    return value


def _positive(name, value):
    _int(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value > _U64:
        raise ValueError(f"{name} must be < 2^64, got {value}")
    return value


def _bytes(name, value):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _mac(name, value):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name}: a MAC must be 6 bytes, got {value!r}")
    mac = bytes(value)
    if len(mac) != 6:
        raise ValueError(f"{name}: a MAC must be 6 bytes, got {len(mac)} bytes ({mac.hex()})")
    return mac


def _neighbours(neighbours):
    """``{mac: (node_id, slots mask)}`` of ``{mac: node_id}`` (every interface) or
    ``{mac: (node_id, slots)}`` (docs/fastpath.md "Neighbour ids")."""
    if neighbours is None:
        return {}
    try:
        items = list(neighbours.items())
    except AttributeError:
        raise ValueError(f"neighbours must be a mapping {{mac: node_id}}, "
                         f"got {type(neighbours).__name__}") from None
    out = {}
    for mac, value in items:
        mac = _mac("neighbours", mac)
        nid, mask = neighbour_binding(mac, value)
        _int(f"neighbours[{mac.hex()}]", nid)
        if not 1 <= nid <= _MAX_ID:
            raise ValueError(f"neighbours[{mac.hex()}] id must be in 1..2^64-2, got {nid}")
        out[mac] = (nid, mask)
    return out


def _records(name, records):
    records = _bytes(name, records)
    if len(records) % RECORD_SIZE:
        raise ValueError(f"{name} must be a whole number of {RECORD_SIZE}-byte records, "
                         f"got {len(records)} bytes")
    return records


# ----------------------------------------------------------------------------------------------
# module functions

def t_range(records):
    """(min t_ns, max t_ns) of 48-byte records, (0, 0) when there are none."""
    records = _records("records", records)
    ts = [t for (t,) in _T_NS.iter_unpack(records)]
    return (min(ts), max(ts)) if ts else (0, 0)


def fp_many(records, node_id, hash_name="sha3-256"):
    """FP = H("BEAT-FP-v1" || node_id || prev_id || next_id || PD || t_ns), 32 bytes per record."""
    H = constructor(hash_name)
    _node_id("node_id", node_id)
    records = _records("records", records)
    node = b"BEAT-FP-v1" + _Q.pack(node_id)
    out = []
    for i in range(0, len(records), RECORD_SIZE):
        r = records[i:i + RECORD_SIZE]
        out.append(H(node + r[8:40] + r[0:8]).digest())
    return b"".join(out)


def proofs_value(count, value, records):
    """The proof ring's value of a segment, ``count(8) S(32) records`` (docs/store.md)."""
    return b"".join((_Q.pack(count), value, records))


def segment_value(hash_name, node_id, seg_seq, records):
    """S = H("BEAT-SG-v1" || node_id || seg_seq || count || records)."""
    H = constructor(hash_name)
    _node_id("node_id", node_id)
    _u64("seg_seq", seg_seq)
    records = _records("records", records)
    return H(b"BEAT-SG-v1" + _Q3.pack(node_id, seg_seq, len(records) // RECORD_SIZE)
             + records).digest()


def merkle_levels(hash_name, leaves):
    """The levels of the RFC 9162 tree over ``leaves`` (n x 33 bytes of SPEC leaf data): level 0
    the n leaf hashes H(0x00||leaf), level k+1 H(0x01||left||right) over adjacent pairs of level k
    (an odd last node carried up), up to the root; ``[H()]`` for n = 0. A list of bytes, 32 bytes
    per node."""
    H = constructor(hash_name)
    leaves = bytes(memoryview(leaves).cast("B"))
    if len(leaves) % 33:
        raise ValueError(f"leaves length {len(leaves)} is not a multiple of 33")
    if not leaves:
        return [H(b"").digest()]
    level = [H(b"\x00" + leaves[i:i + 33]).digest() for i in range(0, len(leaves), 33)]
    levels = [b"".join(level)]
    while len(level) > 1:
        up = [H(b"\x01" + level[j] + level[j + 1]).digest() for j in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            up.append(level[-1])
        levels.append(b"".join(up))
        level = up
    return levels


def receipt_value(hash_name, node_id, role, src, dst, epoch_ns, packets, nbytes):
    """R = H("BEAT-RC-v1" || node_id || role || src || dst || epoch_ns || packets || bytes)."""
    H = constructor(hash_name)
    _node_id("node_id", node_id)
    if role not in (1, 2) or isinstance(role, bool):
        raise ValueError(f"role must be 1 or 2, got {role!r}")
    src = _bytes("src", src)
    dst = _bytes("dst", dst)
    if len(src) != 16:
        raise ValueError(f"src must be 16 bytes, got {len(src)}")
    if len(dst) != 16:
        raise ValueError(f"dst must be 16 bytes, got {len(dst)}")
    _u64("epoch_ns", epoch_ns)
    _u64("packets", packets)
    _u64("nbytes", nbytes)
    return _receipt(H, _Q.pack(node_id), role, src + dst, epoch_ns, packets, nbytes)


def _receipt(H, node8, role, sd, epoch_ns, packets, nbytes):
    return H(b"BEAT-RC-v1" + node8 + bytes((role,)) + sd
             + _Q3.pack(epoch_ns, packets, nbytes)).digest()


# ----------------------------------------------------------------------------------------------
# parsing

def _walk(buf, et, p, end, vl=0):
    """The ethertype walk from ethertype `et`, payload at `p`: (family, p) or a reason. `vl` VLAN
    tags were already stripped by the capture (live rings) and count toward the limit of two."""
    tags = vl
    if tags > 2:
        return "vlan_depth"
    while et == 0x8100 or et == 0x88A8 or et == 0x9100:
        if tags == 2:
            return "vlan_depth"
        if p + 4 > end:
            return "runt"
        et = buf[p + 2] << 8 | buf[p + 3]
        p += 4
        tags += 1
    if et == 0x0800:
        return 4, p
    if et == 0x86DD:
        return 6, p
    if et == 0x8847 or et == 0x8848:
        while True:
            if p + 4 > end:
                return "runt"
            bos = buf[p + 2] & 1
            p += 4
            if bos:
                break
        return _nibble(buf, p, end)
    return "non_ip"


def _nibble(buf, p, end):
    if p >= end:
        return "truncated"      # no byte for the nibble: the IP check `cap < 1`
    v = buf[p] >> 4
    if v == 4:
        return 4, p
    if v == 6:
        return 6, p
    return "non_ip"


def _frame(buf, off, end, lt, H, vl=0):
    """Parse one frame buf[off:end] of link type `lt`.

    Returns a reason string, or (pd, fam, addr_key, ip_len, mackind, src_mac, dst_mac, ll_egress)
    where addr_key is src(4)+dst(4) for IPv4, src(16)+dst(16) for IPv6, mackind 0 = no MACs,
    1 = Ethernet, 2 = SLL/SLL2 (src_mac None when absent).
    """
    mackind = 0
    smac = dmac = None
    egress = False
    if lt == 1:
        if end - off < 14:
            return "runt"
        mackind = 1
        dmac = buf[off:off + 6]
        smac = buf[off + 6:off + 12]
        et = buf[off + 12] << 8 | buf[off + 13]
        if et == 0x0800 and not vl:   # the common case, without the walk
            fam = 4
            p = off + 14
        else:
            r = _walk(buf, et, off + 14, end, vl)
            if type(r) is str:
                return r
            fam, p = r
    elif lt == 113:
        if end - off < 16:
            return "runt"
        mackind = 2
        egress = (buf[off] << 8 | buf[off + 1]) == 4
        if (buf[off + 2] << 8 | buf[off + 3]) == 1 and (buf[off + 4] << 8 | buf[off + 5]) == 6:
            smac = buf[off + 6:off + 12]
        r = _walk(buf, buf[off + 14] << 8 | buf[off + 15], off + 16, end, vl)
        if type(r) is str:
            return r
        fam, p = r
    elif lt == 276:
        if end - off < 20:
            return "runt"
        mackind = 2
        egress = buf[off + 10] == 4
        if (buf[off + 8] << 8 | buf[off + 9]) == 1 and buf[off + 11] == 6:
            smac = buf[off + 12:off + 18]
        r = _walk(buf, buf[off] << 8 | buf[off + 1], off + 20, end, vl)
        if type(r) is str:
            return r
        fam, p = r
    elif lt == 101 or lt == 12 or lt == 14:
        r = _nibble(buf, off, end)
        if type(r) is str:
            return r
        fam, p = r
    elif lt == 228:
        fam, p = 4, off
    elif lt == 229:
        fam, p = 6, off
    elif lt == 0 or lt == 108:
        if end - off < 4:
            return "runt"
        raw = buf[off:off + 4]
        if lt == 0:
            fam = _NULL_FAM.get(int.from_bytes(raw, "little"))
            if fam is None:
                fam = _NULL_FAM.get(int.from_bytes(raw, "big"))
        else:
            fam = _NULL_FAM.get(int.from_bytes(raw, "big"))
        if fam is None:
            return "non_ip"
        p = off + 4
    elif lt == 104:
        if end - off < 4:
            return "runt"
        r = _walk(buf, buf[off + 2] << 8 | buf[off + 3], off + 4, end, vl)
        if type(r) is str:
            return r
        fam, p = r
    elif lt == 9 or lt == 50:
        p = off
        if end - off >= 2 and buf[off] == 0xFF and buf[off + 1] == 0x03:
            p += 2
        if end - p < 2:
            return "runt"
        proto = buf[p] << 8 | buf[p + 1]
        p += 2
        if proto == 0x0021:
            fam = 4
        elif proto == 0x0057:
            fam = 6
        else:
            return "non_ip"
    else:
        return "unsupported_linktype"

    cap = end - p
    if cap < 1:
        return "truncated"
    if fam == 4:
        b0 = buf[p]
        if b0 >> 4 != 4:
            return "bad_version"
        if cap < 20:
            return "truncated"
        hl = (b0 & 15) * 4
        if hl < 20:
            return "bad_ihl"
        tl = buf[p + 2] << 8 | buf[p + 3]
        if tl < hl:
            return "bad_length"
        if cap < hl:
            return "truncated"
        m = tl - hl
        if m > 24:
            m = 24
        if cap < hl + m:
            return "truncated"
        addr = buf[p + 12:p + 20]
        pd = H(_PD4 + buf[p:p + 1] + buf[p + 2:p + 8] + buf[p + 9:p + 10] + addr
               + buf[p + hl:p + hl + m]).digest()[:16]
        return pd, 4, addr, tl, mackind, smac, dmac, egress
    if buf[p] >> 4 != 6:
        return "bad_version"
    if cap < 40:
        return "truncated"
    L = buf[p + 4] << 8 | buf[p + 5]
    m = 24 if L > 24 else L
    if cap < 40 + m:
        return "truncated"
    addr = buf[p + 8:p + 40]
    pd = H(_PD6 + buf[p + 4:p + 7] + bytes((buf[p + 1] & 15,)) + buf[p + 2:p + 4] + addr
           + buf[p + 40:p + 40 + m]).digest()[:16]
    return pd, 6, addr, 40 + L, mackind, smac, dmac, egress


def _ft(H, fam, addr):
    """(FT, src16+dst16) for the address key of _frame."""
    sd = _V4MAP + addr[:4] + _V4MAP + addr[4:] if fam == 4 else addr
    return H(b"BEAT-FT-v1" + sd).digest()[:8], sd


def pd_ft(frame, linktype, hash_name="sha3-256"):
    """(reason, None, None) for a frame without a digest, else (None, PD, FT)."""
    H = constructor(hash_name)
    frame = _bytes("frame", frame)
    _int("linktype", linktype)
    r = _frame(frame, 0, len(frame), linktype, H)
    if type(r) is str:
        return r, None, None
    ft, _ = _ft(H, r[1], r[2])
    return None, r[0], ft


# ----------------------------------------------------------------------------------------------
# the pipeline

# A FIFO entry: [t_ns, prev_id, next_id, PD, FT, src16+dst16, ip_len, done]
_T, _NEXT, _DONE = 0, 2, 7


class Pipeline:
    """Frames in; records, counters, receipts and segments out (docs/fastpath.md)."""

    def __init__(self, node_id, hash_name="sha3-256", own_macs=(), neighbours=None,
                 join_window_ns=50_000_000, receipt_epoch_ns=1_000_000_000,
                 segment_records=1024, anchor_period_ns=10_000_000_000, max_pending=1 << 16,
                 max_receipts_per_epoch=DEFAULT_MAX_RECEIPTS_PER_EPOCH, records_out=True,
                 segment_views=False):
        self._node_id = _node_id("node_id", node_id)
        for name, flag in (("records_out", records_out), ("segment_views", segment_views)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        # segment_views: the native twin's take() may then hand out views; bytes are buffers too
        self._records_out = records_out
        self._hash_name = hash_name
        self._H = constructor(hash_name)
        if own_macs is None:
            own_macs = ()
        if isinstance(own_macs, (bytes, bytearray, memoryview)):
            raise ValueError(f"own_macs must be an iterable of 6-byte MACs, got {own_macs!r}")
        self._own = frozenset(_mac("own_macs", m) for m in own_macs)
        self._nb = _neighbours(neighbours)
        self._window = _positive("join_window_ns", join_window_ns)
        self._epoch = _positive("receipt_epoch_ns", receipt_epoch_ns)
        _int("segment_records", segment_records)
        if not 1 <= segment_records <= 1_000_000:
            raise ValueError(f"segment_records must be in 1..1000000, got {segment_records}")
        self._seg_max = segment_records
        self._anchor = _positive("anchor_period_ns", anchor_period_ns)
        _int("max_pending", max_pending)
        if not (1 << 4 <= max_pending <= 1 << 24 and max_pending & (max_pending - 1) == 0):
            raise ValueError(f"max_pending must be a power of two in 2^4..2^24, got {max_pending}")
        self._max_pending = max_pending
        _int("max_receipts_per_epoch", max_receipts_per_epoch)
        if not 1 <= max_receipts_per_epoch <= MAX_RECEIPTS_PER_EPOCH_LIMIT:
            raise ValueError(f"max_receipts_per_epoch must be an integer in "
                             f"1..{MAX_RECEIPTS_PER_EPOCH_LIMIT}, got {max_receipts_per_epoch}")
        self._rc_max = max_receipts_per_epoch

        self._node8 = _Q.pack(node_id)
        self._clock = 0
        self._fifo = deque()
        self._pend = {}                 # PD -> unjoined ingress entry, or a deque of them
        self._ftc = {}                  # address key -> (FT, src16+dst16)
        # open state
        self._seg_seq = 0
        self._seg = []                  # 48-byte records of the open segment
        self._seg_first = 0             # t_ns of its first record
        self._rc = {}                   # epoch_ns -> {(role, sd): [packets, bytes]}
        self._rcn = {}                  # epoch_ns -> [0, own receipts role 1, own receipts role 2]
        self._closed_before = 0
        # outputs since the last take()
        self._o_records = []
        self._o_segments = []
        self._o_receipts = []
        self._o_counters = {}           # (prev, next) -> [packets, bytes, first, last]
        self._st = dict.fromkeys(STAT_NAMES, 0)     # totals since creation
        self._st_taken = dict.fromkeys(STAT_NAMES, 0)
        self._wrong = {}                # (mac, slot, dir) -> [node_id, frames], first-seen order
        self._unknown = {}              # (mac, slot, dir) -> frames, first-seen order
        self._unknown_unlisted = 0      # frames of (mac, slot, dir) beyond UNKNOWN_MAC_MAX

    # -- configuration ---------------------------------------------------------------------------

    def set_neighbours(self, neighbours):
        self._nb = _neighbours(neighbours)

    def resume(self, next_seg_seq, open_records=b"", open_receipts=b"", closed_before=0):
        self._apply_resume(*self._check_resume(next_seg_seq, open_records, open_receipts,
                                               closed_before))

    def rewind(self, next_seg_seq, open_records=b"", open_receipts=b"", closed_before=0):
        """``take()`` then ``resume(...)`` in one step: what ``take()`` would have returned, and
        the pipeline goes on from the state given (the daemon drops a batch that a full store
        could not hold). Nothing is taken when the state is refused (``ValueError``)."""
        state = self._check_resume(next_seg_seq, open_records, open_receipts, closed_before)
        out = self.take()
        self._apply_resume(*state)
        return out

    def _check_resume(self, next_seg_seq, open_records, open_receipts, closed_before):
        _u64("next_seg_seq", next_seg_seq)
        recs = _records("open_records", open_records)
        orc = _bytes("open_receipts", open_receipts)
        if len(orc) % OPEN_RECEIPT_SIZE:
            raise ValueError(f"open_receipts must be a whole number of {OPEN_RECEIPT_SIZE}-byte "
                             f"entries, got {len(orc)} bytes")
        _u64("closed_before", closed_before)
        if len(recs) // RECORD_SIZE >= self._seg_max:
            raise ValueError(f"open_records must hold fewer than segment_records={self._seg_max} "
                             f"records, got {len(recs) // RECORD_SIZE}")
        rc = {}
        rcn = {}
        for i in range(0, len(orc), OPEN_RECEIPT_SIZE):
            ep, role, sd, pk, by = _OPEN_RC.unpack_from(orc, i)
            if role not in (1, 2):
                raise ValueError(f"open_receipts entry {i // OPEN_RECEIPT_SIZE}: role must be "
                                 f"1 or 2, got {role}")
            d = rc.setdefault(ep, {})
            if (role, sd) in d:
                raise ValueError(f"open_receipts entry {i // OPEN_RECEIPT_SIZE}: duplicate key "
                                 f"(epoch_ns {ep}, role {role})")
            d[(role, sd)] = [pk, by]
            if sd != _OVERFLOW_SD:
                rcn.setdefault(ep, [0, 0, 0])[role] += 1
        return next_seg_seq, recs, rc, rcn, closed_before

    def _apply_resume(self, next_seg_seq, recs, rc, rcn, closed_before):
        self._seg_seq = next_seg_seq
        self._seg = [recs[i:i + RECORD_SIZE] for i in range(0, len(recs), RECORD_SIZE)]
        self._seg_first = _Q.unpack_from(recs, 0)[0] if recs else 0
        self._rc = rc
        self._rcn = rcn
        self._closed_before = closed_before

    # -- internals -------------------------------------------------------------------------------

    def _close_seg(self):
        seg = self._seg
        recs = b"".join(seg)
        n = len(seg)
        S = self._H(b"BEAT-SG-v1" + _Q3.pack(self._node_id, self._seg_seq, n) + recs).digest()
        self._o_segments.append((self._seg_seq, n, S, recs))
        self._st["segments"] += 1
        self._seg_seq += 1
        self._seg = []

    def _pop_head(self):
        """Remove the FIFO head and release it."""
        e = self._fifo.popleft()
        t, prev, nxt, pd, ft, sd, iplen, done = e
        if not done:                    # an unjoined ingress: the first of its PD's pending ones
            q = self._pend[pd]
            if q is e:
                del self._pend[pd]
            else:
                if q[0] is e:
                    q.popleft()
                else:                   # cannot happen (FIFO order), kept for safety
                    q.remove(e)
                if not q:
                    del self._pend[pd]
        rec = _REC_HEAD.pack(t, prev, nxt) + pd + ft
        if self._records_out:
            self._o_records.append(rec)
        st = self._st
        st["records"] += 1
        if nxt == NONE:
            st["ingress_only"] += 1
        if prev == NONE:
            st["egress_only"] += 1
        # counters
        k = (prev, nxt)
        c = self._o_counters.get(k)
        if c is None:
            self._o_counters[k] = [1, iplen, t, t]
        else:
            c[0] += 1
            c[1] += iplen
            if t < c[2]:
                c[2] = t
            if t > c[3]:
                c[3] = t
        # receipts
        if prev == 0 or nxt == 0:
            ep = t - t % self._epoch
            if ep < self._closed_before:
                st["receipt_late"] += (prev == 0) + (nxt == 0)
            else:
                d = self._rc.get(ep)
                if d is None:
                    d = self._rc[ep] = {}
                if prev == 0:
                    r = d.get((1, sd)) if sd != _OVERFLOW_SD else None
                    if r is None:
                        r = self._rc_new(d, ep, 1, sd)
                    r[0] += 1
                    r[1] += iplen
                if nxt == 0:
                    r = d.get((2, sd)) if sd != _OVERFLOW_SD else None
                    if r is None:
                        r = self._rc_new(d, ep, 2, sd)
                    r[0] += 1
                    r[1] += iplen
        # segment
        seg = self._seg
        if seg and t // self._anchor != self._seg_first // self._anchor:
            self._close_seg()
            seg = self._seg
        if not seg:
            self._seg_first = t
        seg.append(rec)
        if len(seg) == self._seg_max:
            self._close_seg()

    def _wrong_interface(self, mac, slot, d, nid):
        """A neighbour's MAC on an interface where that neighbour is not (kept for the log)."""
        w = self._wrong.get((mac, slot, d))
        if w is not None:
            w[1] += 1
        elif len(self._wrong) < WRONG_IF_MAX:
            self._wrong[(mac, slot, d)] = [nid, 1]

    def _unknown_mac(self, mac, slot, d):
        """A MAC that is no neighbour's (kept for the log and the status)."""
        k = (mac, slot, d)
        if k in self._unknown:
            self._unknown[k] += 1
        elif len(self._unknown) < UNKNOWN_MAC_MAX:
            self._unknown[k] = 1
        else:
            self._unknown_unlisted += 1

    def _rc_new(self, d, ep, role, sd):
        """The receipt a packet counts in when its flow has none of its own in this epoch and
        role: a new one while the epoch has fewer than max_receipts_per_epoch of the role, else
        the epoch's overflow receipt of the role (src = dst = 16 zero bytes)."""
        n = self._rcn.get(ep)
        if n is None:
            n = self._rcn[ep] = [0, 0, 0]
        if sd != _OVERFLOW_SD and n[role] < self._rc_max:
            n[role] += 1
            r = d[(role, sd)] = [0, 0]
            return r
        self._st["receipt_overflow"] += 1
        key = (role, _OVERFLOW_SD)
        r = d.get(key)
        if r is None:
            r = d[key] = [0, 0]
        return r

    def _release_ready(self):
        fifo = self._fifo
        limit = self._clock - self._window     # head.t_ns + window < clock
        while fifo:
            h = fifo[0]
            if h[_DONE] or h[_T] < limit:
                self._pop_head()
            else:
                break

    def _finalise(self, ep):
        H = self._H
        node8 = self._node8
        out = self._o_receipts
        n = 0
        self._rcn.pop(ep, None)
        for (role, sd), (pk, by) in self._rc.pop(ep).items():
            R = _receipt(H, node8, role, sd, ep, pk, by)
            out.append(_RC_KEY.pack(ep, role) + sd + _QQ.pack(pk, by) + R)
            n += 1
        self._st["receipts"] += n

    def _close_epochs(self):
        target = self._clock - self._window
        if target < 0:
            target = 0
        target -= target % self._epoch
        if target > self._closed_before:
            for ep in sorted(ep for ep in self._rc if ep < target):
                self._finalise(ep)
            self._closed_before = target

    # -- the API ---------------------------------------------------------------------------------

    def feed(self, buf, desc):
        if not isinstance(buf, bytes):
            buf = bytes(buf)
        desc = bytes(desc) if not isinstance(desc, bytes) else desc
        if len(desc) % DESC_SIZE:
            raise ValueError(f"desc length {len(desc)} is not a multiple of {DESC_SIZE}")
        n = len(desc) // DESC_SIZE
        descs = list(_DESC.iter_unpack(desc[:n * DESC_SIZE]))
        blen = len(buf)
        for i, (t, off, cap, _wl, _lt, dr, fl) in enumerate(descs):
            if off + cap > blen:
                raise ValueError(f"descriptor {i}: offset {off} + caplen {cap} = {off + cap} "
                                 f"exceeds len(buf) {blen}")
            if dr > 2:
                raise ValueError(f"descriptor {i}: dir must be 0, 1 or 2, got {dr}")

        H = self._H
        st = self._st
        fifo = self._fifo
        pend = self._pend
        ftc = self._ftc
        own = self._own
        nb = self._nb
        W = self._window
        E = self._epoch
        maxp = self._max_pending
        release_ready = self._release_ready
        pop_head = self._pop_head
        frame = _frame
        clock = self._clock
        n_frames = n_ip = n_in = n_eg = n_join = n_unk = n_ovf = n_wif = 0
        try:
            for t, off, cap, _wl, lt, dr, fl in descs:
                if t > clock:
                    clock = self._clock = t
                n_frames += 1
                r = frame(buf, off, off + cap, lt, H, fl & VLAN_MASK)
                if type(r) is str:
                    st[r] += 1
                else:
                    n_ip += 1
                    pd, fam, addr, iplen, mackind, smac, dmac, llegress = r
                    c = ftc.get(addr)
                    if c is None:
                        if len(ftc) >= _FT_CACHE_MAX:
                            ftc.clear()
                        c = ftc[addr] = _ft(H, fam, addr)
                    # direction
                    if dr == 0:
                        if mackind == 1:
                            egress = smac in own
                        else:
                            egress = llegress
                    else:
                        egress = dr == 2
                    # step 2 (release_ready, called only when the head is ready)
                    if fifo:
                        h = fifo[0]
                        if h[7] or h[0] + W < clock:
                            release_ready()
                    if not egress:
                        n_in += 1
                        if len(fifo) >= maxp:       # step 3: overflow
                            pop_head()
                            n_ovf += 1
                        prev = 0
                        if mackind != 0:
                            v = nb.get(smac) if smac is not None else None
                            if v is None:
                                n_unk += 1
                                if smac is not None:
                                    self._unknown_mac(smac, fl >> SLOT_SHIFT, 1)
                            elif v[1] >> (fl >> SLOT_SHIFT) & 1:
                                prev = v[0]
                            else:       # a neighbour's MAC where it is not: not from it
                                n_wif += 1
                                self._wrong_interface(smac, fl >> SLOT_SHIFT, 1, v[0])
                        e = [t, prev, NONE, pd, c[0], c[1], iplen, False]
                        fifo.append(e)
                        # pend[pd]: the entry itself, or a deque when there are several
                        q = pend.get(pd)
                        if q is None:
                            pend[pd] = e
                        elif type(q) is deque:
                            q.append(e)
                        else:
                            pend[pd] = deque((q, e))
                    else:
                        n_eg += 1
                        if mackind == 1:
                            nxt = 0
                            v = nb.get(dmac)
                            if v is None:
                                n_unk += 1
                                self._unknown_mac(dmac, fl >> SLOT_SHIFT, 2)
                            elif v[1] >> (fl >> SLOT_SHIFT) & 1:
                                nxt = v[0]
                            else:       # a neighbour's MAC where it is not: not to it
                                n_wif += 1
                                self._wrong_interface(dmac, fl >> SLOT_SHIFT, 2, v[0])
                        else:
                            nxt = 0
                            if mackind == 2:
                                n_unk += 1
                        q = pend.get(pd)
                        hit = None
                        if q is None:
                            pass
                        elif type(q) is deque:
                            # the earliest in the FIFO within the window
                            for j, e in enumerate(q):
                                if e[_T] + W >= t:
                                    hit = e
                                    if j == 0:
                                        q.popleft()
                                    else:
                                        del q[j]
                                    if not q:
                                        del pend[pd]
                                    break
                        elif q[_T] + W >= t:
                            hit = q
                            del pend[pd]
                        if hit is not None:
                            hit[_NEXT] = nxt
                            hit[_DONE] = True
                            n_join += 1
                        else:
                            # the overflow rule of step 3, for the egress-only entry
                            if len(fifo) >= maxp:
                                pop_head()
                                n_ovf += 1
                            fifo.append([t, NONE, nxt, pd, c[0], c[1], iplen, True])
                # step 5
                if fifo:
                    h = fifo[0]
                    if h[7] or h[0] + W < clock:
                        release_ready()
                target = clock - W
                if target > self._closed_before:
                    target -= target % E
                    if target > self._closed_before:
                        self._close_epochs()
        finally:
            st["frames"] += n_frames
            st["ip"] += n_ip
            st["ingress"] += n_in
            st["egress"] += n_eg
            st["joined"] += n_join
            st["unknown_mac"] += n_unk
            st["neighbour_wrong_interface"] += n_wif
            st["join_overflow"] += n_ovf

    def flush(self):
        fifo = self._fifo
        while fifo:
            self._pop_head()
        if self._seg:
            self._close_seg()
        for ep in sorted(self._rc):
            self._finalise(ep)
        end = self._clock - self._clock % self._epoch + self._epoch
        if end > self._closed_before:
            self._closed_before = end

    def close_segment(self):
        if self._seg:
            self._close_seg()

    def advance(self, now_ns):
        """The clock moves to now_ns (if later) without a frame: a quiet link still releases the
        observations whose join window has passed and closes receipt epochs."""
        _u64("now_ns", now_ns)
        if now_ns > self._clock:
            self._clock = now_ns
        self._release_ready()
        self._close_epochs()

    def take(self):
        records = b"".join(self._o_records)
        self._o_records = []
        segments = self._o_segments
        self._o_segments = []
        receipts = b"".join(sorted(self._o_receipts))
        self._o_receipts = []
        cnt = self._o_counters
        self._o_counters = {}
        counters = b"".join(_CNT.pack(k[0], k[1], *cnt[k]) for k in sorted(cnt))
        st = self._st
        last = self._st_taken
        stats = {name: st[name] - last[name] for name in STAT_NAMES}
        self._st_taken = dict(st)
        open_rc = []
        for ep, d in self._rc.items():
            for (role, sd), (pk, by) in d.items():
                open_rc.append(_OPEN_RC.pack(ep, role, sd, pk, by))
        open_rc.sort()
        return Output(records, segments, receipts, counters, stats, self._seg_seq,
                      b"".join(self._seg), b"".join(open_rc), self._closed_before)

    def take_wrong_interface(self):
        """The frames since the previous call whose neighbour MAC was on an interface where that
        neighbour is not: ``[(mac, slot, dir, node_id, frames)]`` by (MAC, slot, dir) in first-seen
        order, at most WRONG_IF_MAX (later ones are only counted in the stats)."""
        out = [(mac, slot, d, nid, n) for (mac, slot, d), (nid, n) in self._wrong.items()]
        self._wrong = {}
        return out

    def take_unknown_macs(self):
        """The frames since the previous call whose neighbour MAC is no neighbour's (recorded as
        from or to outside): ``([(mac, slot, dir, frames)], unlisted)``, by (MAC, slot, dir) in
        first-seen order, at most UNKNOWN_MAC_MAX; ``unlisted`` the frames of later ones."""
        out = [(mac, slot, d, n) for (mac, slot, d), n in self._unknown.items()]
        unlisted = self._unknown_unlisted
        self._unknown, self._unknown_unlisted = {}, 0
        return out, unlisted

    def totals(self):
        return {name: self._st[name] for name in STAT_NAMES}
