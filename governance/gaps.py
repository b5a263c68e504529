"""A device's declared capture gaps, checked (docs/gap-records.md, docs/threat-model.md "Capture
gaps"): which of the gap records it served may excuse it, and why the others may not.

A gap record is the device's own statement that it was blind. It neither convicts nor clears
it: the judgement names every declared gap in the report, and only an **honoured** one is taken
as blindness (its packets there count as "may have passed unseen", its records' missing egress
there is not a drop). A record is honoured when all of these hold:

- its leaf ``0x03 || G`` is proven in the anchor the ledger holds (else ``forged``: not what it
  anchored);
- the ledger took that anchor before the interrogation asked (else ``back-dated``; a ledger
  that does not say when: ``untimed``);
- it does not end after the ledger took it, or after the interrogation asked (``premature``: a
  device cannot declare blindness ahead of time);
- a kernel-drops record spans at most ``max_drop_span_ns`` (``too long``: beatd writes one per
  interface and second) and counts at least one frame dropped (``no drops``);
- a capture-stopped record is not contradicted by the device itself: no record of its own, no
  segment its index lists, no content of its anchors before the record, and no anchor of its own
  taken by the ledger, inside ``(from_ns + T, to_ns - min(1 s, T))`` (``contradicted``);
- it is not back-dated by the device's own anchor sequence (findings G1/G6): no batch of the
  device before the record's leaf (nor a segment of its index before the leaf in its batch) was
  taken by the ledger after ``to_ns + T`` while anchoring content after ``to_ns + T`` (its
  anchor's ``first_t_ns``/``last_t_ns``, its index's segment times) (``back-dated``). An honest
  device writes a gap record into its outbox about a second after its end, before any leaf of
  what it records later: a ledger outage delays when the ledger takes it, never this order. The
  ledger takes a node's anchors in batch_seq order, so the batches taken after a time are a run
  ending before the record: found by a binary search, ``MAX_SEQUENCE_READS`` read at each end.

T is ``tolerance_ns`` (``[judgement] gap_tolerance_s``, default 10 s). The judgement
(governance/verdicts.py) further bounds the honoured kernel-drops gaps by their frames dropped
(``exceeded``: more passages it cannot show than frames). What is left to a liar, and the known
limits: docs/threat-model.md, "Declared capture loss".

A record not anchored (yet) whose anchor period may not have passed (the interrogation asked
within ``anchor_delay_ns`` of its end) is ``pending``: treated like records not anchored yet (the
device may lack records there; it excuses no drop of its own). Later, unanchored, it is
``unanchored`` and not honoured.
"""
import dataclasses
import struct

from beat_common.gap_record import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, GAP_REASONS
from fastpath.output import NONE
from ledger_client.merkle import verify_inclusion

__all__ = ["HONOURED", "PENDING", "BACK_DATED", "UNANCHORED", "FORGED", "UNTIMED", "PREMATURE",
           "TOO_LONG", "CONTRADICTED", "NO_DROPS", "EXCEEDED", "STATUSES",
           "DEFAULT_ANCHOR_DELAY_NS", "DEFAULT_TOLERANCE_NS",
           "DEFAULT_MAX_DROP_SPAN_NS", "DeclaredGap", "check_gap_records", "describe"]

HONOURED, PENDING = "honoured", "pending"
BACK_DATED, UNANCHORED, FORGED, UNTIMED = "back-dated", "unanchored", "forged", "untimed"
PREMATURE, TOO_LONG, CONTRADICTED = "premature", "too long", "contradicted"
NO_DROPS = "no drops"
EXCEEDED = "exceeded"       # set by the judgement: more passages in them than frames dropped
STATUSES = (HONOURED, PENDING, BACK_DATED, UNANCHORED, FORGED, UNTIMED, PREMATURE, TOO_LONG,
            CONTRADICTED, NO_DROPS, EXCEEDED)
DEFAULT_ANCHOR_DELAY_NS = 120 * 10**9      # unanchored after it: not pending any more
DEFAULT_TOLERANCE_NS = 10 * 10**9          # T: an honest record is in the outbox ~1 s after
MAX_SEQUENCE_READS = 50_000   # own anchors read at each end of a late record's run (the whole run, short of a flood)
DEFAULT_MAX_DROP_SPAN_NS = 10 * 10**9      # beatd's records span about a second
SKEW_NS = 50_000_000                       # the clock difference tolerated (as the judgement's)
EDGE_NS = 10**9                            # a capture-stopped record's end looked at less


@dataclasses.dataclass(frozen=True)
class DeclaredGap:
    """One served gap record and what the governance made of it: ``status`` (STATUSES),
    ``why`` (for the report), ``ledger_t_ns`` (when the ledger took its anchor, if it did)."""
    node_id: int
    from_ns: int
    to_ns: int
    frames_dropped: int
    reason: int
    interface: str
    status: str
    why: str = ""
    ledger_t_ns: int = None
    batch_seq: int = None

    @property
    def honoured(self):
        return self.status == HONOURED

    def as_dict(self):
        return dataclasses.asdict(self)


