"""Adversary of commit 6e43f35: a signed coverage is "empty" when its proof ring holds no segment
(``ring_oldest_seq >= next_seg_seq``, ``beat_rpc.evidence.Coverage.ring_empty``), no longer when
``oldest_t_ns == 0``; ``ring_short`` follows, and governance/interrogate.py ``coverage_of`` maps it
to the judgement's ``Coverage(empty=...)``.

The two fields are the device's word: governance/verify.py ``check_answer`` checks the index
against ``ring_oldest_seq``/``next_seg_seq`` but never ``oldest_t_ns`` nor ``ring_wraps``, so a
liar may sign any combination. The states the change makes newly reachable are "not empty with
``oldest_t_ns = 0``" and "empty with ``oldest_t_ns != 0``". Each attack below signs one of them
(judged through ``coverage_of``, on the evidence books of tests/governance/adversary_lab.py, the
engine checked against the brute-force reference), and compares with the old mapping
(``_old_coverage_of``: the rule before the change) where the question is "not excused beyond what
it was before". Then the honest side: what the real store (beatd/store) signs, and one honest
case the change left framed (a strict xfail until the commit after it: ``missing_intervals`` of a
wrapped ring now reaches up to and with its oldest record's time).
"""
import dataclasses
import struct

import pytest

import fastpath
from adversary_lab import HI, WINDOW, Book, judge_it, pd, reference_of, verdicts
from beat_rpc import evidence as ev
from benchmarks.pipeline import NEXT, OWN, build_frames
from governance.interrogate import coverage_of
from governance.verdicts import AMBIGUOUS, CONSISTENT, RING_SHORT
from governance.verify import WITHHELD, check_answer
from test_adversary import HOP, LONG, MID, PAPER, send
from test_adversary import _lone_liar_withholding as _withholding_liar

W_LO, W_HI = WINDOW
LATE = W_HI + 50 * HI            # the device's clock when it answered: after the window
THRESHOLD = 10 * HI              # its threshold time: LATE - 0 is far more, LATE - MID is not


def signed(oldest_seq, next_seq, wraps, oldest_t_ns, *, t_ns=LATE, threshold_ns=THRESHOLD):
    """A signed coverage (``beat_rpc.evidence.Coverage``): every closed segment anchored, no open
    segment, newest record at ``t_ns``."""
    return ev.Coverage(ring_oldest_seq=oldest_seq, next_seg_seq=next_seq,
                       anchored_segments=next_seq, ring_wraps=wraps, oldest_t_ns=oldest_t_ns,
                       newest_t_ns=t_ns, anchored_until_t_ns=t_ns, open_first_t_ns=0,
                       threshold_ns=threshold_ns, index_first_seq=next_seq, t_ns=t_ns)


def _old_coverage_of(cov):
    """``coverage_of`` as it was before 6e43f35 (empty: ``oldest_t_ns == 0``; ``ring_short``
    with it)."""
    new = coverage_of(cov)
    short = cov.ring_wraps > 0 and (cov.oldest_t_ns == 0 or
                                    cov.t_ns - cov.oldest_t_ns < cov.threshold_ns)
    return dataclasses.replace(new, empty=cov.oldest_t_ns == 0, ring_short=short)


def flow(net, n, t0=MID, gap=3 * HI, **kw):
    book = Book()
    for i in range(n):
        send(book, t0 + i * gap, net.route, pd(i), **kw)
    for x in net.nodes:
        book.of(x)
    return book


def check(net, book, window=WINDOW, f=1):
    j = judge_it(net, book, f=f, window=window)
    assert (set(j.faulty), j.explained) == reference_of(net, book, f=f, window=window)
    return j


def coverage_note(j, node):
    return any(n.startswith(f"node {node}:") and "at fault for its coverage" in n
               for n in j.notes)


# == a lone liar signing the states the change made reachable ==================================

