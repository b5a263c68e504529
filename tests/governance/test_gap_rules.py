"""governance/gaps.py's rules, one by one, on gap records served with real inclusion proofs
(ledger_client.merkle) against anchors with the ledger's time: what is honoured, and every way a
declared gap is not (named, with why)."""
import dataclasses

import pytest

from beat_common.gap_record import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, gap_leaf, \
    pack_gap_record
from beat_rpc.evidence import UNANCHORED, AnchorRef, GapRecord
from governance import gaps
from ledger_client import merkle
from ledger_client.types import Anchor

H, NODE, S = "sha3-256", 5, 10**9
T = 1_800_000_000 * S


class Anchors:
    """An AnchorCache's interface over anchors made here."""

    def __init__(self):
        self.a = {}

    def get(self, node_id, batch_seq):
        return self.a.get((node_id, batch_seq))

    def known(self, node_id):
        return [a for (n, _), a in sorted(self.a.items()) if n == node_id]

    def anchor(self, batch_seq, gap_tuples, ledger_t_ns, node_id=NODE):
        """Anchor these gaps (with a segment leaf beside them); the served GapRecords."""
        leaves = [bytes([2]) + bytes(32)] + [gap_leaf(H, node_id, pack_gap_record(*g))
                                             for g in gap_tuples]
        root = merkle.root(H, leaves)
        self.a[(node_id, batch_seq)] = Anchor(node_id, batch_seq, len(leaves), root, 0, 0, None,
                                              ledger_t_ns)
        tree = merkle.Tree(H, leaves)
        return [GapRecord(*g, AnchorRef(batch_seq, i + 1, len(leaves),
                                        tuple(tree.proof(i + 1))))
                for i, g in enumerate(gap_tuples)]


def check(records, anchors, asked=T + 3600 * S, **kw):
    return gaps.check_gap_records(NODE, H, records, anchors, asked_at_ns=asked, **kw)


def drops(lo=T, hi=T + S, frames=9):
    return (lo, hi, frames, GAP_KERNEL_DROPS, "eth1")


def test_in_time_and_proven_is_honoured():
    an = Anchors()
    (g,) = an.anchor(0, [drops()], T + 11 * S)
    (d,) = check([g], an)
    assert d.status == gaps.HONOURED and d.ledger_t_ns == T + 11 * S and d.batch_seq == 0
    assert "declared it was blind from" in gaps.describe(d) and "eth1: 9 frames dropped" in \
        gaps.describe(d)


@pytest.mark.parametrize("make, status, says", [
    # late by its own anchor sequence: its batch 0, taken 101 s after the gap, anchored content
    # 100 s after it; the record came in batch 1 (an honest record precedes such content)
    (lambda an: (an.a.__setitem__((NODE, 0), Anchor(NODE, 0, 1, bytes(32), T + 90 * S,
                                                    T + 100 * S, None, T + 101 * S)),
                 an.anchor(1, [drops()], T + 300 * S))[1], gaps.BACK_DATED,
     "after it ended, after its batch 0"),
    (lambda an: an.anchor(0, [drops()], T + 4000 * S), gaps.BACK_DATED,
     "after the interrogation asked"),
    (lambda an: an.anchor(0, [drops()], None), gaps.UNTIMED, "does not say when"),
    (lambda an: [dataclasses.replace(an.anchor(0, [drops()], T + 2 * S)[0], from_ns=T - S)],
     gaps.FORGED, "not what it anchored"),
    (lambda an: [dataclasses.replace(an.anchor(0, [drops()], T + 2 * S)[0],
                                     anchor=AnchorRef(0, 1, 3, ()))],
     gaps.FORGED, "not what it anchored"),
    (lambda an: an.anchor(0, [drops(hi=T + 5 * S)], T + 2 * S), gaps.PREMATURE,
     "after the ledger took its anchor"),
    (lambda an: an.anchor(0, [drops(hi=T + 3600 * S)], T + 2 * S), gaps.TOO_LONG,
     "at most 10.0 s"),
    (lambda an: an.anchor(0, [drops(frames=0)], T + 2 * S), gaps.NO_DROPS, "0 frames"),
    (lambda an: [GapRecord(*drops(), AnchorRef(7, 0, 1, ()))], gaps.UNANCHORED,
     "batch 7) is not on the ledger"),
], ids=["late", "after-asked", "untimed", "widened", "wrong-tree", "ends-later",
        "too-long", "no-drops", "unknown-batch"])
def test_every_way_a_gap_is_not_honoured(make, status, says):
    an = Anchors()
    (d,) = check(make(an), an)
    assert d.status == status and says in d.why, d
    assert "NOT honoured" in gaps.describe(d)


def test_declared_ahead_of_the_interrogation_is_premature():
    an = Anchors()
    (d,) = check([GapRecord(*drops(hi=T + 4000 * S), UNANCHORED)], an)
    assert d.status == gaps.PREMATURE


def test_not_anchored_is_pending_within_the_delay_then_unanchored():
    an = Anchors()
    g = GapRecord(*drops(), UNANCHORED)
    assert check([g], an, asked=T + 30 * S)[0].status == gaps.PENDING
    d = check([g], an, asked=T + 30 * S, anchor_delay_ns=10 * S)[0]
    assert d.status == gaps.UNANCHORED and "not anchored, 29.0 s after it ended" in d.why


def test_capture_stopped_is_contradicted_by_its_own_records_and_anchors():
    an = Anchors()
    stop = (T - 600 * S, T, 0, GAP_CAPTURE_STOPPED, "")
    (g,) = an.anchor(3, [stop], T + 5 * S)
    assert check([g], an)[0].status == gaps.HONOURED
    record = (T - 300 * S).to_bytes(8, "big") + bytes(40)
    d = check([g], an, own_records=record)[0]
    assert d.status == gaps.CONTRADICTED and str(T - 300 * S) in d.why
    an.a[(NODE, 1)] = Anchor(NODE, 1, 1, bytes(32), 0, 0, None, T - 200 * S)  # it anchored then
    d = check([g], an)[0]
    assert d.status == gaps.CONTRADICTED and "anchored batch 1" in d.why
    # another node's anchor in that time is no contradiction
    an.a.pop((NODE, 1))
    an.a[(NODE + 1, 0)] = Anchor(NODE + 1, 0, 1, bytes(32), 0, 0, None, T - 200 * S)
    assert check([g], an)[0].status == gaps.HONOURED


def test_a_gap_is_the_devices_own_statement():
    """The same record anchored by another node proves nothing for this one."""
    an = Anchors()
    (g,) = an.anchor(0, [drops()], T + 2 * S, node_id=NODE + 1)
    an.a[(NODE, 0)] = dataclasses.replace(an.a.pop((NODE + 1, 0)), node_id=NODE)
    assert check([g], an)[0].status == gaps.FORGED
