"""The adversary of issue 14's "gaps are evidence" (governance/gaps.py, docs/gap-records.md): a
router's owner writes any gap record, anchors it when it likes (or never), serves what it likes,
colludes with one neighbour, and tries to frame an honest device or to escape with a drop.

Every attack runs the project's real checks end to end below the transport: gap records packed
and committed by ``beat_common.gap_record`` (``G = H("BEAT-GP-v1" || node_id || record)``),
anchored in RFC 9162 trees (``ledger_client.merkle``) on an in-memory ledger with the SPEC's
anchor semantics (tests/ledger/test_batcher.py's MemLedger) that stamps each anchor with its own
clock (``Anchor.ledger_t_ns``, as the local ledger does), read through the governance's
``AnchorCache``, checked by ``governance.gaps.check_gap_records`` and judged by
``governance.verdicts.judge`` on the adversary lab's networks (tests/governance/adversary_lab.py).
The judgement's coverage gets the honoured gaps exactly as ``governance.interrogate.coverage_of``
gives them.

Times: the lab's (a hop takes at most ``MAX_HOP`` ns); the ledger's and the interrogation's clocks
are seconds later, as in a real dispute. Each test asserts the right outcome (the liar named, or
the honest device not named); the ones that show a flaw are findings
(/work/prompts/findings-gaps.md) marked ``xfail(strict=True)`` until fixed.
"""
import dataclasses

import pytest

from adversary_lab import HI, NONE, OUTSIDE, WINDOW, Book, Coverage, Net, judge_it, pd, verdicts
from beat_common.gap_record import (GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, gap_leaf,
                                    pack_gap_record)
from beat_rpc.evidence import UNANCHORED, AnchorRef, GapRecord
from governance import gaps as G
from governance.verdicts import AMBIGUOUS, CONSISTENT, DROPPED, MISSING
from governance.verify import AnchorCache
from ledger_client import merkle
from ledger_client.types import Anchor
from test_batcher import MemLedger

HASH = "sha3-256"
SEC = 10**9
W_LO, W_HI = WINDOW
HOP = 300
MID = W_LO + 5 * HI
DELAY = G.DEFAULT_ANCHOR_DELAY_NS
# the route 1 -> 2 -> 3 -> 4, a detour 2 -> 5 -> 4; every device its own owner
LONG = Net((1, 2, 3, 4), [(1, 2), (2, 3), (3, 4), (2, 5), (5, 4)])
N_PACKETS = 6


# -- the ledger and the device's gap records ------------------------------------------------------

class Ledger(MemLedger):
    """MemLedger stamping every anchor with the ledger's clock (``now``), as the local ledger
    stamps ``ledger_t_ns``; the device cannot choose it."""

    def __init__(self):
        super().__init__(HASH)
        self.now = W_HI + SEC

    def anchor(self, a, *, signer="device-key"):
        return super().anchor(dataclasses.replace(a, ledger_t_ns=self.now), signer=signer)


def anchor_gaps(ledger, node, records, at_ns, *, leaf_node=None, extra_leaves=()):
    """Anchor ``records`` (gap tuples) in the next batch of ``node`` at ledger time ``at_ns``:
    the served ``GapRecord`` of each, with its inclusion path. ``leaf_node``: whose node_id the
    leaves are computed with (another node's: a record taken from its anchor)."""
    raw = [pack_gap_record(*g) for g in records]
    leaves = [gap_leaf(HASH, leaf_node or node, r) for r in raw] + list(extra_leaves)
    seq = ledger.next_batch_seq(node)
    ledger.now = at_ns
    ts = [g[1] for g in records] or [at_ns]
    ledger.anchor(Anchor(node, seq, len(leaves), merkle.root(HASH, leaves), min(ts), max(ts)))
    return [GapRecord(*g, anchor=AnchorRef(seq, i, len(leaves),
                                           tuple(merkle.inclusion_proof(HASH, leaves, i))))
            for i, g in enumerate(records)]


def keep_anchoring(ledger, node, lo, hi, every=10 * SEC):
    """``node``'s ordinary batches from ``lo`` to ``hi``: one every ``every`` (as its batcher
    builds them), each a segment leaf of the records of its last period, taken by the ledger
    at once (``ledger_t_ns`` its clock); the anchor's span is the records' times."""
    t, k = lo, 0
    while t <= hi:
        ledger.now = t
        seq = ledger.next_batch_seq(node)
        leaf = b"\x02" + (node * 1000 + k).to_bytes(32, "big")
        ledger.anchor(Anchor(node, seq, 1, merkle.root(HASH, [leaf]), max(0, t - every), t))
        t, k = t + every, k + 1


def unanchored(records):
    return [GapRecord(*g, anchor=UNANCHORED) for g in records]


def declare(book, node, served, ledger, asked_at, anchored_until=None, **kw):
    """What the governance makes of ``served`` (node's gap records): checked, the honoured ones
    as the coverage's gaps (governance/interrogate.coverage_of), all of them declared."""
    declared = G.check_gap_records(node, HASH, served, AnchorCache(ledger), asked_at_ns=asked_at,
                                   **kw)
    cov = book.of(node).coverage or Coverage()
    if anchored_until is not None:
        cov = dataclasses.replace(cov, anchored_until_t_ns=anchored_until)
    book.of(node).coverage = dataclasses.replace(
        cov, gaps=tuple((d.from_ns, d.to_ns, d.frames_dropped, d.reason)
                        for d in declared if d.honoured))
    return declared


