"""What a fast-path batch produced: the one result type both twins return from ``take()``.

The layout of every field is fixed in docs/fastpath.md; this module holds the names and the
constants both twins and the store share, so there is one definition of each.
"""

NONE = 0xFFFFFFFFFFFFFFFF
DESC_FORMAT = "<QIIIHBB"
DESC_SIZE = 24
RECORD_SIZE = 48
RECEIPT_SIZE = 89       # epoch_ns(8) role(1) src(16) dst(16) packets(8) bytes(8) R(32)
OPEN_RECEIPT_SIZE = 57  # the same without R
COUNTER_SIZE = 48       # prev_id(8) next_id(8) packets(8) bytes(8) first_t_ns(8) last_t_ns(8)
HASH_NAMES = ("sha3-256", "blake2b-256")
# Receipts of their own per role and receipt epoch; the flows beyond share the epoch's overflow
# receipt of the role, whose src and dst are OVERFLOW_ADDR (docs/fastpath.md, "Releasing").
DEFAULT_MAX_RECEIPTS_PER_EPOCH = 1024
MAX_RECEIPTS_PER_EPOCH_LIMIT = 1 << 24
OVERFLOW_ADDR = bytes(16)

STAT_NAMES = (
    "frames", "ip", "non_ip", "unsupported_linktype", "runt", "truncated", "bad_version",
    "bad_ihl", "bad_length", "vlan_depth", "ingress", "egress", "joined", "ingress_only",
    "egress_only", "unknown_mac", "join_overflow", "receipt_late", "records", "segments", "receipts",
    "receipt_overflow",
)

# The drop reasons, grouped into SPEC.md's three classes.
REASON_CLASS = {
    "non_ip": "non-IP", "unsupported_linktype": "non-IP",
    "runt": "truncated", "truncated": "truncated",
    "bad_version": "malformed", "bad_ihl": "malformed", "bad_length": "malformed",
    "vlan_depth": "malformed",
}


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
