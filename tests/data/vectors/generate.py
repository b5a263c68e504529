"""Writes beat-v1.json, the golden vectors of the BEAT record formats v1, from
tests/fastpath/spec_ref.py.

The values come from the reference written from the SPEC text, never from the product's code.
The file is committed; tests/fastpath/test_golden_vectors.py checks that the reference still
computes every value in it and that both fast-path twins and the ledger client's Merkle code agree
with it.
Regenerate only when the SPEC changes (then the format version changes too):

    .venv/bin/python tests/data/vectors/generate.py
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "fastpath"))  # spec_ref

import spec_ref  # noqa: E402

HASHES = spec_ref.HASHES
NONE = spec_ref.NONE
V4_SRC, V4_DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8ffff00000000000000000002")


def payload(n, seed):
    return bytes((i * 7 + seed * 13 + 1) % 256 for i in range(n))


def csum(hdr):
    s = sum(struct.unpack(f">{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(proto, body, ident=0x1234, ttl=64, tos=0, flags_frag=0x4000, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(body), ident, flags_frag, ttl,
                      proto, 0, V4_SRC, V4_DST) + options
    hdr = hdr[:10] + struct.pack(">H", csum(hdr)) + hdr[12:]
    return hdr + body


def ipv6(nh, body, tc=0, flow=0, hlim=64):
    first = 6 << 28 | tc << 20 | flow
    return struct.pack(">IHBB", first, len(body), nh, hlim) + V6_SRC + V6_DST + body


def udp(n, seed):
    data = payload(n, seed)
    return struct.pack(">HHHH", 53, 5353, 8 + len(data), 0) + data


def tcp(n, seed):
    return struct.pack(">HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload(n, seed)


def packets():
    """(name, ip bytes): lengths around P's 24 bytes, both families, options and extension headers."""
    out = []
    for n in (0, 1, 16, 17, 40):
        out.append((f"v4_udp_{n}", ipv4(17, udp(n, 1))))
        out.append((f"v6_udp_{n}", ipv6(17, udp(n, 2), tc=0x5A, flow=0xABCDE)))
    out.append(("v4_tcp_100", ipv4(6, tcp(100, 3))))
    out.append(("v4_empty_payload", ipv4(253, b"")))
    out.append(("v4_options", ipv4(17, udp(30, 4), options=b"\x01\x01\x01\x00")))
    out.append(("v4_fragment", ipv4(17, udp(30, 5), flags_frag=0x2000 | 185)))
    out.append(("v4_ttl1_tos", ipv4(17, udp(30, 4), ttl=1, tos=0xB8)))
    hop_by_hop = struct.pack(">BB", 17, 0) + b"\x01\x04\x00\x00\x00\x00"
    out.append(("v6_hop_by_hop", ipv6(0, hop_by_hop + udp(30, 6))))
    out.append(("v6_no_next", ipv6(59, b"")))
    return out


def frames(ip):
    """The same packet under the link layers every device must read."""
    fam = ip[0] >> 4
    links = [("ethernet", spec_ref.link_ether(ip)),
             ("ethernet_qinq", spec_ref.link_ether(ip, tags=[0x88A8, 0x8100])),
             ("ethernet_mpls2", spec_ref.link_ether(ip, mpls=2)),
             ("sll", spec_ref.link_sll(ip)),
             ("sll2", spec_ref.link_sll2(ip)),
             ("raw", spec_ref.link_raw(ip))]
    links.append(("null", spec_ref.link_null(ip, 2 if fam == 4 else 10)))
    return [{"link": name, "linktype": lt, "frame": frame.hex()} for name, (frame, lt) in links]


def digests():
    rows = []
    for name, ip in packets():
        row = {"name": name, "ip": ip.hex(), "frames": frames(ip)}
        for h in HASHES:
            pd, ft = spec_ref.pd_ft(ip, h)
            row[h] = {"pd": pd.hex(), "ft": ft.hex()}
        rows.append(row)
    return rows