def judged(book, declared=None, net=LONG, f=1):
    ev = book.evidence()
    for node, ds in (declared or {}).items():
        ev[node] = dataclasses.replace(ev[node], declared_gaps=tuple(ds))
    return judge_it(net, ev, f=f)


def send(book, t, path, d, rec=None, hide=()):
    for k, x in enumerate(path):
        p = path[k - 1] if k else OUTSIDE
        q = path[k + 1] if k + 1 < len(path) else OUTSIDE
        if x in hide:
            continue
        p, q = (rec or {}).get(x, (p, q))
        book.of(x).add(t + k * HOP, p, q, d)


def dropping_liar(kind="drops", n=N_PACKETS, rec=None):
    """r2 lies with the flow's packets 0..n-1 (the ones before pass as agreed):

    - ``drops``: it drops them; its records, written and anchored at the time (before its owner
      thought of a gap), show each arriving from r1 and leaving nowhere (``DROPPED``);
    - ``deviates``: it sends them to r5 (which passes them to r4) and keeps no record of them:
      r1 and r5 both saw them pass r2 (``MISSING``: withheld);
    - ``hides``: it records them as ``rec`` says (e.g. "to r3") and drops them."""
    book = Book()
    for i in range(3):
        send(book, MID - (i + 1) * 3 * HI, LONG.route, pd(100 + i))
    for i in range(n):
        t = MID + i * 3 * HI
        if kind == "drops":
            send(book, t, (1, 2), pd(i), rec={2: (1, NONE)})
        elif kind == "deviates":
            send(book, t, (1, 2, 5, 4), pd(i), hide=(2,))
        else:
            send(book, t, (1, 2), pd(i), rec=rec)
    for x in LONG.nodes:
        book.of(x)
    return book


LIARS = ["drops", "deviates"]


DROP_LO, DROP_HI = MID - HI, MID + N_PACKETS * 3 * HI     # the dropped packets' times, padded


def drops_gap(frames=1000, lo=DROP_LO, hi=DROP_HI, iface="eth1"):
    return (lo, hi, frames, GAP_KERNEL_DROPS, iface)


# -- the baseline: what a gap buys and what it does not --------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_the_dropping_liar_without_a_gap_is_named(liar):
    """Baseline: r2 drops and keeps no record; r1 and r3 honest: r2 alone explains it."""
    j = judged(dropping_liar(liar))
    assert j.faulty == [2] and verdicts(j)[2] == {"drops": DROPPED, "deviates": MISSING}[liar]


