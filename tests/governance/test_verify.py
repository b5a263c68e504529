"""governance/verify.py: segments and receipts against their anchors on a real local ledger.

A device's leaves (``0x02 || S`` per segment, ``0x01 || R`` per receipt, S and R by the fast path)
go into a real RFC 9162 tree (``ledger_client.merkle``) whose root is anchored on a
``LocalLedger``; the evidence it hands over is then changed byte by byte: every change to what was
anchored is TAMPERED, and a leaf not anchored (yet) is UNANCHORED, its records kept but flagged.
The last tests go through ``judge``: a rewritten segment makes its device TAMPERED, no one else.
"""
import dataclasses
import struct

import pytest

import fastpath
from beat_rpc.evidence import UNANCHORED as NOT_ANCHORED
from beat_rpc.evidence import AnchorRef, Counter, Receipt, Segment
from fastpath.output import NONE
from governance.verdicts import CONSISTENT, TAMPERED, NodeEvidence, flow_tag, judge
from governance.verify import (TAMPERED as PROBLEM_TAMPERED, UNANCHORED, AnchorCache,
                               verify_receipts, verify_segments)
from ledger_client import merkle
from ledger_client.errors import NotFound, Unavailable
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import SLA, Anchor, Node

V4 = bytes(10) + b"\xff\xff"
SRC, DST = V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2])
T0 = 1_700_000_000_000_000_000
GOV = DeviceKey.from_seed(b"\x01" * 32)
KEYS = {n: DeviceKey.from_seed(bytes([10 + n]) * 32) for n in (1, 2, 3, 4)}
HASHES = ("sha3-256", "blake2b-256")


def records(n, seed, t0=T0):
    """n 48-byte records (t_ns, prev_id, next_id, PD, FT) with distinct contents."""
    return b"".join(struct.pack(">QQQ", t0 + 1000 * i, 0, 2) + bytes([seed, i % 256]) * 8
                    + bytes([seed]) * 8 for i in range(n))


@pytest.fixture(params=HASHES)
def led(request, tmp_path):
    lg = LocalLedger(str(tmp_path / "ledger.mdb"), request.param, GOV.public)
    for n, k in KEYS.items():
        lg.register_node(Node(n, f"isp-{n}", k.public), signer=GOV)
    yield lg
    lg.close()


def anchor_batch(led, node_id, batch_seq, segs, receipts=()):
    """Anchor the leaves of ``segs`` ([(seg_seq, records)]) and ``receipts`` (Receipt without
    anchor) in one batch; returns them as a device hands them over (with inclusion proofs)."""
    H = led.hash_name
    items = [("S", seq, recs, fastpath.segment_value(H, node_id, seq, recs)) for seq, recs in segs]
    items += [("R", rc, None, rc.R) for rc in receipts]
    leaves = [(b"\x02" if kind == "S" else b"\x01") + v for kind, _, _, v in items]
    tree = merkle.Tree(H, leaves)
    assert led.anchor(Anchor(node_id, batch_seq, len(leaves), tree.root, T0, T0 + 10**9),
                      signer=KEYS[node_id]) == "anchored"
    out_s, out_r = [], []
    for i, (kind, a, recs, v) in enumerate(items):
        ref = AnchorRef(batch_seq, i, len(leaves), tuple(tree.proof(i)))
        if kind == "S":
            out_s.append(Segment(a, v, ref, recs))
        else:
            out_r.append(dataclasses.replace(a, anchor=ref))
    return out_s, out_r


def receipt(led, node_id, epoch, role=1, packets=10):
    R = fastpath.receipt_value(led.hash_name, node_id, role, SRC, DST, epoch, packets,
                               45 * packets)
    return Receipt(epoch, role, SRC, DST, packets, 45 * packets, R, NOT_ANCHORED)


@pytest.fixture
def device(led):
    """Node 1: segments 0-2 and two receipts anchored in batch 0, segment 3 not anchored yet."""
    segs = [(k, records(10, k)) for k in range(3)]
    rcs = [receipt(led, 1, T0), receipt(led, 1, T0, role=2, packets=9)]
    s, r = anchor_batch(led, 1, 0, segs, rcs)
    recs3 = records(5, 3)
    s.append(Segment(3, fastpath.segment_value(led.hash_name, 1, 3, recs3), NOT_ANCHORED, recs3))
    return s, r