RECORD_CASES = [  # (node_id, t_ns, prev_id, next_id, packet index)
    (1, 1_700_000_000_123_456_789, 0, 2, 0),
    (2, 1_700_000_000_123_556_789, 1, 3, 1),
    (3, 1_700_000_000_123_656_789, 2, 0, 2),
    (7, 1, NONE, 0, 3),
    (0xFFFFFFFFFFFFFFFE, (1 << 64) - 1, 0, NONE, 4),
]


def records():
    pk = packets()
    rows = []
    for node_id, t_ns, prev_id, next_id, i in RECORD_CASES:
        row = {"node_id": node_id, "t_ns": t_ns, "prev_id": prev_id, "next_id": next_id,
               "packet": pk[i][0]}
        for h in HASHES:
            rec = spec_ref.record(t_ns, prev_id, next_id, pk[i][1], h)
            row[h] = {"record": rec.hex(), "fp": spec_ref.fp(node_id, rec, h).hex()}
        rows.append(row)
    return rows


RECEIPT_CASES = [  # (node_id, role, src, dst, epoch_ns, packets, bytes)
    (1, 1, b"\0" * 10 + b"\xff\xff" + V4_SRC, b"\0" * 10 + b"\xff\xff" + V4_DST,
     1_700_000_000_000_000_000, 10, 1480),
    (3, 2, V6_SRC, V6_DST, 1_700_000_001_000_000_000, 1, 48),
    (0xFFFFFFFFFFFFFFFE, 2, b"\xff" * 16, b"\0" * 16, 0, (1 << 64) - 1, (1 << 64) - 1),
]


def receipts():
    rows = []
    for node_id, role, src, dst, epoch_ns, n, nbytes in RECEIPT_CASES:
        row = {"node_id": node_id, "role": role, "src": src.hex(), "dst": dst.hex(),
               "epoch_ns": epoch_ns, "packets": n, "bytes": nbytes}
        for h in HASHES:
            row[h] = spec_ref.receipt(node_id, role, src, dst, epoch_ns, n, nbytes, h).hex()
        rows.append(row)
    return rows


def segments():
    pk = packets()
    rows = []
    for node_id, seg_seq, count in ((1, 0, 0), (1, 1, 1), (2, 41, 5), (9, (1 << 64) - 1, 3)):
        row = {"node_id": node_id, "seg_seq": seg_seq, "records": {}}
        for h in HASHES:
            recs = [spec_ref.record(1_700_000_000_000_000_000 + 1000 * i, 0, 2, pk[i][1], h)
                    for i in range(count)]
            row["records"][h] = [r.hex() for r in recs]
            row[h] = spec_ref.segment(node_id, seg_seq, recs, h).hex()
        rows.append(row)
    return rows


def trees():
    rows = []
    for n in (0, 1, 2, 3, 4, 5, 7, 8, 9):
        leaves = [spec_ref.leaf(1 + (i % 2), bytes([i]) * 32) for i in range(n)]
        row = {"leaves": [x.hex() for x in leaves]}
        for h in HASHES:
            row[h] = {"root": spec_ref.mth(leaves, h).hex(),
                      "inclusion": [[p.hex() for p in spec_ref.inclusion_path(leaves, m, h)]
                                    for m in range(n)]}
        rows.append(row)
    return rows


def vectors():
    return {
        "format": "BEAT record formats v1",
        "about": "Golden vectors computed from the SPEC text (tests/fastpath/spec_ref.py). "
                 "Integers are decimal, bytes are hex. Every frame of a digest row carries the same IP packet "
                 "and must give the row's PD and FT.",
        "hashes": list(HASHES),
        "digests": digests(),
        "records": records(),
        "receipts": receipts(),
        "segments": segments(),
        "trees": trees(),
    }


def main():
    path = os.path.join(HERE, "beat-v1.json")
    with open(path, "w") as f:
        json.dump(vectors(), f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