@pytest.mark.parametrize("liar", LIARS)
def test_a_timely_gap_makes_the_liar_blind_and_the_report_names_the_gap(liar):
    """(a) A kernel-drops gap anchored at the time (the next anchor, 10 s later): the guarantee's
    documented end ("Declared capture loss"): r2 is not named for these packets, but the report
    names the gap with its anchor, and no honest device is named."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap()], DROP_HI + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert [x.status for x in d] == [G.HONOURED]
    assert j.faulty == []
    assert verdicts(j)[1] in (CONSISTENT, AMBIGUOUS) and verdicts(j)[3] in (CONSISTENT, AMBIGUOUS)
    assert any("node 2 declared it was blind from" in n and "on eth1: 1000 frames dropped by "
               "the kernel" in n for n in j.notes), j.notes
    assert any(r.startswith("blind: 1 declared capture gap(s) anchored in time")
               for r in j.devices[2].reasons), j.devices[2].reasons


def test_blind_counts_only_packets_a_neighbour_says_passed_the_device():
    """The report's "blind" line counts the packets a device cannot show that a neighbour's
    record says passed it: r2 (deviates, no record; r1 says it handed them to r2) is blind to
    the N packets; r4, off every path of the flow, with a timely gap over the same window, is
    blind to none (it was counted blind for every packet in its gap, as if it had been on the
    path: seen in the lab demo, where a router off the agreed route was "blind" to 20)."""
    ledger = Ledger()
    book = dropping_liar("drops")
    d2 = declare(book, 2, anchor_gaps(ledger, 2, [drops_gap()], DROP_HI + 10 * SEC), ledger,
                 asked_at=DROP_HI + 60 * SEC)
    d4 = declare(book, 4, anchor_gaps(ledger, 4, [drops_gap()], DROP_HI + 10 * SEC), ledger,
                 asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d2, 4: d4})
    assert [x.status for x in d2 + d4] == [G.HONOURED, G.HONOURED]
    r4 = [r for r in j.devices[4].reasons if r.startswith("blind:")]
    assert r4 and "no packet of the flow that a neighbour says passed it falls in them" in r4[0]
    ledger = Ledger()
    book = dropping_liar("deviates")
    d2 = declare(book, 2, anchor_gaps(ledger, 2, [drops_gap()], DROP_HI + 10 * SEC), ledger,
                 asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d2})
    assert [x.status for x in d2] == [G.HONOURED]
    r2 = [r for r in j.devices[2].reasons if r.startswith("blind:")]
    assert r2 and f"{N_PACKETS} packet(s) of the flow that a neighbour says passed it" in r2[0], r2


# -- (b) back-dated ----------------------------------------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
@pytest.mark.parametrize("late", ["after_delay", "after_asked"])
def test_a_back_dated_gap_excuses_nothing_and_is_named_back_dated(late, liar):
    """The liar kept running and anchoring (a batch every 10 s) after the drop, then wrote a
    gap record over it and anchored it (after the old 120 s delay, or after it was asked): its
    own batches before the record, taken by the ledger after the record's end + T, anchor what
    it recorded after that end (findings G1/G6: back-dating is shown by its own anchor
    sequence, not by the wall-clock delay alone)."""
    ledger = Ledger()
    asked = DROP_HI + 10 * DELAY
    at = DROP_HI + DELAY + SEC if late == "after_delay" else asked + SEC
    keep_anchoring(ledger, 2, DROP_HI + 10 * SEC, at - SEC)
    served = anchor_gaps(ledger, 2, [drops_gap()], at)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=asked)
    j = judged(book, {2: d})
    assert [x.status for x in d] == [G.BACK_DATED]
    assert j.faulty == [2], verdicts(j)
    assert any("NOT honoured (back-dated)" in n for n in j.notes), j.notes
    assert any("NOT honoured (back-dated)" in r for r in j.devices[2].reasons)


@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_written_after_the_drop_with_its_end_moved_to_the_present_is_back_dated(liar):
    """The liar writes, a minute after the drop (and just before it is asked), a "capture
    stopped" record from before the drop to now, and anchors it at once: its end is within the
    anchor delay of its anchor, so the delay alone does not see the back-dating. It kept running
    and anchoring meanwhile (its anchors of that minute are on the ledger)."""
    ledger = Ledger()
    # r2's ordinary batches while it says it was not capturing: one every 10 s
    for k in range(6):
        ledger.now = DROP_HI + k * 10 * SEC
        anchor_gaps(ledger, 2, [], DROP_HI + k * 10 * SEC,
                    extra_leaves=[b"\x02" + bytes([k]) * 32])
    now = DROP_HI + 61 * SEC
    served = anchor_gaps(ledger, 2, [(DROP_LO, now - SEC, 0, GAP_CAPTURE_STOPPED, "")], now)
    book = dropping_liar(liar)
    cache = AnchorCache(ledger)
    for k in range(7):                 # the governance read them (the index's segments' anchors)
        cache.get(2, k)
    d = G.check_gap_records(2, HASH, served, cache, asked_at_ns=now + SEC)
    book.of(2).coverage = Coverage(gaps=tuple((x.from_ns, x.to_ns, x.frames_dropped, x.reason)
                                              for x in d if x.honoured))
    j = judged(book, {2: d})
    assert [x.status for x in d] == [G.CONTRADICTED]
    assert j.faulty == [2]


def test_a_short_capture_stopped_gap_back_dated_within_the_delay_is_not_honoured():
    """r2 drops at DROP_LO..DROP_HI, keeps running and anchoring every 10 s (its batches hold
    segments with records of other flows inside the drop time: their first/last t_ns say so),
    and 90 s later writes "capture stopped [DROP_LO, DROP_HI + 1 s]" and anchors it: anchored
    within the delay after its end, no record of the flow inside (it dropped them), no anchor
    taken in (from + 120 s, to). Its own anchors' spans (the records they commit) are inside."""
    ledger = Ledger()
    for k in range(9):
        t = DROP_LO + k * 10 * SEC
        ledger.now = t + SEC
        seq = ledger.next_batch_seq(2)
        leaf = b"\x02" + bytes([k]) * 32
        ledger.anchor(Anchor(2, seq, 1, merkle.root(HASH, [leaf]), t, t + 10 * SEC - 1))
    at = DROP_HI + 90 * SEC
    served = anchor_gaps(ledger, 2, [(DROP_LO, DROP_HI + SEC, 0, GAP_CAPTURE_STOPPED, "")], at)
    cache = AnchorCache(ledger)
    for k in range(10):
        cache.get(2, k)
    d = G.check_gap_records(2, HASH, served, cache, asked_at_ns=at + 5 * SEC)
    assert [x.status for x in d] != [G.HONOURED], d


# -- (c) served, never anchored; pending ----------------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_never_anchored_excuses_nothing(liar):
    ledger = Ledger()
    book = dropping_liar(liar)
    d = declare(book, 2, unanchored([drops_gap()]), ledger, asked_at=DROP_HI + DELAY + SEC)
    j = judged(book, {2: d})
    assert [x.status for x in d] == [G.UNANCHORED]
    assert j.faulty == [2]
    assert any("NOT honoured (unanchored)" in n for n in j.notes), j.notes