def test_all_proven(led, device):
    segs, rcs = device
    anchors = AnchorCache(led)
    out = verify_segments(1, led.hash_name, segs, led, anchors)
    assert (out.segments, out.proven, out.unanchored, out.tampered) == (4, 3, 1, [])
    assert out.records == b"".join(s.records for s in segs[:3])
    assert out.unproven == segs[3].records
    assert out.problems[0].kind == UNANCHORED and "segment 3" in str(out.problems[0])
    assert anchors.reads == 1                       # batch 0 read once for three segments
    rc = verify_receipts(1, led.hash_name, rcs, led, anchors)
    assert (rc.receipts, rc.unproven, rc.problems) == (rcs, [], [])
    assert anchors.reads == 1


def test_records_outside_the_window_are_dropped(led, device):
    """records(10, k) are T0, T0 + 1000, ... T0 + 9000: a window [T0 + 2500, T0 + 4000] keeps
    2 of each segment; segments wholly outside give none; the checks are over whole segments."""
    segs, _ = device
    out = verify_segments(1, led.hash_name, segs, led, window=(T0 + 2500, T0 + 4000))
    assert (out.proven, out.unanchored, out.tampered) == (3, 1, [])
    keep = lambda r: b"".join(r[o:o + 48] for o in range(0, len(r), 48)        # noqa: E731
                              if T0 + 2500 <= struct.unpack_from(">Q", r, o)[0] <= T0 + 4000)
    assert out.records == b"".join(keep(s.records) for s in segs[:3])
    assert out.unproven == keep(segs[3].records) and len(out.unproven) == 2 * 48
    assert out.dropped == 3 * 8 + 3
    out = verify_segments(1, led.hash_name, segs, led, window=(0, T0 - 1))
    assert out.records == out.unproven == b"" and out.dropped == 35 and out.proven == 3
    whole = verify_segments(1, led.hash_name, segs, led, window=(0, NONE))
    assert whole.dropped == 0 and whole.records == b"".join(s.records for s in segs[:3])


def changed(b, pos, bit=1):
    b = bytearray(b)
    b[pos] ^= bit
    return bytes(b)


@pytest.mark.parametrize("field,pos", [("t_ns", 7), ("prev_id", 15), ("next_id", 16),
                                       ("PD", 30), ("FT", 47)])
def test_a_flipped_bit_in_any_field_is_tampered(led, device, field, pos):
    segs, _ = device
    bad = dataclasses.replace(segs[1], records=changed(segs[1].records, 48 * 4 + pos))
    out = verify_segments(1, led.hash_name, [segs[0], bad, segs[2]], led)
    assert [p.kind for p in out.problems] == [PROBLEM_TAMPERED]
    assert "segment 1" in str(out.problems[0]) and "S over its 10 records" in str(out.problems[0])
    assert out.records == segs[0].records + segs[2].records     # the rest still counts


def test_rewritten_with_a_new_S_is_not_in_the_anchor(led, device):
    """The device rewrote its records after anchoring and recomputed S: S checks out, the
    inclusion proof does not."""
    segs, _ = device
    recs = changed(segs[2].records, 20)
    S = fastpath.segment_value(led.hash_name, 1, 2, recs)
    out = verify_segments(1, led.hash_name, [Segment(2, S, segs[2].anchor, recs)], led)
    assert [p.kind for p in out.problems] == [PROBLEM_TAMPERED]
    assert f"{S.hex()} at index 2 is not in anchor (node 1, batch 0" in out.problems[0].reason
    assert out.records == b""


@pytest.mark.parametrize("change", ["leaf_index", "path", "short_path", "tree_size", "seg_seq",
                                    "S", "node"])
def test_a_wrong_proof_is_tampered(led, device, change):
    segs, _ = device
    s = segs[1]
    ref = s.anchor
    node = 1
    if change == "leaf_index":
        s = dataclasses.replace(s, anchor=dataclasses.replace(ref, leaf_index=2))
    elif change == "path":
        s = dataclasses.replace(s, anchor=dataclasses.replace(
            ref, path=(changed(ref.path[0], 3),) + ref.path[1:]))
    elif change == "short_path":
        s = dataclasses.replace(s, anchor=dataclasses.replace(ref, path=ref.path[:-1]))
    elif change == "tree_size":
        s = dataclasses.replace(s, anchor=dataclasses.replace(ref, tree_size=ref.tree_size + 1))
    elif change == "seg_seq":
        s = dataclasses.replace(s, seg_seq=7)
    elif change == "S":
        s = dataclasses.replace(s, S=changed(s.S, 0))
    else:
        node = 2                    # node 2 hands over node 1's segment as its own
    out = verify_segments(node, led.hash_name, [s], led)
    assert [p.kind for p in out.problems] == [PROBLEM_TAMPERED], out.problems
    assert out.proven == 0 and out.records == b""


