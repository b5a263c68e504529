"""What a fast-path batch produced: the one result type both twins return from ``take()``.

The layout of every field is fixed in docs/fastpath.md; this module holds the names and the
constants both twins and the store share, so there is one definition of each.
"""

import struct

from beat_common.spec import NODE_ID_MAX, NONE, RECORD_SIZE  # noqa: F401 (defined there once)

DESC_FORMAT = "<QIIIHBB"
DESC_SIZE = 24
RECEIPT_SIZE = 89       # epoch_ns(8) role(1) src(16) dst(16) packets(8) bytes(8) R(32)
OPEN_RECEIPT_SIZE = 57  # the same without R
COUNTER_SIZE = 48       # prev_id(8) next_id(8) packets(8) bytes(8) first_t_ns(8) last_t_ns(8)
_DESC = struct.Struct(DESC_FORMAT)
HASH_NAMES = ("sha3-256", "blake2b-256")
# Receipts of their own per role and receipt epoch; the flows beyond share the epoch's overflow
# receipt of the role, whose src and dst are OVERFLOW_ADDR (docs/fastpath.md, "Releasing").
DEFAULT_MAX_RECEIPTS_PER_EPOCH = 1024
MAX_RECEIPTS_PER_EPOCH_LIMIT = 1 << 24
OVERFLOW_ADDR = bytes(16)

# The descriptor's flags byte: bits 0-1 the VLAN tags the capture stripped (0..3), bits 2-7 the
# slot of the interface the frame was captured on (1..63; 0 = unknown, e.g. a replayed pcap).
VLAN_MASK = 0x03
SLOT_SHIFT = 2
MAX_SLOT = 63
SLOTS_ANY = (1 << 64) - 1     # a neighbour matched on every interface
WRONG_IF_MAX = 16             # distinct (MAC, slot, dir) listed per take_wrong_interface()
UNKNOWN_MAC_MAX = 64          # distinct (MAC, slot, dir) listed per take_unknown_macs()

STAT_NAMES = (
    "frames", "ip", "non_ip", "unsupported_linktype", "runt", "truncated", "bad_version",
    "bad_ihl", "bad_length", "vlan_depth", "ingress", "egress", "joined", "ingress_only",
    "egress_only", "unknown_mac", "neighbour_wrong_interface", "join_overflow", "receipt_late",
    "records", "segments", "receipts", "receipt_overflow",
)

# The drop reasons, grouped into docs/formats.md's three classes.
REASON_CLASS = {
    "non_ip": "non-IP", "unsupported_linktype": "non-IP",
    "runt": "truncated", "truncated": "truncated",
    "bad_version": "malformed", "bad_ihl": "malformed", "bad_length": "malformed",
    "vlan_depth": "malformed",
}


def pack_desc(t_ns, offset, caplen, wirelen, linktype, dir=0, vlan_stripped=0, slot=0):
    """One 24-byte descriptor (docs/fastpath.md, "Frames in"); ``slot`` is the capture interface's
    slot (0: unknown), packed with ``vlan_stripped`` into the flags byte."""
    for name, v, hi in (("vlan_stripped", vlan_stripped, VLAN_MASK), ("slot", slot, MAX_SLOT)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise ValueError(f"{name} must be an integer in 0..{hi}, got {v!r}")
    return _DESC.pack(t_ns, offset, caplen, wirelen, linktype, dir,
                      vlan_stripped | slot << SLOT_SHIFT)


def neighbour_binding(mac, value):
    """One value of a pipeline's neighbour map (``{mac: value}``): ``node_id`` (the neighbour on
    every interface) or ``(node_id, slots)``, ``slots`` the interface slots (1..63) where that
    neighbour is (empty: on none of the captured interfaces). Returns ``(node_id, mask)``: bit s of
    ``mask`` set for each of its slots and bit 0 (an unknown interface matches anywhere), every bit
    for a neighbour on every interface. ``node_id`` is checked by the twin. ValueError names the
    MAC and the value."""
    if not isinstance(value, (tuple, list)):
        return value, SLOTS_ANY
    where = f"neighbours[{bytes(mac).hex(':')}]"
    if len(value) != 2:
        raise ValueError(f"{where} must be node_id or (node_id, slots), got {value!r}")
    node_id, slots = value
    if isinstance(slots, (str, bytes, bytearray, int)) or not hasattr(slots, "__iter__"):
        raise ValueError(f"{where}: slots must be an iterable of interface slots "
                         f"(1..{MAX_SLOT}), got {slots!r}")
    mask = 1
    for s in slots:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_SLOT:
            raise ValueError(f"{where}: interface slot must be an integer in 1..{MAX_SLOT}, "
                             f"got {s!r}")
        mask |= 1 << s
    return node_id, mask


class Output:
    """What happened since the previous ``take()``; see docs/fastpath.md, "Outputs"."""

    __slots__ = ("records", "segments", "receipts", "counters", "stats", "open_seg_seq",
                 "open_records", "open_receipts", "closed_before")

    def __init__(self, records, segments, receipts, counters, stats, open_seg_seq,
                 open_records, open_receipts, closed_before):
        self.records = records
        self.segments = segments
        self.receipts = receipts
        self.counters = counters
        self.stats = stats
        self.open_seg_seq = open_seg_seq
        self.open_records = open_records
        self.open_receipts = open_receipts
        self.closed_before = closed_before

    def as_tuple(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return isinstance(other, Output) and self.as_tuple() == other.as_tuple()

    def __repr__(self):
        return (f"Output(records={len(self.records) // RECORD_SIZE}, segments={len(self.segments)}, "
                f"receipts={len(self.receipts) // RECEIPT_SIZE}, "
                f"counters={len(self.counters) // COUNTER_SIZE}, open_seg_seq={self.open_seg_seq})")