def test_a_pending_capture_stopped_gap_reaching_back_over_the_window_excuses_nothing():
    """r2 dropped the flow minutes ago; its segments of that time are anchored (anchored_until
    is past the drop). Asked now, it serves "capture stopped from before the drop to now", not
    anchored: its end is within the anchor delay, so it is pending, and pending counts like
    records not anchored yet."""
    ledger = Ledger()
    asked = DROP_HI + 300 * SEC
    book = dropping_liar("deviates")
    d = declare(book, 2, unanchored([(DROP_LO, asked, 0, GAP_CAPTURE_STOPPED, "")]), ledger,
                asked_at=asked, anchored_until=asked - 10 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [2], (verdicts(j), [x.status for x in d])


def test_a_pending_drops_gap_older_than_the_devices_anchored_records_excuses_nothing():
    ledger = Ledger()
    asked = DROP_HI + 60 * SEC          # a fresh dispute: within the anchor delay of the drop
    book = dropping_liar("deviates")
    d = declare(book, 2, unanchored([drops_gap()]), ledger, asked_at=asked,
                anchored_until=DROP_HI + 50 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [2], (verdicts(j), [x.status for x in d])


# -- (d) another node's anchor or node_id --------------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_record_of_another_nodes_anchor_is_forged(liar):
    """r2 serves a record whose leaf r5 (its accomplice off the route) anchored: the governance
    reads r2's anchor of that batch_seq, where G(r2, record) is not."""
    ledger = Ledger()
    anchor_gaps(ledger, 2, [], DROP_HI, extra_leaves=[b"\x02" + bytes(32)])   # r2's batch 0
    theirs = anchor_gaps(ledger, 5, [drops_gap()], DROP_HI + 10 * SEC)        # r5's batch 0
    book = dropping_liar(liar)
    d = declare(book, 2, theirs, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.FORGED]
    assert judged(book, {2: d}).faulty == [2]


@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_leaf_computed_with_another_node_id_in_its_own_anchor_is_forged(liar):
    """r2 anchors, in its own batch, the leaf of the record as r5's (G binds node_id): the
    record served as r2's is not what r2 anchored."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap()], DROP_HI + 10 * SEC, leaf_node=5)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.FORGED]
    assert judged(book, {2: d}).faulty == [2]


# -- (e) a record of another period ----------------------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_record_reused_from_another_period_excuses_nothing(liar):
    """An honoured record of an earlier real gap, served again for the dispute: it speaks of its
    own time only."""
    ledger = Ledger()
    old = (DROP_HI + 200 * SEC, DROP_HI + 205 * SEC, 1000, GAP_KERNEL_DROPS, "eth1")
    served = anchor_gaps(ledger, 2, [old], old[1] + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 600 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    assert judged(book, {2: d}).faulty == [2]


# -- (f) malformed, huge, inverted, zero frames --------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_a_gap_from_zero_to_the_end_of_time_excuses_nothing(liar):
    ledger = Ledger()
    g = (0, (1 << 64) - 1, 1, GAP_CAPTURE_STOPPED, "")
    served = anchor_gaps(ledger, 2, [g], DROP_HI + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.PREMATURE]
    assert judged(book, {2: d}).faulty == [2]


@pytest.mark.parametrize("liar", LIARS)
def test_a_long_kernel_drops_gap_excuses_nothing(liar):
    ledger = Ledger()
    g = drops_gap(hi=DROP_LO + 20 * SEC)
    served = anchor_gaps(ledger, 2, [g], DROP_LO + 30 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.TOO_LONG]
    assert judged(book, {2: d}).faulty == [2]


def test_an_inverted_gap_record_on_the_wire_is_malformed_evidence():
    """A served record with from_ns after to_ns (bytes patched after signing would not verify;
    the liar signs them): the decoder refuses it (the device's answer is bad evidence, MISSING),
    so no check downstream meets one."""
    from beat_rpc import evidence as ev
    g = GapRecord(DROP_LO, DROP_HI, 5, GAP_KERNEL_DROPS, "eth1", anchor=UNANCHORED)
    body = bytearray(ev.encode_chunk(ev.KIND_GAP_RECORDS, 2, bytes(32), 0, True, DROP_HI, [g]))
    off = ev.HEADER_SIZE
    body[off:off + 16] = body[off + 8:off + 16] + body[off:off + 8]
    with pytest.raises(ev.MalformedEvidence, match="from_ns is after to_ns"):
        ev.decode_chunk(bytes(body))


@pytest.mark.parametrize("liar", LIARS)
def test_a_kernel_drops_gap_of_zero_frames_excuses_nothing(liar):
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=0)], DROP_HI + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.honoured for x in d] == [False]
    j = judged(book, {2: d})
    assert j.faulty == [2], [x.status for x in d]
    assert any("NOT honoured" in n for n in j.notes), j.notes


@pytest.mark.parametrize("liar", LIARS)
def test_a_kernel_drops_gap_excuses_no_more_passages_than_frames_dropped(liar):
    """r2 drops 6 packets (12 frames unseen if it really missed them: each passage is an
    ingress and an egress frame) and declares a timely gap of 1 frame."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=1)], DROP_HI + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    assert judged(book, {2: d}).faulty == [2]


# -- withholding, selective answers ----------------------------------------------------------------

@pytest.mark.parametrize("liar", LIARS)
def test_withholding_gap_records_buys_nothing(liar):
    """r2 anchored a gap record in time but serves none (or only one of two pieces): what is
    not served is not honoured; the honoured piece excuses only its own time."""
    ledger = Ledger()
    half = (DROP_LO + DROP_HI) // 2
    served = anchor_gaps(ledger, 2, [drops_gap(hi=half), drops_gap(lo=half + 1)],
                         DROP_HI + 10 * SEC)
    book = dropping_liar(liar)
    d = declare(book, 2, [], ledger, asked_at=DROP_HI + 60 * SEC)
    assert judged(book, {2: d}).faulty == [2]
    book = dropping_liar(liar)
    d = declare(book, 2, served[:1], ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    j = judged(book, {2: d})
    assert j.faulty == [2], verdicts(j)


# -- collusion with one neighbour --------------------------------------------------------------------

@pytest.mark.parametrize("who", ["successor", "detour"])
def test_a_colluding_neighbours_gap_frames_no_honest_device(who):
    """r2 (owner A) drops the flow and records "to r3"; its accomplice (owner A: r3 the
    successor, or r5 the detour) declares a timely gap over the drop so that the loss looks like
    the link's or the blind accomplice's. r1 and r4 (honest) are never named."""
    ledger = Ledger()
    mate = 3 if who == "successor" else 5
    net = Net(LONG.route, LONG.links, owners={2: "A", mate: "A"})
    book = dropping_liar(kind="hides", rec={2: (1, 3)})
    served = anchor_gaps(ledger, mate, [(DROP_LO, DROP_HI, 40, GAP_KERNEL_DROPS, "eth0")],
                         DROP_HI + 10 * SEC)
    d = declare(book, mate, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    j = judged(book, {mate: d}, net=net)
    assert not set(j.faulty) & {1, 4, 3 if mate == 5 else 5}, verdicts(j)


# -- honest devices with gaps ----------------------------------------------------------------------

def honest_blind(missed=range(N_PACKETS)):
    """r2 honest: its capture ring overflowed, so it has no record of packets ``missed``, which
    it forwarded to r3 as agreed (r1 and r3 recorded them)."""
    book = Book()
    for i in range(N_PACKETS):
        send(book, MID + i * 3 * HI, LONG.route, pd(i), hide=(2,) if i in missed else ())
    for x in LONG.nodes:
        book.of(x)
    return book


def test_an_honest_blind_device_with_a_timely_gap_is_not_named():
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + 10 * SEC)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [] and verdicts(j)[2] in (CONSISTENT, AMBIGUOUS)
    assert j.devices[2].counts["blind"] >= N_PACKETS


@pytest.mark.parametrize("liar", [1, 3])
def test_an_honest_blind_device_is_not_named_when_one_neighbour_lies_about_it(liar):
    """r2 honest and blind (timely gap); r1 (or r3) lies: it claims more packets sent to r2 (or
    received from r2) in r2's gap than there were, and denies some it saw."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + 10 * SEC)
    book = honest_blind()
    for i in range(3):
        t = MID + i * 3 * HI + HI // 2
        if liar == 1:
            book.of(1).add(t, OUTSIDE, 2, pd(200 + i))           # never sent
        else:
            book.of(3).add(t + HOP, 2, 4, pd(300 + i))            # never received
            book.of(4).add(t + 2 * HOP, 3, OUTSIDE, pd(300 + i))
    book[liar].records = book[liar].records[1:]                   # and hides one it did see
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert 2 not in j.faulty and verdicts(j)[2] != DROPPED, verdicts(j)
    assert set(j.faulty) <= {liar}


def test_an_honest_device_whose_gap_is_not_anchored_yet_is_not_named():
    """The gap happened seconds before the interrogation: its record is written, its batch not
    anchored yet (the anchor period has not passed), nor the segments after it."""
    ledger = Ledger()
    book = honest_blind()
    asked = DROP_HI + 3 * SEC
    d = declare(book, 2, unanchored([drops_gap(frames=2 * N_PACKETS)]), ledger, asked_at=asked,
                anchored_until=DROP_LO - 5 * SEC)
    j = judged(book, {2: d})
    assert [x.status for x in d] == [G.PENDING]
    assert 2 not in j.faulty, verdicts(j)


def test_an_honest_blind_device_whose_anchor_waited_for_the_ledger_is_not_named():
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + DELAY + 60 * SEC)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + DELAY + 600 * SEC)
    j = judged(book, {2: d})
    assert 2 not in j.faulty, (verdicts(j), [x.status for x in d])


# -- the rules that close G1, G5 and G6, attacked --------------------------------------------------
# Back-dating is shown by the device's own anchor sequence (governance/gaps.py): a record is
# back-dated when a batch of its device before the record's leaf, taken by the ledger after the
# record's end + T, anchors content after that time; a capture-stopped record is contradicted by
# content of its own more than T inside it. The ledger's times are MemLedger's clock (``now``).

T = G.DEFAULT_TOLERANCE_NS
PERIOD = 10 * SEC


def batch(ledger, node, span, at, leaves=1):
    """One batch of ``node`` (``leaves`` segment leaves) whose content spans ``span``, taken by
    the ledger at ``at``."""
    ledger.now = at
    seq = ledger.next_batch_seq(node)
    ls = [b"\x02" + (seq * 1000 + i).to_bytes(32, "big") for i in range(leaves)]
    ledger.anchor(Anchor(node, seq, len(ls), merkle.root(HASH, ls), *span))
    return seq


def check(served, ledger, asked, **kw):
    return G.check_gap_records(2, HASH, served, AnchorCache(ledger), asked_at_ns=asked, **kw)


def test_an_honest_blind_device_after_a_long_ledger_outage_is_not_named():
    """G6 on the ledger's own clock: r2 (honest) built a batch every 10 s while the ledger was
    down (15 min); its gap record entered its outbox ~1 s after the gap, before anything it
    recorded later. When the ledger came back it took them all at once, in order: the batches
    before the record hold older content only, so the record is honoured and r2 not named."""
    ledger = Ledger()
    back = DROP_HI + 900 * SEC
    t = DROP_LO - 300 * SEC
    while t < DROP_LO:
        batch(ledger, 2, (t, t + PERIOD - 1), back)
        t += PERIOD
    batch(ledger, 2, (DROP_LO - PERIOD, DROP_HI), back)     # the segment around the drop
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], back)
    for k in range(1, 60):                                  # what it recorded after, queued
        batch(ledger, 2, (DROP_HI + (k - 1) * PERIOD, DROP_HI + k * PERIOD), back)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=back + 60 * SEC)
    assert [x.status for x in d] == [G.HONOURED], [x.why for x in d]
    j = judged(book, {2: d})
    assert j.faulty == [] and verdicts(j)[2] in (CONSISTENT, AMBIGUOUS), verdicts(j)


@pytest.mark.parametrize("crash", [False, True])
def test_an_honest_restart_is_not_contradicted(crash):
    """r2 (honest) stopped at ``stop`` and started again 5 min later: its final anchor (records
    up to the stop) was taken a second after the stop; after a crash its last commit follows
    its last "alive" mark (the record's start) by up to a second, so it holds records just
    inside the record; its first anchor after the start holds a receipt epoch begun just before
    the start. None of these contradicts "capture stopped [stop, start]"."""
    ledger = Ledger()
    stop, start = DROP_LO, DROP_LO + 300 * SEC
    batch(ledger, 2, (stop - PERIOD, stop + (SEC if crash else 0)), stop + SEC)
    served = anchor_gaps(ledger, 2, [(stop, start, 0, GAP_CAPTURE_STOPPED, "")], start + 2 * SEC)
    batch(ledger, 2, (start - SEC // 2, start + PERIOD), start + 12 * SEC)
    own = b""
    if crash:
        own = b"".join(int(stop + SEC // 2 + i).to_bytes(8, "big") + bytes(40) for i in range(3))
    d = check(served, ledger, start + 60 * SEC, own_records=own,
              own_index=[(0, 0, stop - PERIOD, stop + (SEC if crash else 0)),
                         (2, 0, start - SEC // 2, start + PERIOD)])
    assert [x.status for x in d] == [G.HONOURED], [x.why for x in d]


@pytest.mark.parametrize("written_after", [2 * SEC, T + 3 * PERIOD], ids=["within_T", "beyond"])
def test_a_liar_that_kept_anchoring_back_dates_at_most_T_and_a_period(written_after):
    """The stated bound (docs/threat-model.md): r2 drops, keeps anchoring every 10 s, and writes
    a drops record over the drop ``written_after`` its end, anchored by its next batch. Within
    T (plus the period its batch takes) the record is honoured: the residual retroactive
    blindness; beyond, its batches taken before the record hold later content: back-dated and
    named."""
    ledger = Ledger()
    t = DROP_HI
    while t + PERIOD <= DROP_HI + written_after:
        batch(ledger, 2, (t, t + PERIOD), t + PERIOD)
        t += PERIOD
    at = t + PERIOD
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], at)
    book = dropping_liar("deviates")
    d = declare(book, 2, served, ledger, asked_at=at + 60 * SEC)
    if written_after <= T:
        assert [x.status for x in d] == [G.HONOURED]
        assert judged(book, {2: d}).faulty == []
    else:
        assert [x.status for x in d] == [G.BACK_DATED], [x.why for x in d]
        assert "an honest gap record precedes what its device recorded later" in d[0].why
        assert judged(book, {2: d}).faulty == [2]


def test_filler_batches_of_old_content_do_not_hide_the_later_content():
    """r2 kept anchoring after the drop (6 batches), then anchors 40 batches of old content
    (fillers) so that the batches just before its late record look like an honest outage's
    queue: the first batches taken after the record's end + T still show the later content."""
    ledger = Ledger()
    for k in range(1, 7):
        batch(ledger, 2, (DROP_HI + (k - 1) * PERIOD, DROP_HI + k * PERIOD),
              DROP_HI + k * PERIOD + SEC)
    for k in range(40):
        batch(ledger, 2, (DROP_LO - 2 * SEC, DROP_LO - SEC), DROP_HI + 70 * SEC + k)
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + 80 * SEC)
    d = check(served, ledger, DROP_HI + 100 * SEC)
    assert [x.status for x in d] == [G.BACK_DATED], [x.why for x in d]


def test_filler_batches_on_both_sides_do_not_hide_the_later_content():
    """r2 buries its later content in the middle of its run: 40 filler batches of old content
    taken just after the record's end + T, then the batches of its later content, then 40 more
    fillers before its late record. The governance reads the whole run (up to
    MAX_SEQUENCE_READS batches at each end), so the later content is found."""
    ledger = Ledger()
    t = DROP_HI + 20 * SEC
    for k in range(40):
        batch(ledger, 2, (DROP_LO - 2 * SEC, DROP_LO - SEC), t + k)
    for k in range(1, 7):
        batch(ledger, 2, (DROP_HI + k * PERIOD, DROP_HI + (k + 1) * PERIOD),
              DROP_HI + (k + 1) * PERIOD + SEC)
    for k in range(40):
        batch(ledger, 2, (DROP_LO - 2 * SEC, DROP_LO - SEC), DROP_HI + 90 * SEC + k)
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + 140 * SEC)
    d = check(served, ledger, DROP_HI + 200 * SEC)
    assert [x.status for x in d] == [G.BACK_DATED], [x.why for x in d]


def test_a_liar_that_stopped_anchoring_is_honoured_only_with_its_record_first():
    """The residual (docs/threat-model.md): r2 anchored nothing for 5 min after the drop, then
    anchors the record first and its later records after it, as an honest device after a
    ledger outage would: honoured. Had it put its later segments before the record in the same
    batch (its served index says where each segment is), the record is back-dated."""
    ledger = Ledger()
    at = DROP_HI + 300 * SEC
    seg_later = (DROP_HI + 5 * SEC, DROP_HI + 200 * SEC)
    raw = [pack_gap_record(*drops_gap(frames=2 * N_PACKETS))]
    for order in ("record_first", "segments_first"):
        ledger = Ledger()
        gap = gap_leaf(HASH, 2, raw[0])
        segs = [b"\x02" + bytes([i]) * 32 for i in range(2)]
        leaves = [gap] + segs if order == "record_first" else segs + [gap]
        seq = ledger.next_batch_seq(2)
        ledger.now = at
        ledger.anchor(Anchor(2, seq, 3, merkle.root(HASH, leaves), DROP_LO, seg_later[1]))
        i = leaves.index(gap)
        served = [GapRecord(*drops_gap(frames=2 * N_PACKETS),
                            anchor=AnchorRef(seq, i, 3, tuple(merkle.inclusion_proof(
                                HASH, leaves, i))))]
        index = [(seq, leaves.index(s), *seg_later) for s in segs]
        d = check(served, ledger, at + 60 * SEC, own_index=index)
        want = G.HONOURED if order == "record_first" else G.BACK_DATED
        assert [x.status for x in d] == [want], (order, [x.why for x in d])


def test_a_capture_stopped_record_longer_than_T_over_own_content_is_contradicted():
    """r2 says it was not capturing for 3 minutes and anchored it at once, but its own batches
    before the record anchor content of that time, and its served index lists a segment there."""
    ledger = Ledger()
    lo, hi = DROP_LO, DROP_LO + 180 * SEC
    batch(ledger, 2, (lo - PERIOD, lo), lo + SEC)
    served = anchor_gaps(ledger, 2, [(lo, hi, 0, GAP_CAPTURE_STOPPED, "")], hi + SEC)
    d = check(served, ledger, hi + 60 * SEC, own_index=[(0, 0, lo + 30 * SEC, lo + 40 * SEC)])
    assert [x.status for x in d] == [G.CONTRADICTED] and "its index lists" in d[0].why
    ledger = Ledger()
    batch(ledger, 2, (lo - PERIOD, lo), lo + SEC)
    batch(ledger, 2, (lo + 50 * SEC, lo + 60 * SEC), lo + 61 * SEC)
    served = anchor_gaps(ledger, 2, [(lo, hi, 0, GAP_CAPTURE_STOPPED, "")], hi + SEC)
    d = check(served, ledger, hi + 60 * SEC)
    assert [x.status for x in d] == [G.CONTRADICTED] and "it anchored" in d[0].why


def test_the_anchor_sequence_of_another_node_cannot_back_date_an_honest_record():
    """A neighbour (r1, or r3) anchoring fresh content every second cannot make r2's late
    (ledger outage) record back-dated: only r2's own anchors count."""
    ledger = Ledger()
    for k in range(30):
        batch(ledger, 1, (DROP_HI + k * SEC, DROP_HI + (k + 1) * SEC), DROP_HI + (k + 1) * SEC)
        batch(ledger, 3, (DROP_HI + k * SEC, DROP_HI + (k + 1) * SEC), DROP_HI + (k + 1) * SEC)
    batch(ledger, 2, (DROP_LO - PERIOD, DROP_HI), DROP_HI + 600 * SEC)
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2 * N_PACKETS)], DROP_HI + 600 * SEC)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 700 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    assert 2 not in judged(book, {2: d}).faulty


