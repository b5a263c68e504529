"""Capture files written by hand for the tests: pcap records and pcapng blocks byte by byte (so a
test can damage any field), and a few scapy packets. Shared by the capture-file, replay, daemon and
lab tests."""
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

__all__ = ["sample_packets", "write_pcap", "shb", "idb", "epb", "spb", "pb", "unknown", "_opt",
           "_block"]


def sample_packets(n=5):
    pkts = []
    for i in range(n):
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
            src="10.0.0.1", dst=f"10.0.1.{i}") / UDP(sport=1000 + i, dport=53) / (b"x" * i)
        p.time = 1_700_000_000 + i + 0.123456  # float: microseconds survive
        pkts.append(p)
    return pkts


def write_pcap(path, records, linktype=1, endian="<", nano=False, snaplen=65535):
    """records: [(sec, frac, data, orig_len)]."""
    magic = 0xa1b23c4d if nano else 0xa1b2c3d4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), orig) + data)
    path.write_bytes(b"".join(out))
    return path


def _opt(bo, code, value):
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(bo, btype, body):
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def shb(bo):
    return _block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(bo, linktype, snaplen=0, tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += _opt(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += _opt(bo, 0, b"")
    return _block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo, iface, ts, data, orig=None, flags=None):
    body = struct.pack(bo + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data),
                       len(data) if orig is None else orig) + data + b"\0" * (-len(data) % 4)
    if flags is not None:
        body += _opt(bo, 2, struct.pack(bo + "I", flags)) + _opt(bo, 0, b"")
    return _block(bo, 6, body)


def spb(bo, data):
    return _block(bo, 3, struct.pack(bo + "I", len(data)) + data)


def pb(bo, iface, ts, data):
    return _block(bo, 2, struct.pack(bo + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                     len(data)) + data)


def unknown(bo):
    return _block(bo, 0x0BAD, b"whatever")
