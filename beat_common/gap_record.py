"""Gap records (docs/gap-records.md): a device's immutable statement that its capture was blind
for a while, committed on the ledger as a type-3 leaf like receipts and segments.

A gap record is 41 bytes: ``from_ns(8) || to_ns(8) || frames_dropped(8) || reason(1) ||
interface(16, NUL padded)``, integers big-endian; its commitment is
``G = H("BEAT-GP-v1" || node_id(8) || gap record)`` and its ledger leaf ``0x03 || G``.
The device (beatd.store), the Interrogation codec (beat_rpc.evidence) and the governance take the
encoding from here.
"""
import struct

from .spec import LEAF_GAP

__all__ = ["GAP_KERNEL_DROPS", "GAP_CAPTURE_STOPPED", "GAP_REASONS", "IFNAME_SIZE",
           "GAP_RECORD_SIZE", "GAP_TAG", "pack_gap_record", "unpack_gap_record", "gap_value",
           "gap_leaf", "interface_bytes"]

GAP_KERNEL_DROPS, GAP_CAPTURE_STOPPED = 1, 2
GAP_REASONS = {GAP_KERNEL_DROPS: "kernel drops", GAP_CAPTURE_STOPPED: "capture stopped"}
IFNAME_SIZE = 16                # IFNAMSIZ: the interface, NUL padded ("" = every interface)
GAP_TAG = b"BEAT-GP-v1"
_RECORD = struct.Struct(">QQQB16s")
GAP_RECORD_SIZE = _RECORD.size  # 41
_U64_MAX = (1 << 64) - 1


def interface_bytes(name):
    """The 16-byte interface field of ``name`` (str or bytes): printable ASCII, NUL padded."""
    raw = name.encode("ascii", "replace") if isinstance(name, str) else bytes(name)
    raw = raw.rstrip(b"\x00")
    if len(raw) > IFNAME_SIZE or b"\x00" in raw or any(not 0x21 <= c <= 0x7e for c in raw):
        raise ValueError(f"gap record: interface {name!r} is not up to {IFNAME_SIZE} printable "
                         "ASCII characters")
    return raw.ljust(IFNAME_SIZE, b"\x00")


def pack_gap_record(from_ns, to_ns, frames_dropped, reason, interface):
    """The 41-byte gap record; ValueError naming the field and the value when it is not one."""
    for name, v in (("from_ns", from_ns), ("to_ns", to_ns), ("frames_dropped", frames_dropped)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64_MAX:
            raise ValueError(f"gap record: {name} {v!r} is not a u64")
    if reason not in GAP_REASONS:
        raise ValueError(f"gap record [{from_ns}, {to_ns}]: reason {reason!r} is not 1 (kernel "
                         "drops) or 2 (capture stopped)")
    if from_ns > to_ns:
        raise ValueError(f"gap record [{from_ns}, {to_ns}]: from_ns is after to_ns")
    return _RECORD.pack(from_ns, to_ns, frames_dropped, reason, interface_bytes(interface))


def unpack_gap_record(record):
    """``(from_ns, to_ns, frames_dropped, reason, interface)`` of a 41-byte record (interface a
    str without its padding); ValueError when it is not a well-formed record."""
    record = bytes(record)
    if len(record) != GAP_RECORD_SIZE:
        raise ValueError(f"gap record: {len(record)} bytes, not {GAP_RECORD_SIZE}")
    from_ns, to_ns, frames, reason, iface = _RECORD.unpack(record)
    if reason not in GAP_REASONS:
        raise ValueError(f"gap record [{from_ns}, {to_ns}]: reason {reason} is not 1 (kernel "
                         "drops) or 2 (capture stopped)")
    if from_ns > to_ns:
        raise ValueError(f"gap record [{from_ns}, {to_ns}]: from_ns is after to_ns")
    name = iface.rstrip(b"\x00")
    if b"\x00" in name or any(not 0x21 <= c <= 0x7e for c in name):
        raise ValueError(f"gap record [{from_ns}, {to_ns}]: interface {iface.hex()} is not "
                         "printable ASCII padded with NUL bytes")
    return from_ns, to_ns, frames, reason, name.decode("ascii")


def gap_value(hash_name, node_id, record):
    """``G = H("BEAT-GP-v1" || node_id(8) || gap record)`` (32 bytes)."""
    from fastpath.hashes import constructor
    record = bytes(record)
    if len(record) != GAP_RECORD_SIZE:
        raise ValueError(f"gap record: {len(record)} bytes, not {GAP_RECORD_SIZE}")
    return constructor(hash_name)(GAP_TAG + node_id.to_bytes(8, "big") + record).digest()


def gap_leaf(hash_name, node_id, record):
    """The ledger leaf ``0x03 || G`` of a gap record (33 bytes)."""
    return bytes((LEAF_GAP,)) + gap_value(hash_name, node_id, record)