def test_records_not_whole(led, device):
    segs, _ = device
    out = verify_segments(1, led.hash_name,
                          [dataclasses.replace(segs[0], records=segs[0].records[:-1])], led)
    assert out.problems[0].reason == "records are 479 bytes, not whole 48-byte records"


def test_seg_seq_given_twice(led, device):
    segs, _ = device
    out = verify_segments(1, led.hash_name, [segs[0], segs[0]], led)
    assert (out.proven, out.problems, out.records) == (1, [], segs[0].records)
    other = dataclasses.replace(segs[1], seg_seq=0)
    out = verify_segments(1, led.hash_name, [segs[0], other], led)
    assert [p.kind for p in out.problems] == [PROBLEM_TAMPERED]
    assert "given twice" in out.problems[0].reason


def test_anchor_not_on_the_ledger_is_unanchored(led, device):
    segs, _ = device
    s = dataclasses.replace(segs[0], anchor=dataclasses.replace(segs[0].anchor, batch_seq=5))
    anchors = AnchorCache(led)
    out = verify_segments(1, led.hash_name, [s, s, segs[1]], led, anchors)
    assert [p.kind for p in out.problems] == [UNANCHORED]
    assert "anchor (node 1, batch 5) is not on the ledger" in out.problems[0].reason
    assert out.unproven == s.records and out.records == segs[1].records
    # batch 5 is beyond the node's anchors on the ledger: no read; batch 0 read once
    assert anchors.reads == 1


def test_invented_batch_seqs_cost_no_ledger_reads(led, device):
    """A device that names a thousand batches it never anchored makes the governance read the
    ledger once (its next batch_seq), not once per batch."""
    segs, _ = device
    calls = []

    class Counting:
        hash_name = led.hash_name

        def next_batch_seq(self, node_id):
            calls.append(("next", node_id))
            return led.next_batch_seq(node_id)

        def get_anchor(self, node_id, batch_seq):
            calls.append(("get", batch_seq))
            return led.get_anchor(node_id, batch_seq)

    anchors = AnchorCache(Counting())
    lies = [dataclasses.replace(
        segs[0], seg_seq=100 + k,
        S=fastpath.segment_value(led.hash_name, 1, 100 + k, segs[0].records),
        anchor=dataclasses.replace(segs[0].anchor, batch_seq=1000 + k)) for k in range(1000)]
    out = verify_segments(1, led.hash_name, lies, led, anchors)
    assert len(out.problems) == 1000 and {p.kind for p in out.problems} == {UNANCHORED}
    assert calls == [("next", 1)]


def test_hash_must_be_the_ledgers(led, device):
    other = next(h for h in HASHES if h != led.hash_name)
    with pytest.raises(ValueError, match=f"hash_name '{other}' is not the ledger's hash"):
        verify_segments(1, other, device[0], led)


class FlakyLedger:
    """A backend whose get_anchor raises, as the ethereum one may."""
    hash_name = "sha3-256"

    def __init__(self, exc):
        self.exc = exc

    def get_anchor(self, node_id, batch_seq):
        raise self.exc


def test_not_found_is_unanchored_unavailable_raises():
    recs = records(3, 1)
    seg = Segment(0, fastpath.segment_value("sha3-256", 1, 0, recs), AnchorRef(0, 0, 1, ()),
                  recs)
    out = verify_segments(1, "sha3-256", [seg], FlakyLedger(NotFound("no anchor 1/0")))
    assert [p.kind for p in out.problems] == [UNANCHORED] and out.unproven == recs
    with pytest.raises(Unavailable):
        verify_segments(1, "sha3-256", [seg], FlakyLedger(Unavailable("node down")))