@pytest.mark.parametrize("old", [False, True], ids=["new_rule", "old_rule"])
def test_liar_signing_oldest_0_on_a_wrapped_held_ring_is_named(old):
    """r2 withholds packets 0..3 and signs a wrapped ring that holds segments 5..8 with
    ``oldest_t_ns = 0``. New rule: not empty, not short; it says it holds everything since time
    0, so its missing records have no excuse: named. (Old rule: "it says its ring is empty"
    against the records it gave: named too.)"""
    cov = signed(5, 9, 5, 0)
    judged = (_old_coverage_of if old else coverage_of)(cov)
    assert judged.empty == old and judged.ring_short == old
    j = check(LONG, _withholding_liar(judged))
    assert j.faulty == [2], verdicts(j)


def test_liar_dropping_everything_signing_oldest_0_gains_nothing_it_lacked_before():
    """r2 drops the whole flow, gives no record and signs a wrapped, held ring with
    ``oldest_t_ns = 0``. Before the change that read as an empty wrapped ring (RING_SHORT, at
    fault for its coverage); now it says it holds everything since 0: r1's word against its own
    (AMBIGUOUS), exactly what the same liar got before by signing ``oldest_t_ns = 1``. No new
    escape, and nobody honest is named."""
    book = flow(PAPER, 4, hide=(2, 3))
    book[2].coverage = coverage_of(signed(5, 9, 5, 0))
    j_new = check(PAPER, book)
    book[2].coverage = _old_coverage_of(signed(5, 9, 5, 1))
    j_old_alt = check(PAPER, book)
    assert j_new.faulty == [] and verdicts(j_new)[2] == AMBIGUOUS
    assert verdicts(j_new) == verdicts(j_old_alt)
    assert coverage_note(j_new, 2) == coverage_note(j_old_alt, 2) is False


@pytest.mark.parametrize("wraps", [0, 3])
def test_liar_signing_an_empty_ring_with_an_old_oldest_t_ns_is_named(wraps):
    """r2 withholds packets 0..3, gives its records of 4..7, and signs ``ring_oldest_seq =
    next_seg_seq`` (empty, new rule) with an ``oldest_t_ns`` far before the window (not empty,
    old rule): its records contradict "empty" -- named, as it was before."""
    cov = signed(9, 9, wraps, W_LO - 100 * HI)
    assert coverage_of(cov).empty and not _old_coverage_of(cov).empty
    for judged in (coverage_of(cov), _old_coverage_of(cov)):
        j = check(LONG, _withholding_liar(judged))
        assert j.faulty == [2], verdicts(j)


def test_liar_dropping_everything_signing_an_empty_ring_is_no_better_off():
    """r2 drops the whole flow and signs ``ring_oldest_seq = next_seg_seq`` with an old
    ``oldest_t_ns``. Not wrapped: judged like any device (AMBIGUOUS, as before). Wrapped: now
    RING_SHORT and at fault for its coverage -- before it was AMBIGUOUS with no such finding. The
    liar is never excused further than before."""
    book = flow(PAPER, 4, hide=(2, 3))
    book[2].coverage = coverage_of(signed(9, 9, 0, W_LO - 100 * HI))
    j = check(PAPER, book)
    assert j.faulty == [] and verdicts(j)[2] == AMBIGUOUS and not coverage_note(j, 2)
    book[2].coverage = coverage_of(signed(9, 9, 3, W_LO - 100 * HI))
    j = check(PAPER, book)
    assert j.faulty == [] and verdicts(j)[2] == RING_SHORT and coverage_note(j, 2)
    book[2].coverage = _old_coverage_of(signed(9, 9, 3, W_LO - 100 * HI))
    assert verdicts(check(PAPER, book))[2] == AMBIGUOUS


