"""Writes gap-records.json, the golden vectors of gap records (docs/gap-records.md), from the
format text alone: the 57-byte record packed by hand, ``G = H("BEAT-GP-v1" || node_id(8) ||
record)``, the leaf ``0x03 || G``, and an anchor's RFC 9162 tree over a receipt, a segment and gap
leaves together (tests/fastpath/spec_ref.py's Merkle code, written from the SPEC), with every
inclusion path. Never from the product's code: tests/store/test_gap_records.py checks the product
against this file.

    .venv/bin/python tests/data/vectors/generate_gap_records.py
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "fastpath"))  # spec_ref

import spec_ref  # noqa: E402

TAG = b"BEAT-GP-v1"
NODE_ID = 0x0102030405060708
CASES = [  # name, from_ns, to_ns, frames_dropped, reason, interface
    ("kernel_drops_eth1", 1_700_000_000_000_000_000, 1_700_000_001_000_000_000, 1234, 1, "eth1"),
    ("capture_stopped_every_interface", 1_700_000_002_000_000_000, 1_700_000_062_500_000_000, 0,
     2, ""),
    ("new_store_from_zero", 0, 1_700_000_000_000_000_000, 0, 2, ""),
    ("sixteen_character_name", 5, 5, (1 << 64) - 1, 1, "abcdefghijklmnop"),
]


def record(from_ns, to_ns, frames, reason, interface):
    name = interface.encode("ascii")
    return (struct.pack(">QQQ", from_ns, to_ns, frames) + bytes([reason])
            + name + b"\x00" * (16 - len(name)))


def main():
    out = {"format": "BEAT gap records (docs/gap-records.md)", "node_id": NODE_ID,
           "about": "record = from_ns(8) to_ns(8) frames_dropped(8) reason(1) interface(16, NUL "
                    "padded); G = H('BEAT-GP-v1' || node_id(8) || record); leaf = 03 || G. "
                    "Integers decimal, bytes hex.",
           "hashes": list(spec_ref.HASHES), "records": [], "anchors": []}
    for name, f, t, n, reason, iface in CASES:
        rec = record(f, t, n, reason, iface)
        row = {"name": name, "from_ns": f, "to_ns": t, "frames_dropped": n, "reason": reason,
               "interface": iface, "record": rec.hex(), "G": {}, "leaf": {}}
        for h in spec_ref.HASHES:
            G = spec_ref.H(h, TAG + struct.pack(">Q", NODE_ID) + rec)
            row["G"][h] = G.hex()
            row["leaf"][h] = spec_ref.leaf(3, G).hex()
        out["records"].append(row)
    for h in spec_ref.HASHES:
        R = spec_ref.receipt(NODE_ID, 1, bytes(16), bytes(15) + b"\x01", 10**9, 3, 180, h)
        S = spec_ref.segment(NODE_ID, 0, [bytes(48)], h)
        leaves = [spec_ref.leaf(1, R), spec_ref.leaf(2, S)] + [
            bytes.fromhex(r["leaf"][h]) for r in out["records"]]
        out["anchors"].append({"hash": h, "leaves": [lf.hex() for lf in leaves],
                               "root": spec_ref.mth(leaves, h).hex(),
                               "paths": [[p.hex() for p in spec_ref.inclusion_path(leaves, m, h)]
                                         for m in range(len(leaves))]})
    with open(os.path.join(HERE, "gap-records.json"), "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