def _s(ns):
    return f"{ns / 1e9:.1f} s"


def _inside(t_ns, lo, hi):
    return lo < t_ns < hi


def _own_records_inside(records, lo, hi):
    """Whether one of the 48-byte records has ``lo < t_ns < hi``."""
    for (t,) in struct.iter_unpack(">Q40x", records):
        if lo < t < hi:
            return t
    return None


def check_gap_records(node_id, hash_name, records, anchors, *, asked_at_ns,
                      anchor_delay_ns=DEFAULT_ANCHOR_DELAY_NS,
                      max_drop_span_ns=DEFAULT_MAX_DROP_SPAN_NS, own_records=b"",
                      tolerance_ns=DEFAULT_TOLERANCE_NS, own_index=()):
    """``[DeclaredGap]`` of the gap records ``records`` (``beat_rpc.evidence.GapRecord``) that
    ``node_id`` served. ``anchors``: a ``governance.verify.AnchorCache`` (the ledger's anchors);
    ``asked_at_ns``: when the interrogation asked (recorded with it, so that a replay decides the
    same); ``own_records``: the device's records that the governance holds (any flow, proven or
    not), against which a capture-stopped record is checked; ``own_index``: ``(batch_seq,
    leaf_index, first_t_ns, last_t_ns)`` of the segments its signed index lists (anchored ones:
    what it anchored, and where); ``tolerance_ns``: T (module doc)."""
    own_index = tuple(own_index)
    out = []
    for g in records:
        base = dict(node_id=node_id, from_ns=g.from_ns, to_ns=g.to_ns,
                    frames_dropped=g.frames_dropped, reason=g.reason, interface=g.interface)
        status, why, when, batch = _check(node_id, hash_name, g, anchors, asked_at_ns,
                                          anchor_delay_ns, max_drop_span_ns, own_records,
                                          tolerance_ns, own_index)
        out.append(DeclaredGap(**base, status=status, why=why, ledger_t_ns=when,
                               batch_seq=batch))
    return out


def _check(node_id, hash_name, g, anchors, asked_at_ns, delay, max_span, own_records, tol,
           own_index):
    if g.to_ns > asked_at_ns + SKEW_NS:
        return PREMATURE, (f"it ends at {g.to_ns}, after the interrogation asked "
                           f"({asked_at_ns}): blindness cannot be declared ahead"), None, None
    if g.reason == GAP_KERNEL_DROPS and g.frames_dropped == 0:
        return NO_DROPS, ("a kernel-drops record of 0 frames dropped: no blindness stated"), \
            None, None
    if g.reason == GAP_KERNEL_DROPS and g.to_ns - g.from_ns > max_span:
        return TOO_LONG, (f"a kernel-drops record of {_s(g.to_ns - g.from_ns)} (at most "
                          f"{_s(max_span)}: a device states drops as they happen)"), None, None
    ref = g.anchor
    a = anchors.get(node_id, ref.batch_seq) if ref.anchored else None
    if a is None:
        where = ("not anchored" if not ref.anchored else
                 f"its anchor (batch {ref.batch_seq}) is not on the ledger")
        if asked_at_ns <= g.to_ns + delay:
            return PENDING, (f"{where} yet, within {_s(delay)} of its end: like records not "
                             "anchored yet, signed, not proven"), None, None
        return UNANCHORED, (f"{where}, {_s(asked_at_ns - g.to_ns)} after it ended (it should "
                            f"be within {_s(delay)})"), None, None
    leaf = g.leaf(hash_name, node_id)
    if ref.tree_size != a.tree_size or not verify_inclusion(
            hash_name, leaf, ref.leaf_index, a.tree_size, ref.path, a.root):
        return FORGED, (f"its leaf {leaf.hex()[:18]}... is not in anchor (node {node_id}, batch "
                        f"{ref.batch_seq}): not what it anchored"), None, ref.batch_seq
    when = getattr(a, "ledger_t_ns", None)
    if when is None:
        return UNTIMED, (f"the ledger does not say when it took anchor (node {node_id}, batch "
                         f"{ref.batch_seq})"), None, ref.batch_seq
    if when > asked_at_ns + SKEW_NS:
        return BACK_DATED, (f"anchored at {when}, after the interrogation asked "
                            f"({asked_at_ns})"), when, ref.batch_seq
    if g.to_ns > when + SKEW_NS:
        return PREMATURE, (f"it ends at {g.to_ns}, after the ledger took its anchor ({when}): "
                           "blindness cannot be declared ahead"), when, ref.batch_seq
    if g.reason == GAP_CAPTURE_STOPPED:
        why = _contradiction(node_id, anchors, ref, g, tol, own_records, own_index)
        if why:
            return CONTRADICTED, f"it says it was not capturing, yet {why}", when, ref.batch_seq
    limit = g.to_ns + tol
    if when > limit:
        later = _later_content(node_id, anchors, ref, limit, own_index)
        if later is not None:
            return BACK_DATED, (f"anchored {_s(when - g.to_ns)} after it ended, after {later} "
                                f"(content more than {_s(tol)} after its end: an honest gap "
                                "record precedes what its device recorded later)"), \
                when, ref.batch_seq
    return HONOURED, "", when, ref.batch_seq