# G5: passages it cannot show (no record, seen by a device before it and one after it) and its
# ingress-only records in its kernel-drops gaps, against their frames_dropped

def test_an_honest_blind_device_missing_as_many_passages_as_frames_is_not_named():
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=N_PACKETS)], DROP_HI + 10 * SEC)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [] and j.devices[2].counts["blind"] >= N_PACKETS
    assert not any("count as its own drops" in r for r in j.devices[2].reasons)


@pytest.mark.parametrize("liar", [1, 3])
def test_a_lying_neighbour_cannot_push_an_honest_device_beyond_its_frames(liar):
    """r2 honest and blind to 6 passages, its gap says 6 frames; r1 claims 20 more packets sent
    to r2 in the gap (or r3, with r4, 20 more received from r2): one side's claims are not
    passages r2 cannot show, so its gap still excuses the 6, and r2 is not named."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=N_PACKETS)], DROP_HI + 10 * SEC)
    book = honest_blind()
    for i in range(20):
        t = MID + (i % N_PACKETS) * 3 * HI + HI // 3 + i
        if liar == 1:
            book.of(1).add(t, OUTSIDE, 2, pd(400 + i))
        else:
            book.of(3).add(t + HOP, 2, 4, pd(500 + i))
            book.of(4).add(t + 2 * HOP, 3, OUTSIDE, pd(500 + i))
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert 2 not in j.faulty and verdicts(j)[2] != DROPPED, verdicts(j)
    assert set(j.faulty) <= {liar}
    assert [g["status"] for g in j.devices[2].gaps] == [G.HONOURED]


def test_a_drops_liar_beyond_its_frames_has_the_rest_counted_as_its_own_drops():
    """r2's own records show 6 packets arrive and not leave; its gap says 2 frames: at most 2
    of them are missed egress frames, the other 4 are its own drops (and named)."""
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=2)], DROP_HI + 10 * SEC)
    book = dropping_liar("drops")
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [2] and verdicts(j)[2] == DROPPED
    assert j.devices[2].counts["blind"] == 2 and j.devices[2].counts["own_drops"] == 4
    assert any("4 of these records count as its own drops" in r for r in j.devices[2].reasons)


def test_a_deviating_liar_beyond_its_frames_has_its_drops_gaps_not_honoured():
    ledger = Ledger()
    served = anchor_gaps(ledger, 2, [drops_gap(frames=N_PACKETS - 1)], DROP_HI + 10 * SEC)
    book = dropping_liar("deviates")
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d})
    assert j.faulty == [2] and verdicts(j)[2] == MISSING
    (g,) = j.devices[2].gaps
    assert g["status"] == G.EXCEEDED and "more than the 5 frame(s)" in g["why"], g
    assert any("NOT honoured (exceeded)" in n for n in j.notes), j.notes
    assert j.devices[2].counts["blind"] == 0


def test_a_capture_stopped_gap_is_not_bounded_by_frames():
    """A capture-stopped record says nothing of frames (0 = unknown): an honest device stopped
    for the drop's time is not named however many passages it missed."""
    ledger = Ledger()
    stopped = (DROP_LO, DROP_HI, 0, GAP_CAPTURE_STOPPED, "")
    served = anchor_gaps(ledger, 2, [stopped], DROP_HI + 2 * SEC)
    book = honest_blind()
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    assert [x.status for x in d] == [G.HONOURED]
    assert judged(book, {2: d}).faulty == []


