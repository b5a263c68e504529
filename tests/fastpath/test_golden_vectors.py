"""The golden vectors of the record formats (tests/data/vectors/beat-v1.json) against the reference
and against the product.

The file is what another vendor's device can check itself against. Two directions:
- the SPEC reference (tests/fastpath/spec_ref.py) still computes every value in the file, so neither
  the file nor the reference drifts unnoticed;
- both fast-path twins (whose `segment_value` the governance's segment check uses) and the Merkle
  code of the ledger client (the governance's inclusion check) give the file's values byte for byte.
"""
import json
import os

import pytest

import spec_ref
from ledger_client import merkle

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "vectors", "beat-v1.json")

with open(VECTORS) as _f:
    V = json.load(_f)

HASHES = V["hashes"]
PACKETS = {row["name"]: bytes.fromhex(row["ip"]) for row in V["digests"]}


def test_file_covers_both_hashes_and_every_format():
    assert HASHES == ["sha3-256", "blake2b-256"]
    assert len(V["digests"]) >= 15 and len(V["records"]) >= 5 and len(V["receipts"]) >= 3
    assert [len(t["leaves"]) for t in V["trees"]] == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    links = {f["link"] for row in V["digests"] for f in row["frames"]}
    assert links == {"ethernet", "ethernet_qinq", "ethernet_mpls2", "sll", "sll2", "raw", "null"}


# --- the reference still computes the file -------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_reference_digests(h):
    for row in V["digests"]:
        pd, ft = spec_ref.pd_ft(bytes.fromhex(row["ip"]), h)
        assert (pd.hex(), ft.hex()) == (row[h]["pd"], row[h]["ft"]), row["name"]


@pytest.mark.parametrize("h", HASHES)
def test_reference_records_and_fp(h):
    for row in V["records"]:
        rec = spec_ref.record(row["t_ns"], row["prev_id"], row["next_id"], PACKETS[row["packet"]], h)
        assert rec.hex() == row[h]["record"]
        assert spec_ref.fp(row["node_id"], rec, h).hex() == row[h]["fp"]


@pytest.mark.parametrize("h", HASHES)
def test_reference_receipts_segments_trees(h):
    for row in V["receipts"]:
        r = spec_ref.receipt(row["node_id"], row["role"], bytes.fromhex(row["src"]),
                             bytes.fromhex(row["dst"]), row["epoch_ns"], row["packets"], row["bytes"], h)
        assert r.hex() == row[h]
    for row in V["segments"]:
        recs = [bytes.fromhex(x) for x in row["records"][h]]
        assert spec_ref.segment(row["node_id"], row["seg_seq"], recs, h).hex() == row[h]
    for row in V["trees"]:
        leaves = [bytes.fromhex(x) for x in row["leaves"]]
        assert spec_ref.mth(leaves, h).hex() == row[h]["root"]
        assert [[p.hex() for p in spec_ref.inclusion_path(leaves, m, h)] for m in range(len(leaves))] \
            == row[h]["inclusion"]


# --- the product gives the file's values ---------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_fastpath_digests_every_link(impl, h):
    seen = 0
    for row in V["digests"]:
        for f in row["frames"]:
            reason, pd, ft = impl.pd_ft(bytes.fromhex(f["frame"]), f["linktype"], h)
            assert reason is None, (row["name"], f["link"], reason)
            assert (bytes(pd).hex(), bytes(ft).hex()) == (row[h]["pd"], row[h]["ft"]), \
                (row["name"], f["link"])
            seen += 1
    assert seen == 7 * len(V["digests"])


@pytest.mark.parametrize("h", HASHES)
def test_fastpath_fp(impl, h):
    for row in V["records"]:
        rec = bytes.fromhex(row[h]["record"])
        assert bytes(impl.fp_many(rec, row["node_id"], h)).hex() == row[h]["fp"]
    # many at once: the same values in order
    recs = b"".join(bytes.fromhex(row[h]["record"]) for row in V["records"] if row["node_id"] == 1)
    assert bytes(impl.fp_many(recs, 1, h)).hex() == "".join(
        row[h]["fp"] for row in V["records"] if row["node_id"] == 1)


@pytest.mark.parametrize("h", HASHES)
def test_fastpath_receipts_and_segments(impl, h):
    for row in V["receipts"]:
        r = impl.receipt_value(h, row["node_id"], row["role"], bytes.fromhex(row["src"]),
                               bytes.fromhex(row["dst"]), row["epoch_ns"], row["packets"], row["bytes"])
        assert bytes(r).hex() == row[h]
    for row in V["segments"]:
        recs = b"".join(bytes.fromhex(x) for x in row["records"][h])
        assert bytes(impl.segment_value(h, row["node_id"], row["seg_seq"], recs)).hex() == row[h]


@pytest.mark.parametrize("h", HASHES)
def test_fastpath_merkle_root(impl, h):
    for row in V["trees"]:
        leaves = b"".join(bytes.fromhex(x) for x in row["leaves"])
        levels = impl.merkle_levels(h, leaves)
        assert bytes(levels[-1]).hex() == row[h]["root"], len(row["leaves"])


@pytest.mark.parametrize("h", HASHES)
def test_ledger_client_merkle(h):
    for row in V["trees"]:
        leaves = [bytes.fromhex(x) for x in row["leaves"]]
        root = bytes.fromhex(row[h]["root"])
        assert merkle.root(h, leaves) == root
        for m, path in enumerate(row[h]["inclusion"]):
            proof = merkle.inclusion_proof(h, leaves, m)
            assert [p.hex() for p in proof] == path
            assert merkle.verify_inclusion(h, leaves[m], m, len(leaves), proof, root)
            if path:       # a changed path must not verify
                bad = [bytes(32)] + proof[1:]
                assert not merkle.verify_inclusion(h, leaves[m], m, len(leaves), bad, root)