# -- receipts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["R", "packets", "epoch_ns", "role", "bad_role", "src"])
def test_a_changed_receipt_is_tampered(led, device, change):
    _, rcs = device
    rc = rcs[0]
    if change == "R":
        rc = dataclasses.replace(rc, R=changed(rc.R, 31))
    elif change == "packets":
        rc = dataclasses.replace(rc, packets=rc.packets - 1)
    elif change == "epoch_ns":
        rc = dataclasses.replace(rc, epoch_ns=rc.epoch_ns + 1)
    elif change == "role":
        rc = dataclasses.replace(rc, role=2)
    elif change == "bad_role":
        rc = dataclasses.replace(rc, role=3)
    else:
        rc = dataclasses.replace(rc, src=DST)
    out = verify_receipts(1, led.hash_name, [rc, rcs[1]], led)
    assert [p.kind for p in out.problems] == [PROBLEM_TAMPERED]
    assert out.receipts == [rcs[1]]
    if change == "bad_role":
        assert "not a valid receipt: role must be 1" in out.problems[0].reason


def test_receipt_with_its_R_recomputed_is_not_in_the_anchor(led, device):
    _, rcs = device
    rc = receipt(led, 1, T0, packets=11)            # a new R over the changed count
    rc = dataclasses.replace(rc, anchor=rcs[0].anchor)
    out = verify_receipts(1, led.hash_name, [rc], led)
    assert "is not in anchor (node 1, batch 0" in out.problems[0].reason


def test_unanchored_receipt_kept_and_flagged(led):
    rc = receipt(led, 1, T0)
    out = verify_receipts(1, led.hash_name, [rc], led)
    assert (out.receipts, out.unproven, out.unanchored) == ([], [rc], 1)


# -- through the judgement ------------------------------------------------------------------------

def flow_records(led, node, prev_id, next_id, n, hop):
    """The SLA flow's records at one device: n packets, 1 ms apart, PD by packet index."""
    ft = flow_tag(led.hash_name, SRC, DST)
    return b"".join(struct.pack(">QQQ", T0 + i * 10**6 + hop * 300_000, prev_id, next_id)
                    + i.to_bytes(16, "big") + ft for i in range(n))


@pytest.mark.parametrize("anchored_rewrite", [True, False], ids=["new-S", "old-S"])
def test_rewritten_segment_makes_its_device_tampered(led, anchored_rewrite):
    """h1 - r1 - r2 - r3 - h2: every device anchors its segments (20 records each); r2 rewrites
    one segment after anchoring (next_id NONE, as if dropped), with or without recomputing S."""
    sla = SLA(7, "acme", SRC, DST, (1, 2, 3), loss_budget_ppm=1_000_000)
    hops = {1: (0, 2), 2: (1, 3), 3: (2, 0)}
    anchors = AnchorCache(led)
    evidence = {}
    for k, (node, (prev_id, next_id)) in enumerate(hops.items()):
        recs = flow_records(led, node, prev_id, next_id, 100, k)
        segs, rcs = anchor_batch(led, node, 0, [(s, recs[s * 960:(s + 1) * 960])
                                                for s in range(5)])
        if node == 2:
            rewritten = b"".join(r[:16] + NONE.to_bytes(8, "big") + r[24:] for r in
                                 (segs[2].records[i:i + 48] for i in range(0, 960, 48)))
            S = (fastpath.segment_value(led.hash_name, 2, 2, rewritten) if anchored_rewrite
                 else segs[2].S)
            segs[2] = Segment(2, S, segs[2].anchor, rewritten)
        evidence[node] = NodeEvidence.from_checks(
            verify_segments(node, led.hash_name, segs, led, anchors),
            verify_receipts(node, led.hash_name, rcs, led, anchors),
            [Counter(prev_id, next_id, 100, 4500, T0, T0 + 10**8)])
    assert anchors.reads == 3
    j = judge(sla, T0, T0 + 10**8, evidence, hash_name=led.hash_name)
    assert {n: d.verdict for n, d in j.devices.items()} == {1: CONSISTENT, 2: TAMPERED,
                                                            3: CONSISTENT}
    r2 = j.devices[2]
    assert r2.counts["tampered"] == 1 and "segment 2" in r2.reasons[0]
    assert r2.counts["dropped"] == 0                # the rewritten records are not believed
    assert r2.counts["missing"] == 20               # r1 and r3 both vouch for those 20 packets