def _first_taken_after(node_id, anchors, below, t_ns):
    """The first batch_seq < ``below`` of the node's anchors that the ledger took after ``t_ns``
    (``below`` when none): the ledger takes a node's anchors in batch_seq order, so its times
    rise with batch_seq (a binary search: a few reads)."""
    lo, hi = 0, below
    while lo < hi:
        mid = (lo + hi) // 2
        a = anchors.get(node_id, mid)
        w = getattr(a, "ledger_t_ns", None) if a is not None else None
        if w is not None and w > t_ns:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _run_ends(first, below):
    """The batch_seqs looked at in ``[first, below)``: ``MAX_SEQUENCE_READS`` at each end."""
    head = range(first, min(below, first + MAX_SEQUENCE_READS))
    tail = range(max(first + MAX_SEQUENCE_READS, below - MAX_SEQUENCE_READS), below)
    return list(head) + list(tail)


def _later_content(node_id, anchors, ref, limit, own_index):
    """What the node anchored before the gap record's leaf, taken by the ledger after ``limit``
    (the record's end + T), holding content after ``limit``: its description, or None."""
    b = ref.batch_seq
    for seq in _run_ends(_first_taken_after(node_id, anchors, b, limit), b):
        a = anchors.get(node_id, seq)
        w = getattr(a, "ledger_t_ns", None) if a is not None else None
        if w is not None and w > limit and max(a.first_t_ns, a.last_t_ns) > limit:
            return (f"its batch {seq} (taken by the ledger at {w}) anchored content up to "
                    f"{max(a.first_t_ns, a.last_t_ns)}")
    for bs, li, first, last in own_index:
        if (bs, li) < (b, ref.leaf_index) and max(first, last) > limit:
            a = anchors.get(node_id, bs)
            w = getattr(a, "ledger_t_ns", None) if a is not None else None
            if w is not None and w > limit:
                return (f"its segment of records up to {max(first, last)}, anchored before it "
                        f"(batch {bs}, leaf {li})")
    return None


def _contradiction(node_id, anchors, ref, g, tol, own_records, own_index):
    """Why a capture-stopped record contradicts its device: a record of its own, a segment of
    its index or content it anchored (before this record), or an anchor the ledger took from
    it, inside ``(from_ns + T, to_ns - min(EDGE_NS, T))`` (the last commit before a crash may
    follow the last "alive" mark by a second, the final anchor may be taken a second after the
    stop, and the rings open just before a start's record ends); "" when none."""
    lo, hi = g.from_ns + tol, g.to_ns - min(EDGE_NS, tol)
    if lo >= hi:
        return ""
    t = _own_records_inside(own_records, lo, hi) if own_records else None
    if t is not None:
        return f"it holds a record of its own at {t}"
    for bs, li, first, last in own_index:
        for x in (first, last):
            if lo < x < hi:
                return f"its index lists a segment with a record at {x} (batch {bs})"
    b = ref.batch_seq
    for seq in _run_ends(_first_taken_after(node_id, anchors, b, lo), b):
        a = anchors.get(node_id, seq)
        if a is None:
            continue
        for x in (a.first_t_ns, a.last_t_ns):
            if lo < x < hi:
                return f"it anchored content of {x} (batch {seq})"
    for other in anchors.known(node_id):
        w = getattr(other, "ledger_t_ns", None)
        if w is not None and _inside(w, lo, hi):
            return f"it anchored batch {other.batch_seq} at {w}"
    return ""


def describe(gap, names=None):
    """The report's sentence for one declared gap."""
    who = (names or {}).get(gap.node_id, f"node {gap.node_id}")
    where = f"on {gap.interface}" if gap.interface else "on every interface"
    frames = (f"{gap.frames_dropped} frames dropped by the kernel" if gap.reason ==
              GAP_KERNEL_DROPS else (f"{GAP_REASONS.get(gap.reason, gap.reason)}"
                                     + (f", {gap.frames_dropped} frames" if gap.frames_dropped
                                        else "")))
    head = f"{who} declared it was blind from {gap.from_ns} to {gap.to_ns} {where}: {frames}"
    if gap.status == HONOURED:
        return (f"{head}; anchored in time (batch {gap.batch_seq}): its records cannot show "
                "these packets")
    if gap.status == PENDING:
        return f"{head}; pending: {gap.why}"
    return f"{head}; NOT honoured ({gap.status}): {gap.why}"


def intervals(gaps, status):
    """The inclusive ``(lo, hi)`` of the gaps with ``status``."""
    return [(g.from_ns, min(g.to_ns, NONE)) for g in gaps if g.status == status]