@pytest.mark.parametrize("oldest_seq,next_seq,first", [(9, 9, 9), (12, 9, 9), (12, 9, 12)])
def test_an_empty_or_inverted_ring_cannot_hold_an_index_or_segments(oldest_seq, next_seq, first):
    """A liar signing ``ring_oldest_seq >= next_seg_seq`` (empty under the new rule, whatever its
    ``oldest_t_ns``) cannot also list segments: an index entry is outside the ring it declares,
    and an inverted ring (``ring_oldest_seq > next_seg_seq``) has no place for
    ``index_first_seq`` at all: WITHHELD, its own evidence."""
    entry = ev.IndexEntry(first, 3, MID, MID + HI, bytes(32), False, ev.UNANCHORED)
    cov = dataclasses.replace(signed(oldest_seq, next_seq, 3, MID), index_first_seq=first,
                              index=(entry,) if oldest_seq == next_seq else ())
    out = check_answer(2, "sha3-256", [], cov, None, window=WINDOW)
    kinds = {p.kind for p in out.problems}
    assert WITHHELD in kinds, out.problems


# == the honest side =============================================================================

ZERO_WINDOW = (0, 100 * HI)


def _zero_book(dropped):
    """Zero-stamped capture files (every record at t = 0, e.g. a replayed pcap without
    timestamps): packets 0..7 through PAPER's route, all at t = 0. r2's ring wrapped; the
    segments it still holds begin at 0 (``oldest_t_ns = 0``). ``dropped``: packets whose r2
    records were in the segments the ring dropped."""
    book = Book()
    for i in range(8):
        send(book, 0, PAPER.route, pd(i), hop=0, hide=(2,) if i in dropped else ())
    for x in PAPER.nodes:
        book.of(x)
    book[2].coverage = coverage_of(signed(5, 9, 5, 0))
    return book


def test_honest_wrapped_ring_beginning_at_0_holding_the_window_is_not_framed():
    """The case the change fixes: an honest wrapped ring whose oldest held segment begins at 0
    and holds every record of the window. Old rule: "it says its ring is empty" (MISSING) and
    at fault for its coverage; new rule: CONSISTENT, no finding."""
    book = _zero_book(dropped=())
    j = check(PAPER, book, window=ZERO_WINDOW)
    assert j.faulty == [] and verdicts(j)[2] == CONSISTENT and not coverage_note(j, 2)
    book[2].coverage = _old_coverage_of(signed(5, 9, 5, 0))
    j = check(PAPER, book, window=ZERO_WINDOW)
    assert j.faulty == [2] and coverage_note(j, 2)      # the old rule framed it


def test_honest_wrapped_ring_whose_dropped_records_tie_its_oldest_at_T_is_excused():
    """The baseline for the next test: the same ties at a time T > 0 (every record at T, some of
    r2's in dropped segments, its oldest held record at T). ``missing_intervals`` gives
    ``(0, T)`` (``(0, T - 1)`` before the next test's fix), which meets r2's possible record times ``[T - skew, T + hop + skew]``: r2
    may lack them, nobody is named."""
    T = MID
    book = Book()
    for i in range(8):
        send(book, T, PAPER.route, pd(i), hop=0, hide=(2,) if i < 4 else ())
    for x in PAPER.nodes:
        book.of(x)
    book[2].coverage = coverage_of(signed(5, 9, 5, T))
    j = check(PAPER, book)
    assert j.faulty == [], verdicts(j)


def test_honest_wrapped_ring_whose_dropped_records_tie_its_oldest_at_0_is_not_framed():
    book = _zero_book(dropped=(0, 1, 2, 3))
    j = check(PAPER, book, window=ZERO_WINDOW)
    assert j.faulty == [], verdicts(j)


# -- what the real store signs ---------------------------------------------------------------------

def _frames(n_packets, t=None):
    """Edge traffic (``benchmarks.pipeline.build_frames``), every frame stamped ``t`` when given."""
    buf, desc = build_frames(2 * n_packets, flows=50, desc_pack=fastpath.pack_desc)
    if t is not None:
        d = bytearray(desc)
        for off in range(0, len(d), fastpath.DESC_SIZE):
            struct.pack_into("<Q", d, off, t)
        desc = bytes(d)
    return buf, desc