def test_an_accomplice_hiding_its_side_frames_no_honest_device():
    """r2 sends the flow via its accomplice r5 (same owner), which keeps no record of it: r2's
    passages have a witness on one side only, so its 1-frame gap is not exceeded; r1 and r4
    (honest) are never named."""
    ledger = Ledger()
    net = Net(LONG.route, LONG.links, owners={2: "A", 5: "A"})
    book = dropping_liar("deviates")
    for x in (5,):
        book[x].records = []
    served = anchor_gaps(ledger, 2, [drops_gap(frames=1)], DROP_HI + 10 * SEC)
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d}, net=net)
    assert not set(j.faulty) & {1, 3, 4}, verdicts(j)


@pytest.mark.parametrize("who", ["alone", "with_detour"])
def test_one_owner_making_up_both_sides_cannot_push_an_honest_device_beyond_its_frames(who):
    """r2 honest and blind to 6 passages, its gap says 6 frames. One owner makes up 20 passages
    through r2 in the gap, both sides: r1 alone ("sent to r2" and "got back from r2"), or r1
    with its detour r5 (same owner: "r1 -> r2", "r2 -> r5"). Passages are counted against the
    frames only when two owners saw them: r2's gap still excuses its 6 real misses (which r1 and
    the honest r3 saw pass it) and r2 is not named."""
    ledger = Ledger()
    net = Net(LONG.route, LONG.links, owners={1: "A", 5: "A"} if who == "with_detour" else None)
    served = anchor_gaps(ledger, 2, [drops_gap(frames=N_PACKETS)], DROP_HI + 10 * SEC)
    book = honest_blind()
    for i in range(20):
        t = MID + (i % N_PACKETS) * 3 * HI + HI // 3 + i
        book.of(1).add(t, OUTSIDE, 2, pd(600 + i))
        if who == "alone":
            book.of(1).add(t + 2 * HOP, 2, OUTSIDE, pd(600 + i))
        else:
            book.of(5).add(t + 2 * HOP, 2, 4, pd(600 + i))
    d = declare(book, 2, served, ledger, asked_at=DROP_HI + 60 * SEC)
    j = judged(book, {2: d}, net=net)
    assert 2 not in j.faulty, verdicts(j)
    assert [g["status"] for g in j.devices[2].gaps] == [G.HONOURED]