def _ring_invariants(store):
    """The coverage's proof ring fields against the store's commitments: empty (new rule) exactly
    when no segment is held; ``oldest_t_ns`` the oldest held segment's first record; every held
    segment holds a record (the pipeline closes no empty segment)."""
    from beatd.store.evidence import EvidenceStore
    f = EvidenceStore(store).proof_ring_fields(THRESHOLD)
    held = {seq: (count, first, last) for seq, _, count, first, last in store.commitments()
            if f["ring_oldest_seq"] <= seq < f["next_seg_seq"]}
    assert sorted(held) == [seq for seq, *_ in store.segments()], (f, sorted(held))
    cov = ev.Coverage(**f, index_first_seq=f["next_seg_seq"], t_ns=LATE)
    assert cov.ring_empty == (not held), (f, sorted(held))
    if held:
        first = held[f["ring_oldest_seq"]]
        assert f["oldest_t_ns"] == first[1], (f, first)
        assert all(c[0] > 0 for c in held.values()), held
    else:
        assert f["oldest_t_ns"] == 0
    return f, cov


@pytest.mark.parametrize("stamp", ["from_0", "zero_stamped"])
def test_the_store_signs_empty_exactly_when_it_holds_no_segment(tmp_path, stamp):
    """Honest pipeline + store, a small ring that wraps many times, checked after every commit:
    ``ring_oldest_seq >= next_seg_seq`` exactly when no segment is held (never with records),
    ``oldest_t_ns`` is the oldest held segment's first record, no held segment is empty. With
    every frame stamped 0 the wrapped ring signs ``oldest_t_ns = 0`` while holding segments:
    the state of the tie test above is one an honest device reaches."""
    from beatd.store import Store
    store = Store(tmp_path / "s", 3, "sha3-256", 64 << 10)
    pipe = fastpath.Pipeline(3, hash_name="sha3-256", own_macs=[OWN], neighbours={NEXT: 2},
                             segment_records=64)
    pipe.resume(**store.resume_state())
    buf, desc = _frames(3000, t=0 if stamp == "zero_stamped" else None)
    if stamp == "from_0":
        d = bytearray(desc)
        base = struct.unpack_from("<Q", d, 0)[0]
        for off in range(0, len(d), fastpath.DESC_SIZE):
            struct.pack_into("<Q", d, off, struct.unpack_from("<Q", d, off)[0] - base)
        desc = bytes(d)
    seen_zero_held = False
    try:
        _ring_invariants(store)
        mv = memoryview(desc)
        n = len(desc) // fastpath.DESC_SIZE
        for i in range(0, n, 200):
            pipe.feed(buf, mv[i * fastpath.DESC_SIZE:(i + 200) * fastpath.DESC_SIZE])
            pipe.close_segment()
            pipe.close_segment()                     # a second close: nothing to close
            store.commit(pipe.take())
            f, cov = _ring_invariants(store)
            if f["ring_wraps"] and f["oldest_t_ns"] == 0 and not cov.ring_empty:
                seen_zero_held = True
                judged = coverage_of(cov)
                assert not judged.empty and not judged.ring_short
        assert f["ring_wraps"] > 0
        assert seen_zero_held == (stamp == "zero_stamped")
    finally:
        store.close()


def test_a_ring_smaller_than_a_segment_signs_empty_and_short(tmp_path):
    """A ring that drops every segment it closes (ring_size smaller than one segment) signs
    ``ring_oldest_seq = next_seg_seq`` with wraps: empty and RING_SHORT under both rules (its
    ``oldest_t_ns`` is 0): the change does not alter it."""
    from beatd.store import Store
    store = Store(tmp_path / "s", 3, "sha3-256", 1 << 10)
    pipe = fastpath.Pipeline(3, hash_name="sha3-256", own_macs=[OWN], neighbours={NEXT: 2},
                             segment_records=64)
    pipe.resume(**store.resume_state())
    buf, desc = _frames(500)
    try:
        pipe.feed(buf, desc)
        pipe.close_segment()
        store.commit(pipe.take())
        f, cov = _ring_invariants(store)
        assert cov.ring_empty and f["ring_wraps"] > 0 and f["oldest_t_ns"] == 0
        assert coverage_of(cov).empty and cov.ring_short
        assert _old_coverage_of(cov).empty
    finally:
        store.close()
